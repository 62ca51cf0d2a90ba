import json

import pytest
import torch
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.masks import PartialReLU, export_masks, install_partial_relus, kept_positions, topk_mask
from trustlab.pi.models import build_model
from trustlab.pi.load import REDUCTION_KINDS, load_pi_model
from trustlab.pi.methods import METHODS
from trustlab.pi.config import ReductionConfig
from trustlab.pi.reductions import IMPLEMENTATIONS
from trustlab.pi.sensitivity import allocate, pruning_sensitivity, removal_sensitivity
from trustlab.runs import load_checkpoint_file
from trustlab.train import evaluate


def test_partial_relu_semantics_pixel_and_channel():
    x = torch.randn(4, 3, 5, 5)
    p = PartialReLU((3, 5, 5))
    assert torch.equal(p(x), torch.relu(x))
    p.mask.zero_()
    assert torch.equal(p(x), x)
    p.mask[1, 2, 3] = True
    y = p(x)
    assert torch.equal(y[:, 1, 2, 3], torch.relu(x[:, 1, 2, 3]))
    keep = torch.zeros(3, 5, 5, dtype=torch.bool)
    keep[1, 2, 3] = True
    assert torch.equal(y[:, ~keep], x[:, ~keep]) and p.kept_relus() == 1
    c = PartialReLU((3, 5, 5), "channel")
    c.mask[:] = torch.tensor([True, False, True]).view(3, 1, 1)
    assert torch.equal(c(x)[:, 0], torch.relu(x[:, 0])) and torch.equal(c(x)[:, 1], x[:, 1])
    assert c.kept_relus() == 50


def test_topk_mask_count_is_exact_even_with_ties():
    for k in (0, 1, 7, 60):
        assert int(topk_mask(torch.zeros(3, 4, 5), k).sum()) == k
    s = torch.arange(10.0)
    assert topk_mask(s, 3).nonzero().flatten().tolist() == [7, 8, 9]


def test_topk_search_keeps_exact_count_and_passes_gradients():
    p = PartialReLU((2, 3, 3))
    p.start_search("topk", torch.randn(2, 3, 3), keep=5)
    x = torch.randn(8, 2, 3, 3, requires_grad=True)
    p.train()
    p(x).sum().backward()
    assert p.scores.grad is not None and p.scores.grad.abs().sum() > 0
    assert p.kept_relus() == 5
    p.freeze()
    assert int(p.mask.sum()) == 5 and p.scores is None


