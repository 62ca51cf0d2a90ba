"""RAU-Net and LoyalDiffusion: ITBs act on exactly the chosen skips, per-sample routing, analyses, bad input."""

import json

import pytest
import torch
import yaml

from trustlab.errors import ConfigError
from trustlab.replication.rau import PoolUnpool, RAUNet, TimestepRouter, make_itb
from trustlab.replication.skips import ITB_KINDS, itb_kinds
from trustlab.replication.rau_analysis import choose_tau
from trustlab.replication.config import CaptionDataConfig, DiffusionConfig
from trustlab.replication.training import build_denoiser, build_unet, train_diffusion
from trustlab.runs import load_checkpoint_file

from test_replication import tiny_config, write_folder


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return build_unet(tiny_config("unused"), 16).eval()


def inputs(b=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 3, 16, 16, generator=g), torch.tensor([10, 900, 20, 700][:b]),
            torch.randn(b, 5, 16, generator=g))


def with_skip_zeroed(unet, k, x, t, h):
    """Reference without hooks: capture the encoder's skip tensors, then cancel skip ``k`` with diffusers'
    ControlNet residual inputs (added to the skips before the decoder reads them)."""
    skips = []
    handles = [unet.conv_in.register_forward_hook(lambda m, a, out: skips.append(out))]
    handles += [b.register_forward_hook(lambda m, a, out: skips.extend(out[1])) for b in unet.down_blocks]
    mid = []
    handles.append(unet.mid_block.register_forward_hook(lambda m, a, out: mid.append(out)))
    unet(x, t, encoder_hidden_states=h)
    for handle in handles:
        handle.remove()
    residuals = tuple(-s if i == k else torch.zeros_like(s) for i, s in enumerate(skips))
    return unet(x, t, encoder_hidden_states=h, down_block_additional_residuals=residuals,
                mid_block_additional_residual=torch.zeros_like(mid[0])).sample


@torch.no_grad()
def test_itb_rewrites_exactly_the_chosen_skip():
    unet = tiny_unet()
    x, t, h = inputs()
    skips = tiny_config("unused").skips()
    assert [(s.channels, s.side) for s in skips] == [(8, 16), (8, 16), (8, 8), (16, 8), (16, 4), (16, 4)]
    plain = unet(x, t, encoder_hidden_states=h).sample
    for k in range(len(skips)):
        rau = RAUNet(unet, {k: "drop"})
        dropped = rau(x, t, encoder_hidden_states=h).sample
        for handle in rau._hooks:
            handle.remove()
        assert torch.allclose(dropped, with_skip_zeroed(unet, k, x, t, h), atol=1e-5), k
        assert not torch.allclose(dropped, plain, atol=1e-4), k


def test_itb_kind_is_chosen_per_skip_index():
    cfg = tiny_config("unused", rau_skips=(2, 4, 5), itb="conv-silu,5:pool,2:stacked")
    itbs = build_denoiser(cfg, 32).itbs
    assert isinstance(itbs["5"], PoolUnpool) and len(itbs["2"]) == 3 and len(itbs["4"]) == 2
    assert itb_kinds((1, 3), "3:pool") == {1: "conv", 3: "pool"}


def test_itb_kinds_keep_the_skip_shape_and_pool_keeps_window_maxima():
    x = torch.randn(2, 16, 4, 4)
    for kind in ITB_KINDS:
        assert make_itb(kind, 16)(x).shape == x.shape
    y = make_itb("pool", 16)(x)
    # each 2x2 window keeps one value, its maximum, in place
    assert torch.allclose(torch.nn.functional.avg_pool2d(y, 2) * 4, torch.nn.functional.max_pool2d(x, 2))
    assert torch.equal(y[y != 0], x[y != 0])
    assert int((y != 0).sum()) == x.numel() // 4


def test_router_sends_each_sample_to_its_own_model_and_trains_only_it():
    torch.manual_seed(0)
    low, high = tiny_unet(0), RAUNet(tiny_unet(1), {4: "conv", 5: "conv"})
    router = TimestepRouter(low, high, 500)
    x, t, h = inputs()
    out = router(x, t, encoder_hidden_states=h).sample
    lo, hi = t < 500, t >= 500
    assert torch.allclose(out[lo], low(x[lo], t[lo], encoder_hidden_states=h[lo]).sample, atol=1e-6)
    assert torch.allclose(out[hi], high(x[hi], t[hi], encoder_hidden_states=h[hi]).sample, atol=1e-6)
    router(x[lo], t[lo], encoder_hidden_states=h[lo]).sample.sum().backward()
    assert all(p.grad is not None for p in low.parameters())
    assert all(p.grad is None for p in high.parameters())
    shared = router(x, torch.tensor(800), encoder_hidden_states=h).sample  # sampling: one t for the batch
    assert torch.allclose(shared, high(x, torch.full((4,), 800), encoder_hidden_states=h).sample, atol=1e-6)


