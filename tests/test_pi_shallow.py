import json

import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.load import load_pi_model
from trustlab.pi.models import build_model
from trustlab.pi.graph import split_sites
from trustlab.pi.merge import MergedConv2d, apply_merges
from trustlab.pi.config import ShallowConfig
from trustlab.pi.shallow_models import depth, linearise, mergeable_blocks, plan_merges
from trustlab.train import evaluate


def _trained_like(model):
    """Random BN statistics, so that folding is exercised as after training."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _split(model, shape=(3, 16, 16)):
    return split_sites(model, shape)[0]


def _block_io(gm, block: str, x):
    """The input and output of ``block`` in a forward pass of ``gm`` (by hooks on its first conv and its add's reader)."""
    seen = {}
    pair = next(p for p in mergeable_blocks(gm) if p.block == block)
    h1 = gm.get_submodule(pair.conv_a).register_forward_pre_hook(lambda m, i: seen.setdefault("in", i[0]))
    h2 = gm.get_submodule(pair.out_relu).register_forward_pre_hook(lambda m, i: seen.setdefault("out", i[0]))
    gm(x)
    h1.remove(), h2.remove()
    return seen["in"], seen["out"]


def test_exact_merge_of_a_block_without_inner_relu_matches_the_pad_first_block():
    from trustlab.pi.merge import pad_first

    torch.manual_seed(0)
    gm = _split(_trained_like(build_model("resnet18", 10, 3, 0.125)))
    x = torch.randn(2, 3, 16, 16)
    for name in ("layer1.0", "layer2.0"):  # identity skip, projection skip with stride 2
        ref = __import__("copy").deepcopy(gm)
        pair = next(p for p in mergeable_blocks(ref) if p.block == name)
        ref.get_submodule(pair.relu).forward = lambda t: t  # the block without its inner ReLU
        pad_first(ref.get_submodule(pair.conv_a), ref.get_submodule(pair.conv_b))
        merged = apply_merges(ref, [name], None)
        assert isinstance(merged.get_submodule(f"{name}.conv"), MergedConv2d)
        assert (merged(x) - ref(x)).abs().max() < 1e-4


def test_a_block_at_slope_one_is_linear_and_a_faded_ring_cuts_exactly():
    torch.manual_seed(0)
    gm = _split(_trained_like(build_model("resnet18", 10, 3, 0.125)))
    names = ["layer1.0", "layer2.0"]  # 5x5 and (stride 2) 7x7 merged kernels
    pairs = {p.block: p for p in mergeable_blocks(gm)}
    x = torch.randn(2, 3, 16, 16)
    before = gm(x)
    slopes = linearise(gm, [pairs[n] for n in names])
    relu_out = gm(x)
    for s in slopes:
        s.slope = 1.0
    assert (gm(x) - relu_out).abs().max() > 1e-2  # slope 0 was still a ReLU
    assert (relu_out - before).abs().max() > 0  # pad-first changes the border
    merged = apply_merges(gm, names, None)
    assert (merged(x) - gm(x)).abs().max() < 1e-4  # at slope 1 the blocks are their merged convolutions, borders included
    for name in names:
        m = merged.get_submodule(f"{name}.conv")
        m.ring = (3, 0.5)
        half = merged(x)
        m.ring = (3, 0.0)
        faded = merged(x)
        m.cut(3)
        assert m.kernel_size == (3, 3) and m.ring is None
        assert (merged(x) - faded).abs().max() < 1e-5 and (half - faded).abs().max() > 1e-3


def test_shallow_config_refuses_a_ring_without_a_3x3_target_and_no_finetuning():
    with pytest.raises(ConfigError, match="--kernel 3"):
        ShallowConfig(kernel=0, ring_epochs=1).validate()
    assert ShallowConfig(kernel=0).ring_stage_epochs == 0 and ShallowConfig().ring_stage_epochs == 1
    with pytest.raises(ConfigError, match="--finetune-epochs"):
        ShallowConfig(finetune_epochs=0).validate()


def test_merging_reduces_relus_and_depth_and_reports_macs():
    shape = (1, 28, 28)
    model = _split(build_model("resnet18", 10, 1, 0.25), shape)
    blocks = [p.block for p in mergeable_blocks(model)]
    assert len(blocks) == 8
    exact = apply_merges(model, blocks, None)
    cheap = apply_merges(model, blocks, 3)
    before, after_exact, after_cheap = count(model, shape), count(exact, shape), count(cheap, shape)
    assert before.relus / after_exact.relus == pytest.approx(108_544 / 60_544)
    assert after_exact.macs > before.macs  # an exact 5x5 merge costs more MACs than two 3x3s
    assert after_cheap.macs < before.macs / 1.47
    assert depth(model, shape) == 18 and depth(exact, shape) == 10


def test_plan_is_least_sensitive_first_and_refuses_impossible_targets():
    shape = (1, 28, 28)
    model = _split(build_model("resnet18", 10, 1, 0.25), shape)
    pairs = mergeable_blocks(model)
    sens = {p.block: i for i, p in enumerate(reversed(pairs))}  # deepest block least sensitive
    inner = {p.block: p.relu for p in pairs}
    assert inner["layer1.0"] == "layer1.0.relu1"
    chosen = plan_merges(model, shape, 1.05, sens, inner)
    assert chosen[0] == "layer4.1"
    with pytest.raises(ConfigError, match="removing all 8 removable ReLU layers gives 1.79x"):
        plan_merges(model, shape, 2.0, sens, inner)


def test_wide_resnet_merges_its_projection_blocks_and_a_plain_net_is_told_the_pattern():
    from pi_zoo import VGG

    # a pre-activation block is linear in relu1(bn1(x)) once relu2 goes only where the skip reads that
    # too: the 1x1-projection blocks; identity blocks add x itself, which is not
    wrn = _split(_trained_like(build_model("wrn22-8", 10, 3, 0.125)))
    assert [p.block for p in mergeable_blocks(wrn)] == ["block1.0", "block2.0", "block3.0"]
    x = torch.randn(2, 3, 16, 16)
    slopes = linearise(wrn, mergeable_blocks(wrn))
    for s in slopes:
        s.slope = 1.0
    assert (apply_merges(wrn, ["block1.0", "block2.0", "block3.0"], None)(x) - wrn(x)).abs().max() < 1e-4
    with pytest.raises(ConfigError, match="conv-BN-ReLU-conv-BN plus an identity or 1x1-projection skip"):
        mergeable_blocks(_split(VGG(), (1, 8, 8)))


def test_shallow_run_then_senet_on_what_remains(tmp_path, cli):
    teacher = tmp_path / "teacher"
    r = cli("pi", "train", "--dataset", "synthetic", "--width", "0.125", "--epochs", "3", "--batch-size", "32",
            "--out", str(teacher), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    shallow = tmp_path / "shallow"
    r = cli("pi", "shallow", "--teacher", str(teacher), "--target-relu-reduction", "1.3", "--anneal-epochs", "1",
            "--ring-epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--out", str(shallow), "--quiet",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    s = json.loads((shallow / "summary.json").read_text())
    assert s["relu_reduction"] >= 1.3 and s["depth"] < s["teacher_depth"] and s["test_acc"] > 0.5
    assert {"acc_after_anneal", "acc_after_ring"} <= set(s) and s["mac_reduction"] > 1
    again = cli("pi", "shallow", "--teacher", str(teacher), "--target-relu-reduction", "1.3", "--anneal-epochs", "1",
                "--ring-epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--out", str(shallow), "--quiet",
                "--device", "cpu", "--resume")  # every stage finished: reloaded, the same figures
    assert again.returncode == 0, again.stderr
    assert json.loads((shallow / "summary.json").read_text()) == s
    model, shape, data = load_pi_model(shallow)
    assert count(model, shape).relus == s["relus"]
    test = data.load()
    assert evaluate(model, test.x_test, test.y_test)["acc"] == pytest.approx(s["test_acc"], abs=1e-6)
    joint = tmp_path / "joint"
    budget = s["relus"] // 2
    r = cli("pi", "senet", "--teacher", str(shallow), "--budget", str(budget), "--search-epochs", "1",
            "--finetune-epochs", "1", "--batch-size", "32", "--out", str(joint), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((joint / "summary.json").read_text())["relus"] == budget
    moved = tmp_path / "elsewhere"  # the chain of run folders moves together; the paths as given no longer exist
    moved.mkdir()
    for d in (teacher, shallow, joint):
        d.rename(moved / d.name)
    r = cli("pi", "cost", str(moved / "joint"))
    assert r.returncode == 0 and f"{budget:,} ReLUs" in r.stdout, r.stderr
    assert count(*load_pi_model(moved / "joint")[:2]).relus == budget
    bad = cli("pi", "shallow", "--teacher", str(moved / "teacher"), "--target-relu-reduction", "9", "--out", str(tmp_path / "no"))
    assert bad.returncode == 2 and "impossible" in bad.stderr and not (tmp_path / "no").exists()
