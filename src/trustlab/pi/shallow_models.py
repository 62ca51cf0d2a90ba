"""Shallow models ("Making Models Shallow Again"): remove low-sensitivity ReLU layers, merge convolutions.

Inside a ResNet basic block ``relu2(bn2(conv2(relu1(bn1(conv1 x)))) + skip(x))`` the inner
ReLU ``relu1`` is the only non-linearity between the two convolutions. When it goes, the two
convolutions, both BatchNorms and the skip (identity or 1×1 projection) fold into a single
convolution (:mod:`trustlab.pi.merge`), and the block becomes ``relu2(conv(x))``: one ReLU
layer and one linear layer fewer on the path.

Block sensitivity. A block's score is the cost of linearising its ``relu1`` alone in the
trained model: the mean KL divergence of the predictions from the original's on a probe
batch (:func:`~trustlab.pi.sensitivity.removal_sensitivity`). Blocks are merged from the
least sensitive up, until the ReLU count falls by the target factor.

Linear cost. The exact merge of two 3×3 convolutions is a 5×5 one (7×7 after a stride 2):
25·C² MACs per pixel instead of 18·C² in a stride-1 block, so exact shallow models have
*more* MACs. The paper's fewer linear operations come from blocks that *learn* to be shallow,
which a run does in up to three stages, each distilled from the teacher:

1. ``anneal_epochs`` — the chosen inner ReLUs become leaky with a slope rising from 0 to 1, so
   each block moves gradually to linear instead of losing its non-linearity at once; then the
   now-linear block merges exactly.
2. ``ring_epochs`` — the merged 5×5 (7×7) kernel's taps outside the central 3×3 are scaled by a
   factor falling from 1 to 0 while the rest trains to take over their work; then the kernel is
   cut to 3×3 with no change of the function.
3. ``finetune_epochs`` — the final shallow model.

Each schedule reaches its end (slope 1, scale 0) after the first three quarters of its stage
and holds it for the last quarter, so the stage ends trained in the form the next one starts from.

``kernel=3`` without a ring stage cuts the exact merged kernel at once (the abrupt route);
``kernel=0`` keeps it exact and reports the MAC increase honestly. ``beta`` adds block-wise
distillation: the post-ReLU output of every block is aligned with the teacher's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.config import ShallowConfig
from trustlab.pi.distill import DistillationLoss
from trustlab.pi.load import chained_job
from trustlab.pi.graph import CONV_FUNCTIONS, LINEAR_FUNCTIONS, put_module, split_sites, trace
from trustlab.pi.merge import MergedConv2d, Pair, apply_merges, find_pairs, pad_first
from trustlab.pi.sensitivity import removal_sensitivity
from trustlab.report import render_report
from trustlab.runs import Job, RunDir
from trustlab.train import evaluate, fit
from trustlab.train_config import TrainConfig


class SlopedReLU(nn.Module):
    """``max(x, slope·x)``: the ReLU at slope 0, the identity at slope 1 (a block learning to be linear)."""

    pi_leaf = True  # traced as one call, counted as the ReLU it still is (trustlab.pi.graph)
    pi_kind = "relu"

    def __init__(self, slope: float = 0.0):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


PATTERN = ("conv-BN-ReLU-conv-BN plus an identity or 1x1-projection skip, added (a ResNet basic block); "
           "pre-activation blocks put BN-ReLU before each convolution, so no ReLU sits between two convolutions")


def mergeable_blocks(model: torch.fx.GraphModule) -> list[Pair]:
    """The blocks of a split model (:func:`~trustlab.pi.graph.split_sites`) whose inner ReLU can be
    removed and convolutions merged. A model without any is a ``ConfigError`` naming the pattern."""
    pairs = find_pairs(model)
    if not pairs:
        raise ConfigError(f"{model.__class__.__name__} has no block the merger supports: it looks for {PATTERN}")
    return pairs


def depth(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Convolution and linear layers on the longest path through the model (a parallel projection
    shortcut does not add to it)."""
    gm = trace(model, shape)
    modules = dict(gm.named_modules())
    longest: dict[torch.fx.Node, int] = {}
    for node in gm.graph.nodes:
        here = (node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear))) or (
            node.op == "call_function" and node.target in CONV_FUNCTIONS | LINEAR_FUNCTIONS)
        longest[node] = max((longest[a] for a in node.all_input_nodes), default=0) + int(here)
    return max(longest.values(), default=0)


def plan_merges(model: nn.Module, shape: tuple[int, ...], target: float, sensitivity: dict[str, float],
                inner: dict[str, str]) -> list[str]:
    """Least sensitive blocks first, until ReLUs fall by ``target``; an impossible target is an error.

    ``inner`` maps each block to its inner ReLU site."""
    if target <= 1:
        raise ConfigError(f"--target-relu-reduction must be above 1, not {target}")
    acc = count(model, shape)
    per_layer = {r.name: r.relus for r in acc.relu_layers()}
    total, removed, chosen = acc.relus, 0, []
    blocks = sorted(sensitivity, key=lambda b: (sensitivity[b], b))
    for b in blocks:
        if total / (total - removed) >= target:
            break
        chosen.append(b)
        removed += per_layer[inner[b]]
    if total / (total - removed) < target:
        best = total / (total - sum(per_layer[inner[b]] for b in blocks))
        raise ConfigError(f"a {target:g}x ReLU reduction is impossible: removing all {len(blocks)} removable ReLU layers gives {best:.2f}x")
    return chosen


