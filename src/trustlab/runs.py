"""Run folders: everything a run produced, enough to understand, report and resume it.

A run folder ``runs/<name>/`` holds

* ``config.yaml``   the resolved configuration (a frozen dataclass, written as YAML);
* ``metrics.jsonl`` one JSON object per logged event, each with a ``step``;
* ``checkpoints/<tag>.safetensors`` + ``<tag>.json`` tensors and their JSON sidecar;
* ``plots/*.png``, ``tables/*.json`` figures and tables the report embeds;
* ``summary.json``  final figures of the run.

Every write goes to a temporary file in the same folder and is renamed into place, so a run
killed at any instant leaves either the old or the new file, never half of one.  The sidecar
JSON is also stored inside the safetensors header, which is the copy that loading trusts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from trustlab.errors import ConfigError, RunError
from trustlab.files import read_json, read_yaml


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place.

    A path that cannot be written (a folder in its place, a file where a parent folder should
    be, no permission, a full disk) is a one-line :class:`ConfigError`, and nothing is left
    behind: neither a partial file nor the temporary one.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file name")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Render a matplotlib figure as PNG and write it atomically (no half-drawn file on a kill)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class RunDir:
    """One run folder. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, config: Any, kind: str) -> "RunDir":
        """Make a new run folder holding ``config`` (a dataclass) and its ``kind``.

        An existing run folder is refused (:meth:`check_new`): a finished run is never lost by a
        repeated command; ``--resume`` is the way to continue one.
        """
        path = Path(path)
        cls.check_new(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create run folder {path}: {e.strerror or e}") from None
        run = cls(path)
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        doc = {"kind": kind, "config": json.loads(json.dumps(cfg, default=_json_default))}
        atomic_write_text(path / "config.yaml", yaml.safe_dump(doc, sort_keys=False))
        (path / "metrics.jsonl").unlink(missing_ok=True)
        return run

    @staticmethod
    def check_new(path: Path) -> None:
        """Refuse ``path`` as a new run folder: a file, or a run folder already there."""
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file: a run needs a folder; choose another --out")
        if (path / "config.yaml").exists():
            raise RunError(f"run folder {path} already exists: pass --resume to continue it or choose another --out")

    @classmethod
    def start(cls, path: Path, config: Any, kind: str, resume: bool) -> "RunDir":
        """Reopen ``path`` when resuming a run that exists there, else create it (see :meth:`create`).

        Under ``torchrun`` only rank 0 writes a run folder: other ranks get a handle to it and
        leave the writing (``fit`` checkpoints and logs from rank 0 only) to rank 0.
        """
        if not writes_run_folders():
            return cls(path)
        if resume and (Path(path) / "config.yaml").exists():
            return cls.open(path, kind=kind)
        return cls.create(path, config, kind=kind)

    @classmethod
    def open(cls, path: Path, kind: str | tuple[str, ...] | None = None) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise RunError(f"{path} is not a trustlab run folder (no config.yaml): give the folder a trustlab command wrote")
        run = cls(path)
        if kind is not None:
            kinds = (kind,) if isinstance(kind, str) else kind
            if run.kind not in kinds:
                raise RunError(f"{path} is a '{run.kind}' run, expected {' or '.join(kinds)}")
        return run

    # -- config ---------------------------------------------------------------------------
    def _doc(self) -> dict:
        doc = read_yaml(self.path / "config.yaml", "run configuration", RunError)
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise RunError(f"{self.path / 'config.yaml'} has no 'config' mapping: was it written by trustlab?")
        return doc

    @property
    def kind(self) -> str:
        return str(self._doc().get("kind", "unknown"))

    @property
    def config(self) -> dict:
        return dict(self._doc()["config"])

    # -- metrics --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, step: int, **values: Any) -> None:
        """Append one metrics record (flushed, so a killed run keeps what it logged)."""
        rec = {"step": int(step), **values}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: the step it belonged to is redone on resume
        return out

    def truncate_metrics(self, after_step: int, stage: str | None = None) -> None:
        """Drop the records of ``stage`` logged after ``after_step`` (work a resumed run will redo). A run of
        several stages counts steps from 0 in each, so the records of its other stages are kept."""
        kept = [m for m in self.metrics() if m.get("step", 0) <= after_step or m.get("stage") != stage]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_path(self, tag: str = "last") -> Path:
        return self.path / "checkpoints" / f"{tag}.safetensors"

    def save_checkpoint(self, tensors: dict, meta: dict, tag: str = "last") -> Path:
        """Write ``tensors`` (name -> torch.Tensor) with ``meta`` (JSON) atomically."""
        from safetensors.torch import save

        path = self.checkpoint_path(tag)
        meta_json = json.dumps(meta, default=_json_default, sort_keys=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write_bytes(path, save(tensors, metadata={"trustlab": meta_json}))
        atomic_write_text(path.with_suffix(".json"), json.dumps(json.loads(meta_json), indent=2) + "\n")
        return path

    def has_checkpoint(self, tag: str = "last") -> bool:
        return self.checkpoint_path(tag).exists()

    def load_checkpoint(self, tag: str = "last") -> tuple[dict, dict]:
        return load_checkpoint_file(self.checkpoint_path(tag))

    # -- outputs --------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    def summary(self) -> dict:
        """The finished run's figures; a run that has not finished (no ``summary.json``) is a RunError."""
        p = self.path / "summary.json"
        if not p.exists():
            raise RunError(f"{self.path} has no summary.json: the run did not finish; rerun its command with --resume")
        doc = read_json(p, "run summary", RunError)
        if not isinstance(doc, dict):
            raise RunError(f"{p} is not a summary (a JSON object): rerun the command that wrote it")
        return doc

    def table(self, name: str) -> dict:
        """A table written by :meth:`write_table`: ``{"title": ..., "rows": [...]}``."""
        p = self.path / "tables" / f"{name}.json"
        doc = read_json(p, "table", RunError)
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not all(isinstance(r, dict) for r in doc["rows"]):
            raise RunError(f"{p} is not a trustlab table (title and a list of rows): rerun the command that wrote it")
        return doc

    def write_table(self, name: str, rows: list[dict], title: str | None = None) -> None:
        """A table the HTML report renders (list of dicts with the same keys)."""
        atomic_write_json(self.path / "tables" / f"{name}.json", {"title": title or name, "rows": rows})

    def plot_path(self, name: str) -> Path:
        p = self.path / "plots" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def load_checkpoint_file(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata of a trustlab checkpoint; a clear error for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.exists():
        raise RunError(f"checkpoint {path} does not exist: train the run first, or give its folder")
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("trustlab", "{}"))
    except (SafetensorError, ValueError, json.JSONDecodeError) as e:
        raise RunError(f"checkpoint {path} is truncated or corrupt ({e.__class__.__name__}): rerun with --resume from an earlier one or retrain") from None
    return tensors, meta


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a (possibly nested) frozen config dataclass from its resolved YAML form.

    A field missing from ``values`` takes the class's ``LEGACY`` value when it has one (what
    configurations written before the field existed meant), else its default.
    """
    import typing

    hints = typing.get_type_hints(cls)
    legacy = getattr(cls, "LEGACY", {})
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            if f.name in legacy:
                kwargs[f.name] = legacy[f.name]
            continue
        v = values[f.name]
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(v, dict):
                raise RunError(f"configuration field '{f.name}' should be a mapping, not {v!r}: was config.yaml edited?")
            v = config_from_dict(hint, v)
        elif isinstance(v, list):
            v = tuple(v)
        _check_type(f.name, v, hint)
        kwargs[f.name] = v
    return cls(**kwargs)


def config_differences(stored: Any, asked: Any, prefix: str = "") -> list[str]:
    """``"field: stored (asked: value)"`` for each (nested) field where two configs of one class differ."""
    out = []
    for f in dataclasses.fields(stored):
        a, b = getattr(stored, f.name), getattr(asked, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            out += config_differences(a, b, f"{prefix}{f.name}.")
        elif a != b and not (isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve()):
            out.append(f"{prefix}{f.name}: {a!r} (asked: {b!r})")  # (one folder named two ways is no difference)
    return out


_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Refuse a stored value of the wrong scalar type (a hand-edited or foreign config.yaml).

    Only fields typed as plain scalars (``int``, ``float``, ``str``, ``bool``, optionally
    ``| None``) are checked; an ``int`` is a valid ``float``, a ``bool`` is not an ``int``.
    """
    import types
    import typing

    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    options = [o for o in (typing.get_args(hint) if is_union else (hint,)) if o is not type(None)]
    if value is None and len(options) < len(typing.get_args(hint) if is_union else (hint,)):
        return
    if not options or any(o not in _SCALARS for o in options):
        return
    accepted = tuple(t for o in options for t in _SCALARS[o])
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in options):
        raise RunError(f"configuration field '{name}' = {value!r} is not of type "
                       f"{' or '.join(o.__name__ for o in options)}: was config.yaml edited?")


