import json

import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.load import load_pi_model
from trustlab.pi.models import build_model
from trustlab.pi.shallow import MergedBlock, apply_merges, depth, mergeable_blocks, plan_merges


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


def test_exact_merge_of_a_block_without_inner_relu_matches_the_pad_first_block():
    from trustlab.pi.merge import pad_first

    torch.manual_seed(0)
    model = _trained_like(build_model("resnet18", 10, 3, 0.125))
    for name in ("layer1.0", "layer2.0"):  # identity skip, projection skip with stride 2
        block = model.get_submodule(name)
        ref = __import__("copy").deepcopy(block)
        ref.relu1 = torch.nn.Identity()
        pad_first(ref.conv1, ref.conv2)
        merged = apply_merges(model, [name], None).get_submodule(name)
        assert isinstance(merged, MergedBlock)
        x = torch.randn(2, block.conv1.in_channels, 16, 16)
        assert (merged(x) - ref(x)).abs().max() < 1e-4


def test_merging_reduces_relus_and_depth_and_reports_macs():
    model = build_model("resnet18", 10, 1, 0.25)
    shape = (1, 28, 28)
    blocks = mergeable_blocks(model)
    assert len(blocks) == 8
    exact = apply_merges(model, blocks, None)
    cheap = apply_merges(model, blocks, 3)
    before, after_exact, after_cheap = count(model, shape), count(exact, shape), count(cheap, shape)
    assert before.relus / after_exact.relus == pytest.approx(108_544 / 60_544)
    assert after_exact.macs > before.macs  # an exact 5x5 merge costs more MACs than two 3x3s
    assert after_cheap.macs < before.macs / 1.47
    assert depth(model, shape) == 18 and depth(exact, shape) == 10


def test_plan_is_least_sensitive_first_and_refuses_impossible_targets():
    model = build_model("resnet18", 10, 1, 0.25)
    shape = (1, 28, 28)
    sens = {b: i for i, b in enumerate(reversed(mergeable_blocks(model)))}  # deepest block least sensitive
    chosen = plan_merges(model, shape, 1.05, sens)
    assert chosen[0] == "layer4.1"
    with pytest.raises(ConfigError, match="removing all 8 removable ReLU layers gives 1.79x"):
        plan_merges(model, shape, 2.0, sens)


def test_wide_resnet_blocks_are_named_as_unsupported():
    with pytest.raises(ConfigError, match="PreActBlock"):
        mergeable_blocks(build_model("wrn22-8", 10, 3, 0.125))


def test_shallow_run_then_senet_on_what_remains(tmp_path, cli):
    teacher = tmp_path / "teacher"
    r = cli("pi", "train", "--dataset", "synthetic", "--width", "0.125", "--epochs", "3", "--batch-size", "32",
            "--out", str(teacher), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    shallow = tmp_path / "shallow"
    r = cli("pi", "shallow", "--teacher", str(teacher), "--target-relu-reduction", "1.3", "--finetune-epochs", "2",
            "--batch-size", "32", "--out", str(shallow), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    s = json.loads((shallow / "summary.json").read_text())
    assert s["relu_reduction"] >= 1.3 and s["depth"] < s["teacher_depth"] and s["test_acc"] > 0.5
    model, shape, _ = load_pi_model(shallow)
    assert count(model, shape).relus == s["relus"]
    joint = tmp_path / "joint"
    budget = s["relus"] // 2
    r = cli("pi", "senet", "--teacher", str(shallow), "--budget", str(budget), "--search-epochs", "1",
            "--finetune-epochs", "1", "--batch-size", "32", "--out", str(joint), "--quiet", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((joint / "summary.json").read_text())["relus"] == budget
    bad = cli("pi", "shallow", "--teacher", str(teacher), "--target-relu-reduction", "9", "--out", str(tmp_path / "no"))
    assert bad.returncode == 2 and "impossible" in bad.stderr and not (tmp_path / "no").exists()
