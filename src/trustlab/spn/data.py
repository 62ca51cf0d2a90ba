"""Discrete data for SPNs: binarised image datasets from the registry and binary CSV files.

Images are (optionally) down-sampled to ``size``×``size`` grey levels and thresholded into
one binary variable per pixel. With labels, the class becomes variable 0 (a categorical
variable), so one SPN models p(class, pixels). CSV files follow the density-estimation
benchmark layout (one row of comma-separated 0/1 values per example, as in
``nltcs.ts.data`` / ``nltcs.test.data``): give the training file; a sibling ``.test.data``
is the test split, otherwise a fixed 80/20 split is made. A DEBD folder (the twenty binary
density-estimation sets of Lowd & Davis and Van Haaren & Davis) holds
``NAME.{train,valid,test}.data`` with fixed splits: every choice is made on ``valid`` and
``test`` is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trustlab.data.registry import load_classification
from trustlab.errors import DataError
from trustlab.files import existing_file, read_text
from trustlab.spn.config import SPNDataConfig


@dataclass
class DiscreteData:
    """Train and test rows (float tensors holding 0..K-1), each variable's cardinality."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    cardinality: list[int]
    source: str
    class_var: int | None = None
    classes: list[str] | None = None
    x_valid: torch.Tensor | None = None  # a fixed validation split, where the data set has one

    @property
    def num_vars(self) -> int:
        return len(self.cardinality)


