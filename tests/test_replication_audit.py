import json

import numpy as np
import pytest
import torch

from trustlab.replication.audit import nearest, statistics
from trustlab.replication.config import AuditConfig
from trustlab.replication.metrics import replication


def _folders(tmp_path, copies=3, others=5):
    """30 training images (a coloured square on a noisy ground) and generations: resized copies of some, noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    train, gen = tmp_path / "train", tmp_path / "gen"
    train.mkdir()
    gen.mkdir()
    images = []
    for i in range(30):
        a = np.zeros((40, 40, 3), np.uint8) + rng.integers(0, 255, 3).astype(np.uint8)
        x, y = rng.integers(0, 25, 2)
        a[y : y + 15, x : x + 15] = rng.integers(0, 255, 3)
        a = (a.astype(int) + rng.integers(-30, 30, a.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(a).save(train / f"{i:03d}.png")
        images.append(a)
    (train / "captions.jsonl").write_text("".join(json.dumps({"file": f"{i:03d}.png", "caption": f"thing {i}"}) + "\n"
                                                  for i in range(30)))
    for i in range(copies):
        Image.fromarray(images[5 * i]).resize((64, 64)).save(gen / f"copy{i}.jpg", quality=95)
    for i in range(others):
        Image.fromarray(rng.integers(0, 255, (50, 50, 3)).astype(np.uint8)).save(gen / f"noise{i}.png")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"file": f"copy{i}.jpg", "caption": f"thing {5 * i}"}) + "\n" for i in range(copies)))
    return gen, train, prompts


@pytest.mark.parametrize("flip", [False, True])
def test_blocked_search_gives_the_in_memory_metrics(flip):
    """Blocks of 7 merged into running top-k lists: the figures of metrics.replication on the whole matrices."""
    torch.manual_seed(0)
    train = torch.rand(40, 3, 8, 8) * 2 - 1
    gen = torch.cat([train[:5].flip(-1) if flip else train[:5], torch.rand(11, 3, 8, 8) * 2 - 1])
    cfg = AuditConfig(generated="g", train="t", size=8, batch=7, flip=flip)
    nb = nearest(gen.flatten(1).numpy(), train.flatten(1).numpy(), cfg, torch.device("cpu"))
    ref = replication(gen, train, flip=flip)
    assert nb.nearest.tolist() == ref["nearest"]
    assert np.allclose(nb.pixel.numpy(), ref["max_similarity"], atol=1e-5)
    ours = statistics(nb, 0.9)
    for metric in ("pixel", "carlini", "gu"):
        for figure in ("score", "share", "median"):
            assert ours[metric][figure] == pytest.approx(ref[metric][figure], rel=1e-3, abs=1e-4), (metric, figure)


def test_audit_finds_the_copies_in_two_folders(cli, tmp_path):
    gen, train, prompts = _folders(tmp_path)
    out = tmp_path / "audit"
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--out", str(out),
            "--captions", str(prompts), "--batch", "7", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["copies"] == 3 and s["generations"] == 8 and s["train_images"] == 30
    assert s["own_prompt_nearest"] == 1.0  # each copy's nearest training image is the one its prompt named
    closest = json.loads((out / "tables" / "closest.json").read_text())["rows"]
    assert {row["generation"].rsplit("/", 1)[1] for row in closest[:3]} == {"copy0.jpg", "copy1.jpg", "copy2.jpg"}
    assert (out / "report.html").exists() and (out / "plots" / "copies.png").exists()
    cached = sorted(p.name for p in (out / "cache").iterdir())
    again = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--out", str(out), "--resume", "--quiet")
    assert again.returncode == 0 and sorted(p.name for p in (out / "cache").iterdir()) == cached  # decoded once
    assert json.loads((out / "summary.json").read_text())["copies"] == 3


def test_audit_bad_input_is_one_line(cli, tmp_path):
    gen, train, _ = _folders(tmp_path, copies=1, others=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("replication", "audit", "--generated", str(empty), "--train", str(train), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "holds no images" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (gen / "broken.png").write_bytes(b"not an image")
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--out", str(tmp_path / "b"), "--quiet")
    assert r.returncode == 2 and "broken.png" in r.stderr and "--bad-images skip" in r.stderr
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--out", str(tmp_path / "c"),
            "--bad-images", "skip", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["skipped_generations"] == 1
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--size", "30")
    assert r.returncode == 2 and "--size" in r.stderr