def test_count_sees_only_kept_positions_and_exports_them():
    m, names = install_partial_relus(build_model("resnet18", 10, 3, 0.125), (3, 16, 16))
    full = count(m, (3, 16, 16)).relus
    layer = m.get_submodule(names[3])
    layer.mask.view(-1)[: layer.units // 2] = False
    assert count(m, (3, 16, 16)).relus == full - layer.units // 2
    masks = export_masks(m)
    assert masks[names[3]].dtype == torch.bool and int((~masks[names[3]]).sum()) == layer.units // 2
    pos = kept_positions(m)[names[3]]
    assert pos.shape == (layer.units - layer.units // 2, 3)


def test_allocate_sums_exactly_and_respects_capacity():
    cap = {"a": 1000, "b": 100, "c": 10}
    for budget in (1, 55, 500, 1109):
        got = allocate(cap, {"a": 1, "b": 5, "c": 100}, budget)
        assert sum(got.values()) == budget and all(got[k] <= cap[k] for k in cap)
    got = allocate(cap, {"a": 1, "b": 5, "c": 100}, 500)
    assert got["c"] == 10 and got["b"] == 100  # heavy weights fill their layers first
    for bad in (0, -3, 1110, 2000):
        with pytest.raises(ConfigError):
            allocate(cap, {"a": 1, "b": 1, "c": 1}, bad)


def test_pruning_sensitivity_covers_every_relu_layer():
    m = build_model("resnet18", 10, 1, 0.125)
    s = pruning_sensitivity(m, (1, 16, 16), 0.1)
    assert len(s) == 17 and abs(sum(s.values()) - 1) < 1e-9 and min(s.values()) >= 0


class TwoReLUs(nn.Module):
    """ReLU 'safe' sees only positive inputs (removing it changes nothing); 'needed' does not."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.safe = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.needed = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.safe(self.conv1(x).abs() + 1.0)
        h = self.needed(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def test_removal_sensitivity_ranks_a_harmless_layer_below_a_harmful_one():
    torch.manual_seed(0)
    m = TwoReLUs()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    s = removal_sensitivity(m, x, y)
    assert s["safe"]["kl"] < 1e-9 < s["needed"]["kl"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from trustlab.cli import main

    out = tmp_path_factory.mktemp("pi") / "teacher"
    assert main(["pi", "train", "--dataset", "synthetic", "--width", "0.125", "--epochs", "3", "--batch-size", "32",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return out


def test_every_method_in_the_table_is_implemented_loadable_and_a_command(cli):
    assert set(IMPLEMENTATIONS) == set(METHODS) and set(REDUCTION_KINDS) == {f"pi-{m}" for m in METHODS}
    listed = cli("pi", "--help").stdout
    assert all(m in listed for m in METHODS)
    with pytest.raises(ConfigError, match="channel granularity is available for senet only"):
        ReductionConfig(method="snl", budget=10, granularity="channel").validate()


@pytest.mark.parametrize("method", list(METHODS))
def test_reduction_hits_the_budget_and_keeps_masks_in_checkpoints(teacher, tmp_path, method):
    from trustlab.cli import main

    total = json.loads((teacher / "summary.json").read_text())["relus"]
    budget = total // 2
    out = tmp_path / method
    assert main(["pi", method, "--teacher", str(teacher), "--budget", str(budget), "--out", str(out),
                 "--search-epochs", "1", "--finetune-epochs", "1", "--batch-size", "32", "--quiet", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    if method == "layerdrop":
        assert summary["relus"] <= budget
        rows = json.loads((out / "tables" / "relus.json").read_text())["rows"]
        assert all(r["relus_after"] in (0, r["relus_before"]) for r in rows)  # whole layers only
    else:
        assert summary["relus"] == budget
    tensors, _ = load_checkpoint_file(out / "checkpoints" / "finetune.safetensors")
    masks = {k: v for k, v in tensors.items() if k.endswith(".mask")}
    assert masks and all(v.dtype == torch.bool for v in masks.values())
    assert sum(int(v.sum()) for v in masks.values()) == summary["relus"]
    model, shape, _ = load_pi_model(out)
    assert count(model, shape).relus == summary["relus"]
    from trustlab.data import load_classification

    data = load_classification("synthetic")
    assert evaluate(model, data.x_test, data.y_test)["acc"] == pytest.approx(summary["test_acc"])
    assert summary["test_acc"] > 0.4  # 4 classes: still far above chance after two short epochs
    assert "accuracy_vs_relus" in (out / "report.html").read_text()


def test_bad_budgets_and_teachers_are_one_line_errors(teacher, tmp_path, cli):
    total = json.loads((teacher / "summary.json").read_text())["relus"]
    for budget in (str(total), "0", "-5"):
        out = tmp_path / f"b{budget}"
        r = cli("pi", "senet", "--teacher", str(teacher), "--budget", budget, "--out", str(out))
        assert r.returncode == 2 and "budget" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not out.exists()
    r = cli("pi", "snl", "--teacher", str(tmp_path), "--budget", "10", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "not a trustlab run folder" in r.stderr


def test_teacher_checkpoint_of_another_architecture_is_refused(teacher, tmp_path, cli):
    import shutil

    import yaml

    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    doc = yaml.safe_load((other / "config.yaml").read_text())
    doc["config"]["width"] = 0.25  # the checkpoint holds a width-0.125 model
    (other / "config.yaml").write_text(yaml.safe_dump(doc))
    r = cli("pi", "senet", "--teacher", str(other), "--budget", "100", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "another architecture" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_distillation_teacher_follows_the_batch_device_and_the_student_layout():
    """On a GPU the loop moves the student and the batch; the teacher must follow (meta stands in for cuda)."""
    from trustlab.pi.distill import DistillationLoss
    from trustlab.pi.models import build_model

    teacher = build_model("resnet18", 10, 1, 0.25)
    loss_fn = DistillationLoss(teacher, ["layer1.0.relu1"], beta=1.0)
    student = build_model("resnet18", 10, 1, 0.25).to("meta")
    x, y = torch.rand(2, 1, 16, 16, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    loss = loss_fn(student, x, y)
    assert loss.device.type == "meta" and next(teacher.parameters()).device.type == "meta"
    cpu_teacher, cpu_student = build_model("resnet18", 10, 1, 0.25), build_model("resnet18", 10, 1, 0.25)
    cpu_student.to(memory_format=torch.channels_last)
    DistillationLoss(cpu_teacher, [], beta=0.0)(cpu_student, torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cpu_teacher.parameters() if p.dim() == 4)


def _snl_until_budget(teacher, out, budget, resume=False, **settings):
    from trustlab.pi.reductions import run_reduction

    cfg = ReductionConfig(method="snl", teacher=str(teacher), budget=budget, snl_schedule="until-budget", **{
        "search_lr": 0.1, "snl_lambda": 1e-2, "finetune_epochs": 1, "batch_size": 32, "train_limit": 128, "device": "cpu", **settings})
    return run_reduction(cfg, out, resume=resume, quiet=True).summary()


def test_snl_until_budget_stops_at_the_budget_reports_the_cap_and_resumes_exactly(teacher, tmp_path):
    """SNL's public-code rule: epochs until the α above threshold fit the budget; λ x1.1 when the count
    stalls; the cap reported when hit. A run killed after an epoch's checkpoint but before its count
    was written counts it again on resume and ends where the uninterrupted run ends."""
    total = json.loads((teacher / "summary.json").read_text())["relus"]
    a = _snl_until_budget(teacher, tmp_path / "a", total // 2, search_epochs=8)
    history = json.loads((tmp_path / "a" / "tables" / "snl_search.json").read_text())["rows"]
    assert a["relus"] == total // 2 and a["search_epochs_run"] == len(history) > 1 and not a["search_cap_hit"]
    assert history[-1]["relus_above_threshold"] <= total // 2
    assert all(h["relus_above_threshold"] > total // 2 for h in history[:-1])

    cap = _snl_until_budget(teacher, tmp_path / "cap", 1, search_epochs=2, snl_lambda=1e-6, search_lr=1e-4)
    assert cap["search_cap_hit"] and cap["search_epochs_run"] == 2 and cap["relus"] == 1

    # forget the last epoch's count and everything after the search: the resumed run redoes them alike
    state = json.loads((tmp_path / "a" / "snl_search.json").read_text())
    state["epochs"] = state["epochs"][:-1]
    (tmp_path / "a" / "snl_search.json").write_text(json.dumps(state))
    for p in ("summary.json", "checkpoints/finetune.safetensors"):
        (tmp_path / "a" / p).unlink()
    again = _snl_until_budget(teacher, tmp_path / "a", total // 2, resume=True, search_epochs=8)
    assert again["test_acc"] == a["test_acc"] and again["search_epochs_run"] == a["search_epochs_run"]


def test_snl_schedule_is_checked_at_the_edge():
    with pytest.raises(ConfigError, match="unknown SNL schedule"):
        ReductionConfig(method="snl", budget=10, snl_schedule="forever").validate()
    with pytest.raises(ConfigError, match="use it with pi snl only"):
        ReductionConfig(method="senet", budget=10, snl_schedule="until-budget").validate()