def binarized_images(dataset: str, *, size: int | None = None, threshold: float = 0.5, with_class: bool = True,
                     limit: int | None = None, test_limit: int | None = None) -> DiscreteData:
    """One binary variable per pixel (grey level > ``threshold``), the class first when ``with_class``."""

    if not 0 < threshold < 1:
        raise DataError(f"threshold {threshold} must lie strictly between 0 and 1")
    d = load_classification(dataset, limit=limit, test_limit=test_limit, size=size)
    if d.shape[0] != 1:  # colour: binarise the luminance
        gray = lambda x: (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
        xtr, xte = gray(d.x_train), gray(d.x_test)
    else:
        xtr, xte = d.x_train, d.x_test
    xtr = (xtr.flatten(1) > threshold).float()
    xte = (xte.flatten(1) > threshold).float()
    card = [2] * xtr.shape[1]
    if with_class:
        xtr = torch.cat([d.y_train.float().unsqueeze(1), xtr], 1)
        xte = torch.cat([d.y_test.float().unsqueeze(1), xte], 1)
        card = [len(d.classes), *card]
    side = d.shape[1]
    return DiscreteData(xtr, xte, card, f"{dataset} {side}x{side} binarised at {threshold}",
                        0 if with_class else None, d.classes if with_class else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(path: Path) -> np.ndarray:
    """The 0/1 rows of a CSV file; a first line of column names (no field a number) is a header and skipped."""
    rows, line_nos, first = [], [], True
    for line_no, line in enumerate(read_text(path, "CSV file", DataError, max_bytes=2**31).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        if first:
            first = False
            if len(fields) > 1 and not any(_is_number(v) for v in fields):  # the header
                continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError(f"{path}:{line_no}: not comma-separated numbers: {line[:60]!r}") from None
        if rows and len(values) != len(rows[0]):
            raise DataError(f"{path}:{line_no}: {len(values)} values, the first row has {len(rows[0])}")
        rows.append(values)
        line_nos.append(line_no)
    if not rows:
        raise DataError(f"{path} holds no rows")
    if len(rows[0]) < 2:
        raise DataError(f"{path}: rows of one value: an SPN needs at least two variables (comma-separated columns)")
    x = np.asarray(rows)
    bad = np.argwhere(~np.isin(x, (0.0, 1.0)))
    if len(bad):
        r, c = bad[0]
        what = "NaN" if np.isnan(x[r, c]) else f"{x[r, c]:g}"
        raise DataError(f"{path}:{line_nos[r]}: column {c} holds {what}: binary CSV files hold only 0 and 1")
    return x


def binary_csv(path: str | Path, *, seed: int = 0) -> DiscreteData:
    """Rows of 0/1 from ``path``; the test split is the sibling ``*.test.data`` or a fixed 20%."""
    path = existing_file(path, "CSV file", DataError)
    x = _read_rows(path)
    stem = path.name
    for suffix in (".ts.data", ".train.data", ".data", ".csv"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    test_file = path.with_name(f"{stem}.test.data")
    if test_file.is_file() and test_file != path:
        xt = _read_rows(test_file)
        if xt.shape[1] != x.shape[1]:
            raise DataError(f"{test_file} has {xt.shape[1]} columns, {path} has {x.shape[1]}")
        source = f"{path} (test: {test_file.name})"
    else:
        if len(x) < 5:
            raise DataError(f"{path} has {len(x)} rows: at least 5 are needed to hold out a test split")
        order = np.random.default_rng(seed).permutation(len(x))
        cut = len(x) - max(1, len(x) // 5)
        x, xt = x[order[:cut]], x[order[cut:]]
        source = f"{path} (fixed 80/20 split, seed {seed})"
    return DiscreteData(torch.from_numpy(x).float(), torch.from_numpy(xt).float(), [2] * x.shape[1], source)


def with_valid_split(data: DiscreteData, share: float, *, seed: int = 0) -> DiscreteData:
    """``data`` with a validation split of ``share`` of its training rows (fixed by ``seed``), where it has none.

    Every choice (rank, epochs) is then made on rows that neither training nor the test
    figures use.
    """
    if not 0 <= share < 1:
        raise DataError(f"--valid-share {share:g} must lie in [0, 1)")
    if data.x_valid is not None or share == 0:
        return data
    n = len(data.x_train)
    k = int(round(n * share))
    if k < 1 or k >= n:
        raise DataError(f"{n} training rows cannot give a {share:.0%} validation split: use more rows or --valid-share 0")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return DiscreteData(data.x_train[order[k:]], data.x_test, data.cardinality,
                        f"{data.source}, {share:.0%} of training rows held out for validation", data.class_var,
                        data.classes, x_valid=data.x_train[order[:k]])


DEBD_SPLITS = ("train", "valid", "test")


def debd(name: str, folder: str | Path) -> DiscreteData:
    """The DEBD set ``name`` from ``folder`` (``NAME.train.data``, ``NAME.valid.data``, ``NAME.test.data``)."""
    if not name or Path(name).name != name or name.startswith("."):
        raise DataError(f"--name '{name}': give a DEBD set's name, such as nltcs (the files are NAME.train.data, ...)")
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder: give the folder that holds {name}.train.data")
    splits = {}
    for split in DEBD_SPLITS:
        path = root / f"{name}.{split}.data"
        if not path.is_file():
            present = sorted(p.name[: -len(".train.data")] for p in root.glob("*.train.data"))
            raise DataError(f"{path} is missing: a DEBD folder holds {name}.train.data, {name}.valid.data and "
                            f"{name}.test.data" + (f" (this one has: {', '.join(present)})" if present else ""))
        splits[split] = _read_rows(path)
        if splits[split].shape[1] != splits["train"].shape[1]:
            raise DataError(f"{path} has {splits[split].shape[1]} columns, {name}.train.data has {splits['train'].shape[1]}")
    x = {k: torch.from_numpy(v).float() for k, v in splits.items()}
    return DiscreteData(x["train"], x["test"], [2] * x["train"].shape[1], f"DEBD {name} ({root})", x_valid=x["valid"])


def load_data(cfg: SPNDataConfig) -> DiscreteData:
    """The rows ``cfg`` names, with a validation split (carved from training where the set has none)."""
    cfg.validate()
    if cfg.dataset == "csv":
        data = binary_csv(cfg.csv)
    elif cfg.dataset == "debd":
        data = debd(cfg.name, cfg.data_dir)
    else:
        data = binarized_images(cfg.dataset, size=cfg.size, threshold=cfg.threshold, with_class=cfg.with_class,
                                limit=cfg.limit, test_limit=cfg.test_limit)
    return with_valid_split(data, cfg.valid_share)


__all__ = ["DEBD_SPLITS", "DiscreteData", "binarized_images", "binary_csv", "debd", "load_data", "with_valid_split"]
