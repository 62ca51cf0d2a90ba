"""Memorized prompts from the model alone: detectors, ROC, gating, the prompt-time and training-time mitigations."""

import json

import numpy as np
import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.replication.config import CaptionDataConfig, DiffusionConfig
from trustlab.replication.memorization import (AttentionEntropy, first_step_scores, gate_threshold, guided,
                                               lower_magnitude, read_prompts, roc)
from trustlab.replication.mitigations import parse
from trustlab.replication.pretrained import save_random_pipeline
from trustlab.replication.sampling import Gate, generate
from trustlab.replication.training import load_trained, make_scheduler, train_diffusion
from trustlab.runs import RunDir

from test_replication import write_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny testbed run on 6 pictures, two of them duplicated twice (their prompts are the 'memorized' ones)."""
    folder = write_folder(tmp_path_factory.mktemp("imgs"))
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16, duplicate_share=0.3,
                                                 duplicate_times=2), encoder="hash", channels=(8, 16, 16), steps=3,
                          batch_size=4)
    return train_diffusion(cfg, tmp_path_factory.mktemp("run") / "run", quiet=True).path


def test_roc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=200).round(1), rng.random(200) < 0.3  # rounding makes ties
    scores[labels] += 0.8
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    r = roc(scores, labels)
    assert r["auc"] == pytest.approx(pairwise, abs=1e-12)
    best = max(((scores[labels] >= c).mean() for c in np.unique(scores) if (scores[~labels] >= c).mean() <= 0.01), default=0)
    assert r["tpr_at_1pct_fpr"] == pytest.approx(best)
    assert roc(np.r_[2.0, 3.0, 0.0, 1.0], np.r_[True, True, False, False])["auc"] == 1.0
    with pytest.raises(ConfigError, match="memorized and other"):
        roc(np.ones(3), np.ones(3, dtype=bool))


def test_detectors_read_the_conditional_prediction_and_its_attention(run):
    unet, cfg, encoder, _ = load_trained(run)
    scheduler = make_scheduler(cfg, "ddim")
    scheduler.set_timesteps(10)
    states, mask = encoder.encode(["a picture number 1", "a grey one"])
    null = encoder.encode([""])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    s = first_step_scores(unet, scheduler, x, states, mask, null, 2.0, 1)
    with torch.no_grad():
        uncond, cond = guided(unet, x, scheduler.timesteps[0], states, mask, null)
    torch.testing.assert_close(s["magnitude"], (cond - uncond).flatten(1).norm(dim=1))
    tokens = int(mask.sum(1).max())
    assert bool((s["attention-entropy"] > 0).all()) and bool((s["attention-entropy"] <= np.log(tokens) + 1e-5).all())
    with torch.no_grad(), AttentionEntropy(unet) as probe:  # the probe leaves the attention's output unchanged
        probed = guided(unet, x, scheduler.timesteps[0], states, mask, null)
        assert len(probe.values) > 0
    torch.testing.assert_close(probed[1], cond)
    assert not any(type(p).__name__ == "function" for p in unet.attn_processors.values())  # processors restored


def test_wen_optimisation_lowers_the_magnitude_and_stops_at_the_target(run):
    unet, cfg, encoder, _ = load_trained(run)
    states, mask = encoder.encode(["a picture number 1", "a picture number 2"])
    null = encoder.encode([""])
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(980)

    def magnitude(e):
        with torch.no_grad():
            u, c = guided(unet, x, t, e, mask, null)
        return (c - u).flatten(1).norm(dim=1)

    before = magnitude(states)
    after = magnitude(lower_magnitude(unet, x, t, states, mask, null, steps=5, lr=0.1))
    assert bool((after < before).all())
    target = float(before[0]) + 1.0  # the first prompt is already below it: left exactly as it was
    out = lower_magnitude(unet, x, t, states, mask, null, steps=5, lr=0.1, target=target)
    torch.testing.assert_close(out[0], states[0], rtol=0, atol=0)
    assert not torch.equal(out[1], states[1]) or float(before[1]) <= target


def test_gated_mitigation_leaves_unflagged_prompts_exactly_as_before(run):
    unet, cfg, encoder, _ = load_trained(run)
    kw = dict(n=6, seed=3, steps=4, quiet=True)
    plain, _ = generate(unet, cfg, encoder, **kw)
    mit = parse("embedding-noise,opposite-guidance,wen-optimize", sigma=0.5, steps=2, delay=0.5)
    scores = generate(unet, cfg, encoder, mitigations=mit, gate=Gate("magnitude", -1.0), **kw)[1]["gate"]["scores"]
    threshold = float(np.median(scores))  # half the prompts flagged
    gated, meta = generate(unet, cfg, encoder, mitigations=mit, gate=Gate("magnitude", threshold), **kw)
    flagged = torch.tensor(meta["gate"]["flagged"])
    assert 0 < int(flagged.sum()) < 6 and meta["gate"]["scores"] == scores
    assert torch.equal(gated[~flagged], plain[~flagged])
    assert not torch.equal(gated[flagged], plain[flagged])
    everything, _ = generate(unet, cfg, encoder, mitigations=mit, **kw)  # ungated: every prompt mitigated
    assert not torch.equal(everything[~flagged], plain[~flagged])


def test_wen_filter_trains_and_resumes_exactly(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset="folder", folder=str(folder), n=0, size=16), encoder="hash",
                          channels=(8, 16, 16), steps=4, batch_size=4, checkpoint_every=2, mitigations="wen-filter",
                          mitigation_p=0.5)
    train_diffusion(cfg, tmp_path / "full", quiet=True)
    train_diffusion(cfg, tmp_path / "cut", quiet=True, max_steps=2)
    train_diffusion(cfg, tmp_path / "cut", quiet=True, resume=True)
    a = RunDir(tmp_path / "full").load_checkpoint()[0]
    b = RunDir(tmp_path / "cut").load_checkpoint()[0]
    for k in a:
        if a[k].is_floating_point() and not k.startswith("optim"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert RunDir(tmp_path / "full").summary()["mitigations"] == ["wen-filter"]


def test_cli_detect_on_a_run_and_on_a_stable_diffusion_folder(cli, run, tmp_path):
    r = cli("replication", "detect", str(run), "--out", str(tmp_path / "det"), "--seeds", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert s["prompts"] == 7 and s["memorized"] == 2 and set(s["roc"]) == {"magnitude", "attention-entropy"}
    assert all(0 <= v["auc"] <= 1 for v in s["roc"].values()) and "ROC AUC" in r.stdout
    rows = (tmp_path / "det" / "scores.csv").read_text().splitlines()
    assert rows[0] == "prompt,magnitude,attention-entropy,memorized" and len(rows) == 8
    assert (tmp_path / "det" / "plots" / "roc.png").exists() and (tmp_path / "det" / "report.html").exists()
    pipe = save_random_pipeline(tmp_path / "sd")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p, "memorized": m}) for p, m in
                                 [("a cat", True), ("a dog", False), ("the sea", False), ("a red car", True)]) + "\n")
    r = cli("replication", "detect", "--pretrained", str(pipe), "--prompts", str(prompts), "--out", str(tmp_path / "sd-det"),
            "--seeds", "1", "--first-steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "sd-det" / "summary.json").read_text())
    assert s["prompts"] == 4 and s["memorized"] == 2 and s["first_steps"] == 2


def test_prompts_files_and_gates_bad_input_is_one_line(cli, run, tmp_path):
    empty, latin, half = tmp_path / "empty.txt", tmp_path / "latin.txt", tmp_path / "half.jsonl"
    empty.write_text("\n\n")
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    half.write_text('{"prompt": "a", "memorized": true}\n{"prompt": "b"}\n')
    pipe = save_random_pipeline(tmp_path / "sd")
    (pipe / "vae" / "config.json").unlink()
    cases = [(["detect", str(run), "--prompts", str(empty)], "holds no prompts"),
             (["detect", str(run), "--prompts", str(latin)], "not UTF-8"),
             (["detect", str(run), "--prompts", str(half)], "on every line or none"),
             (["detect", str(run), "--detectors", "sharpness"], "--detectors"),
             (["detect", "--pretrained", str(pipe), "--prompts", str(half)], "vae"),
             (["detect", str(run), "--pretrained", str(pipe)], "not both"),
             (["sample", str(run), "--mitigation", "wen-optimize", "--gate-fpr", "1.5", "--gate-reference", str(latin)],
              "--gate-fpr 1.5"),
             (["sample", str(run), "--mitigation", "wen-optimize", "--gate-fpr", "0.1"], "--gate-reference"),
             (["sample", str(run), "--gate-fpr", "0.1", "--gate-reference", str(latin)], "--mitigation"),
             (["sample", str(run), "--mitigation", "opposite-guidance", "--mitigation-delay", "2"], "--mitigation-delay")]
    for args, needle in cases:
        r = cli("replication", *args, "--quiet")
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert gate_threshold(np.arange(101.0), 0.05) == pytest.approx(95.0)
    plain = tmp_path / "plain.txt"
    plain.write_text("one\n\ntwo \n")
    assert read_prompts(plain).texts == ["one", "two"] and read_prompts(plain).labels is None
    plain.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")  # a byte-order mark and CRLF, as Notepad saves
    assert read_prompts(plain).texts == ["one", "two"]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"prompt": "a", "memorized": 1}\n\n{"prompt": "b", "memorized": false}\n')
    assert read_prompts(labelled).labels.tolist() == [True, False]
    labelled.write_text('{"prompt": "a", "memorized": true}\n\n{"prompt": "b", "memorized": "no"}\n')
    with pytest.raises(ConfigError, match=r"line 3: \"memorized\" is 'no'"):  # a string would read as true
        read_prompts(labelled)
