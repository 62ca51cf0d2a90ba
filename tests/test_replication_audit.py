import json

import numpy as np
import pytest
import torch

from trustlab.replication.metrics import nearest, statistics


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


def _brute_force(gen: torch.Tensor, train: torch.Tensor, flip: bool) -> dict:
    """Every metric from whole float64 matrices: the definitions, with no blocks and no shortcuts."""
    def unit(x):
        v = x.flatten(1).double()
        v = v - v.mean(1, keepdim=True)
        return v / v.norm(dim=1, keepdim=True)

    sim = unit(gen) @ unit(train).T
    if flip:
        sim = torch.maximum(sim, unit(gen.flip(-1)) @ unit(train).T)
    best, index = sim.max(1)
    two = torch.cdist(gen.flatten(1).double(), train.flatten(1).double()).topk(2, largest=False).values
    s = gen.shape[-1] // 4

    def tiles(x):
        return x.reshape(len(x), 3, 4, s, 4, s).permute(0, 2, 4, 1, 3, 5).reshape(len(x), 16, -1).double()

    tg, tt = tiles(gen), tiles(train)
    tiled = torch.stack([torch.cdist(tg[:, k], tt[:, k]) for k in range(16)]).amax(0)
    near = tiled.topk(min(50, len(train)), largest=False).values
    return {"pixel": best, "nearest": index, "gu": two[:, 1] / two[:, 0], "carlini": 0.5 * near.mean(1) / near[:, 0]}


@pytest.mark.parametrize("flip", [False, True])
def test_blocked_search_gives_the_brute_force_metrics(flip):
    """Blocks of 7 merged into running top-k lists give what whole float64 matrices give."""
    g = torch.Generator().manual_seed(0)
    train = torch.rand((60, 3, 8, 8), generator=g) * 2 - 1
    near_copies = train[:5] + 0.02 * torch.randn((5, 3, 8, 8), generator=g)
    gen = torch.cat([near_copies.flip(-1) if flip else near_copies, torch.rand((11, 3, 8, 8), generator=g) * 2 - 1])
    nb = nearest(gen.flatten(1).numpy(), train.flatten(1).numpy(), 8, flip=flip, batch=7)
    ref = _brute_force(gen, train, flip)
    assert torch.equal(nb.nearest, ref["nearest"]) and nb.nearest[:5].tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(nb.pixel.double(), ref["pixel"], atol=1e-5)
    ours = statistics(nb, 0.9)
    for metric in ("pixel", "carlini", "gu"):
        v = ref[metric].double()
        assert ours[metric]["score"] == pytest.approx(float(torch.quantile(v, 0.95)), rel=1e-4), metric
        assert ours[metric]["median"] == pytest.approx(float(v.median()), rel=1e-4), metric


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
    assert not (tmp_path / "b").exists()  # no half-made run folder: the same command with skip needs no --resume
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--out", str(tmp_path / "b"),
            "--bad-images", "skip", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["skipped_generations"] == 1
    r = cli("replication", "audit", "--generated", str(gen), "--train", str(train), "--size", "30")
    assert r.returncode == 2 and "--size" in r.stderr