def test_frozen_itbs_stay_as_initialized_and_loyal_resume_is_exact(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    cfg = tiny_config(folder, rau_skips=(3, 5), itb="stacked", itb_frozen=True, tau=400)
    train_diffusion(cfg, tmp_path / "full", quiet=True)
    train_diffusion(cfg, tmp_path / "cut", quiet=True, max_steps=2)
    train_diffusion(cfg, tmp_path / "cut", quiet=True, resume=True)
    a, _ = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b, _ = load_checkpoint_file(tmp_path / "cut" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(cfg.seed)
    init = build_denoiser(cfg, 32).state_dict()  # the hash encoder is 32-d
    itb_keys = [k for k in init if ".itbs." in k]
    assert len(itb_keys) == 8  # two stacked blocks: two convs, weight and bias each
    assert all(torch.equal(a["model." + k], init[k]) for k in itb_keys)
    trained = [k for k in init if k.startswith("low.") and k.endswith("weight")]
    assert any(not torch.equal(a["model." + k], init[k]) for k in trained)


def test_choose_tau_prefers_low_replication_within_the_quality_budget():
    rows = [{"tau": 0, "replication_score": 0.5, "proxy_fid": 30.0},
            {"tau": 300, "replication_score": 0.7, "proxy_fid": 10.5},
            {"tau": 600, "replication_score": 0.8, "proxy_fid": 10.2},
            {"tau": 1000, "replication_score": 0.9, "proxy_fid": 10.0}]
    assert choose_tau(rows, 1000, 0.1)["tau"] == 300
    assert choose_tau(rows, 1000, 0.01)["tau"] == 600  # none within 1%: the best quality
    with pytest.raises(ConfigError):
        choose_tau(rows[:1], 1000, 0.1)


def test_cli_rau_and_loyal_train_sample_and_analyses(cli, tmp_path):
    folder = write_folder(tmp_path / "imgs")
    common = ["--dataset", "folder", "--folder", str(folder), "--n", "0", "--size", "16", "--encoder", "hash",
              "--channels", "8,16,16", "--steps", "3", "--batch-size", "4", "--quiet"]
    runs = {}
    for name, extra in (("plain", []), ("rau", ["--rau-skips", "4,5", "--itb", "conv-silu"]),
                        ("loyal", ["--rau-skips", "default", "--tau", "500", "--dual-fusion"])):
        runs[name] = tmp_path / name
        r = cli("replication", "train", "--out", str(runs[name]), *common, *extra)
        assert r.returncode == 0, r.stderr
    assert json.loads((runs["loyal"] / "summary.json").read_text())["architecture"] == "loyal"
    r = cli("replication", "sample", str(runs["loyal"]), "--n", "3", "--steps", "4", "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("replication", "skip-ablation", str(runs["plain"]), "--n", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    abl = json.loads((runs["plain"] / "skip-ablation.json").read_text())
    assert len(abl["rows"]) == 12 and len(abl["recommended_skips"]) == 2
    assert (runs["plain"] / "plots" / "skip-ablation.png").exists()
    r = cli("replication", "timestep-analysis", str(runs["plain"]), str(runs["rau"]), "--taus", "0,500,1000",
            "--n", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    ta = json.loads((runs["rau"] / "timestep-analysis.json").read_text())
    assert [row["tau"] for row in ta["rows"]] == [0, 500, 1000] and ta["chosen_tau"] == 500
    r = cli("replication", "timestep-analysis", str(runs["plain"]), str(runs["rau"]), "--taus", "0,1200")
    assert r.returncode == 2 and "outside the schedule" in r.stderr


@pytest.mark.parametrize("extra,message", [
    (["--rau-skips", "9"], "skip 9 does not exist"),
    (["--rau-skips", "1,x"], "--rau-skips takes skip indices"),
    (["--rau-skips", "4", "--tau", "1000"], "--tau must lie in the schedule"),
    (["--tau", "500"], "give its skips with --rau-skips"),
    (["--rau-skips", "4", "--itb", "attention"], "--itb kinds are conv, conv-silu, stacked, pool"),
    (["--rau-skips", "2,5", "--itb", "3:pool"], "--itb names skip 3, which is not among --rau-skips 2,5"),
    (["--rau-skips", "2", "--itb", "x:pool"], "--itb takes KIND or SKIP:KIND"),
])
def test_bad_rau_options_exit_2(cli, tmp_path, extra, message):
    r = cli("replication", "train", "--out", str(tmp_path / "r"), "--encoder", "hash", "--steps", "1", *extra)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_of_another_configuration_and_wrong_runs_exit_2(cli, tmp_path):
    folder = write_folder(tmp_path / "imgs")
    run = tmp_path / "plain"
    train_diffusion(tiny_config(folder, steps=2), run, quiet=True)
    other = tmp_path / "other"
    train_diffusion(tiny_config(folder, steps=2, rau_skips=(4,), tau=300), other, quiet=True)
    r = cli("replication", "skip-ablation", str(other), "--n", "2", "--quiet")
    assert r.returncode == 2 and "skip ablation takes a plain U-Net run" in r.stderr
    r = cli("replication", "timestep-analysis", str(run), str(other), "--n", "2", "--quiet")
    assert r.returncode == 2 and "takes a plain U-Net run and a RAU-Net run" in r.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["config"]["rau_skips"] = [4, 5]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    r = cli("replication", "sample", str(run), "--n", "2", "--steps", "2", "--quiet")
    assert r.returncode == 2 and "checkpoint does not fit" in r.stderr and "Traceback" not in r.stderr


def test_default_skips_are_valid_for_the_benchmark_model():
    from trustlab.replication.skips import DEFAULT_SKIPS

    DiffusionConfig(data=CaptionDataConfig(dataset="emoji", n=16, size=16), rau_skips=DEFAULT_SKIPS).validate()