def writes_run_folders() -> bool:
    """Whether this process writes run folders: under ``torchrun`` only rank 0 does."""
    return int(os.environ.get("RANK", "0")) == 0


def finished(path: str | Path) -> bool:
    """Whether the run folder at ``path`` is complete: every job writes ``summary.json`` last."""
    return (Path(path) / "summary.json").exists()


class Job:
    """One job's run folder from start to finish, the way every trustlab job runs.

    ``Job(config, out, resume)`` settles the configuration the job runs with (the one stored in
    ``out`` when resuming a run there, else ``config``) and validates it; the job then reads its
    inputs, and :meth:`start` creates the folder (or reopens it when resuming). Creating it only
    after the inputs have loaded means a mistyped input leaves no half-made run folder behind.
    The run kind comes from the config (its ``kind``), so no job spells it twice.
    """

    def __init__(self, config: Any, out: str | Path, resume: bool):
        self.path, self.kind, self.resume = Path(out), config.kind, resume
        if resume and (self.path / "config.yaml").exists():
            stored = config_from_dict(type(config), RunDir.open(self.path, kind=self.kind).config)
            changed = config_differences(stored, config)
            if changed:  # a resumed run keeps its settings; say which of the asked-for ones it does not take
                print(f"resuming {self.path} with the settings it was started with ({'; '.join(changed)}): "
                      "start a new run folder to change them", file=sys.stderr)
            config = stored
        elif writes_run_folders():
            RunDir.check_new(self.path)  # before the inputs load, which can take minutes
        config.validate()
        self.config = config

    def start(self) -> RunDir:
        return RunDir.start(self.path, self.config, self.kind, self.resume)