RAMP = 0.75  # a stage's schedule reaches its end value after this fraction of it, and holds it for the rest


def ramp(t: float) -> float:
    """0 → 1 over the first ``RAMP`` of a stage, then 1: the model trains in its final form before the cut."""
    return min(1.0, t / RAMP)


def linearise(model: torch.fx.GraphModule, pairs: list[Pair]) -> list[SlopedReLU]:
    """Put a :class:`SlopedReLU` (slope 0, still a ReLU) at each pair's inner ReLU site, and move the
    block's padding onto its first convolution (:func:`~trustlab.pi.merge.pad_first`), so that at
    slope 1 the block is exactly the merged convolution, borders included."""
    slopes = []
    for p in pairs:
        sloped = SlopedReLU()
        put_module(model, p.relu, sloped)
        pad_first(model.get_submodule(p.conv_a), model.get_submodule(p.conv_b))
        slopes.append(sloped)
    return slopes


def run_shallow(cfg: ShallowConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """The shallow model of the teacher run ``cfg.teacher``, written to the run folder ``out``."""
    return shallow_model(*chained_job(cfg, out, resume), resume=resume, quiet=quiet)


def shallow_model(job: Job, teacher: nn.Module, shape: tuple[int, ...], data, link: dict, *, resume: bool = False,
                  quiet: bool = False) -> RunDir:
    """The shallow stages on any traceable teacher whose graph has mergeable blocks, into ``job``'s folder."""
    cfg = job.config
    teacher, _ = split_sites(teacher, shape)
    teacher.eval()
    pairs = {p.block: p for p in mergeable_blocks(teacher)}
    blocks = list(pairs)
    probe_x, probe_y = data.x_train[: cfg.probe_images], data.y_train[: cfg.probe_images]
    kl = removal_sensitivity(teacher, probe_x, probe_y, [p.relu for p in pairs.values()])
    sens = {b: kl[p.relu]["kl"] for b, p in pairs.items()}
    chosen = plan_merges(teacher, shape, cfg.target_relu_reduction, sens, {b: p.relu for b, p in pairs.items()})
    run = job.start()
    student = copy.deepcopy(teacher)  # before the loss freezes the teacher's parameters
    loss = DistillationLoss(teacher, [p.out_relu for p in pairs.values() if p.out_relu], cfg.temperature, cfg.beta)
    stages: dict[str, float] = {}

    def train(model: nn.Module, tag: str, epochs: int, schedule=None) -> None:
        torch.manual_seed(cfg.seed)
        tcfg = TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=5e-4, augment=True,
                           seed=cfg.seed + 2, device=cfg.device)
        stages[f"acc_after_{tag}"] = fit(model, data.x_train, data.y_train, tcfg, run, x_test=data.x_test, y_test=data.y_test,
                                         loss_fn=loss, resume=resume, quiet=quiet, tag=tag, schedule=schedule).get("test_acc")

    if cfg.anneal_epochs:
        slopes = linearise(student, [pairs[b] for b in chosen])
        train(student, "anneal", cfg.anneal_epochs, lambda t: [setattr(r, "slope", ramp(t)) for r in slopes])  # ends at 1
    student = apply_merges(student, chosen, None if cfg.ring_stage_epochs else (cfg.kernel or None))
    merged_acc = evaluate(student, data.x_test, data.y_test)["acc"]
    if cfg.ring_stage_epochs:
        merged = [m for m in student.modules() if isinstance(m, MergedConv2d)]
        train(student, "ring", cfg.ring_stage_epochs, lambda t: [setattr(m, "ring", (cfg.kernel, 1.0 - ramp(t))) for m in merged])
        for m in merged:
            m.cut(cfg.kernel)
    train(student, "finetune", cfg.finetune_epochs)
    before, after = count(teacher, shape), count(student, shape)
    teacher_acc = evaluate(teacher, data.x_test, data.y_test)["acc"]
    inner_relus = {r.name: r.relus for r in before.relu_layers()}
    merged_k = {b: m.kernel_size[0] for b in chosen for n, m in student.named_modules()
                if isinstance(m, MergedConv2d) and n.rpartition(".")[0] == b}
    run.write_table("blocks", [{"block": b, "inner_relu": pairs[b].relu, "inner_relus": inner_relus[pairs[b].relu],
                                "removal_kl": round(sens[b], 6), "merged": b in chosen, "kernel": merged_k.get(b, "-")}
                               for b in blocks], title="Blocks: inner-ReLU sensitivity and merges")
    test_acc = stages["acc_after_finetune"]
    run.write_summary({
        "method": "shallow", **link, "merged_blocks": chosen, "kernel": cfg.kernel,
        "relus": after.relus, "teacher_relus": before.relus, "relu_reduction": before.relus / after.relus,
        "macs": after.macs, "teacher_macs": before.macs, "mac_reduction": before.macs / after.macs,
        "params": after.params, "teacher_params": before.params, "depth": depth(student, shape),
        "teacher_depth": depth(teacher, shape), "teacher_acc": teacher_acc, "acc_after_merge": merged_acc,
        **{k: v for k, v in stages.items() if k != "acc_after_finetune"},
        "test_acc": test_acc, "acc_drop_points": 100 * (teacher_acc - test_acc), "input_shape": list(shape),
        "classes": len(data.classes)})
    render_report(run.path)
    return run
