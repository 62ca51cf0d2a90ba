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
*more* MACs. The paper's fewer linear operations come from the block learning to be shallow:
the merged block is a single 3×3 convolution trained (from the distilled teacher) to do the
two's work. ``kernel=3`` offers that: the exact merged kernel cropped to its central 3×3 as the
starting point, then distillation. ``kernel=None`` keeps the merge exact (up to the border,
see :mod:`~trustlab.pi.merge`) and reports the MAC increase honestly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.distill import DistillationLoss
from trustlab.pi.merge import merge_pair
from trustlab.pi.models import BasicBlock
from trustlab.pi.sensitivity import removal_sensitivity
from trustlab.runs import RunDir, resumed_config
from trustlab.train import TrainConfig, evaluate, fit


class MergedBlock(nn.Module):
    """A basic block without its inner ReLU: one convolution, a BatchNorm, the block's output ReLU.

    The BatchNorm starts as the identity (in inference statistics), so the merge stays exact;
    it keeps fine-tuning stable (a stack of merged convolutions without normalisation diverges
    at the usual learning rates) and folds back into the convolution for inference.
    """

    def __init__(self, conv: nn.Conv2d, relu2: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels).to(conv.weight.device)
        with torch.no_grad():
            self.bn.running_var.fill_(1.0 - self.bn.eps)  # sqrt(var + eps) == 1: the identity
        self.relu2 = relu2  # same name as in BasicBlock, so ReLU layer names survive the merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn(self.conv(x)))


def mergeable_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks whose inner ReLU can be removed and convolutions merged.

    Raises a ``ConfigError`` naming the blocks of other kinds when there is none.
    """
    blocks = [n for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    if not blocks:
        others = [f"{type(m).__name__} at '{n}'" for n, m in model.named_modules()
                  if n and any(isinstance(c, nn.ReLU) for c in m.children()) and not isinstance(m, MergedBlock)]
        raise ConfigError("the merger supports ResNet basic blocks (conv-BN-ReLU-conv-BN + skip); this model has none"
                          + (f", only {', '.join(others[:3])}" if others else "")
                          + " (pre-activation blocks put BN-ReLU before each convolution, so no ReLU sits between two convolutions)")
    return blocks


def _merge_block(block: BasicBlock, kernel: int | None) -> MergedBlock:
    if len(block.shortcut) == 0:
        skip = "identity"
    elif len(block.shortcut) == 2 and isinstance(block.shortcut[0], nn.Conv2d):
        skip = (block.shortcut[0], block.shortcut[1])
    else:
        raise ConfigError(f"unsupported shortcut {block.shortcut}: expected identity or 1x1 conv + BN")
    conv = merge_pair(block.conv1, block.bn1, block.conv2, block.bn2, skip, kernel)
    return MergedBlock(conv.to(block.conv1.weight.device), block.relu2)


def apply_merges(model: nn.Module, blocks: list[str], kernel: int | None) -> nn.Module:
    """A copy of ``model`` with the named basic blocks merged (BN in inference statistics)."""
    model = copy.deepcopy(model).eval()
    for name in blocks:
        block = model.get_submodule(name)
        if not isinstance(block, BasicBlock):
            raise ConfigError(f"'{name}' is a {type(block).__name__}, not a basic block the merger supports")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, _merge_block(block, kernel))
    return model.eval()


def depth(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Convolution and linear layers on the main path (projection shortcuts not counted)."""
    return sum(1 for r in count(model, shape).layers if r.kind in ("Conv2d", "Linear") and "shortcut" not in r.name)


def plan_merges(model: nn.Module, shape: tuple[int, ...], target: float, sensitivity: dict[str, float]) -> list[str]:
    """Least sensitive blocks first, until ReLUs fall by ``target``; an impossible target is an error."""
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
        removed += per_layer[f"{b}.relu1"]
    if total / (total - removed) < target:
        best = total / (total - sum(per_layer[f"{b}.relu1"] for b in blocks))
        raise ConfigError(f"a {target:g}x ReLU reduction is impossible: removing all {len(blocks)} removable ReLU layers gives {best:.2f}x")
    return chosen


@dataclass(frozen=True)
class ShallowConfig:
    teacher: str = ""
    target_relu_reduction: float = 1.7
    kernel: int = 3  # 0: exact merge (5x5 / 7x7 kernels); 3: cropped to 3x3 and trained (fewer MACs)
    finetune_epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01
    temperature: float = 4.0
    probe_images: int = 1000
    train_limit: int | None = None  # fine-tune on the teacher's first N training images only
    seed: int = 0
    device: str = "auto"


def run_shallow(cfg: ShallowConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    from trustlab.pi.load import load_pi_model

    cfg = resumed_config(ShallowConfig, out, "pi-shallow", cfg, resume)
    if cfg.kernel not in (0, 3):
        raise ConfigError(f"--kernel must be 0 (exact merge) or 3, not {cfg.kernel}")
    teacher, shape, data_cfg = load_pi_model(cfg.teacher)
    blocks = mergeable_blocks(teacher)
    data = replace(data_cfg, limit=cfg.train_limit or data_cfg.limit).load()
    probe_x, probe_y = data.x_train[: cfg.probe_images], data.y_train[: cfg.probe_images]
    sens = {b.rsplit(".relu1", 1)[0]: v["kl"]
            for b, v in removal_sensitivity(teacher, probe_x, probe_y, [f"{b}.relu1" for b in blocks]).items()}
    chosen = plan_merges(teacher, shape, cfg.target_relu_reduction, sens)
    run = RunDir.start(out, cfg, "pi-shallow", resume)
    kernel = cfg.kernel or None
    student = apply_merges(teacher, chosen, kernel)
    before, after = count(teacher, shape), count(student, shape)
    teacher_acc = evaluate(teacher, data.x_test, data.y_test)["acc"]
    merged_acc = evaluate(student, data.x_test, data.y_test)["acc"]
    torch.manual_seed(cfg.seed)
    tcfg = TrainConfig(epochs=cfg.finetune_epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=5e-4, augment=True,
                       seed=cfg.seed + 2, device=cfg.device)
    result = fit(student, data.x_train, data.y_train, tcfg, run, x_test=data.x_test, y_test=data.y_test,
                 loss_fn=DistillationLoss(teacher, [], cfg.temperature), resume=resume, quiet=quiet, tag="finetune")
    relus1 = {r.name: r.relus for r in before.relu_layers()}
    run.write_table("blocks", [{"block": b, "relu1_relus": relus1[f"{b}.relu1"], "removal_kl": round(sens[b], 6),
                                "merged": b in chosen,
                                "kernel": (student.get_submodule(b).conv.kernel_size[0] if b in chosen else "-")} for b in blocks],
                    title="Blocks: inner-ReLU sensitivity and merges")
    run.write_summary({
        "method": "shallow", "teacher": str(cfg.teacher), "merged_blocks": chosen, "kernel": cfg.kernel,
        "relus": after.relus, "teacher_relus": before.relus, "relu_reduction": before.relus / after.relus,
        "macs": after.macs, "teacher_macs": before.macs, "mac_reduction": before.macs / after.macs,
        "params": after.params, "teacher_params": before.params, "depth": depth(student, shape),
        "teacher_depth": depth(teacher, shape), "teacher_acc": teacher_acc, "acc_after_merge": merged_acc,
        "test_acc": result.get("test_acc"), "acc_drop_points": 100 * (teacher_acc - result.get("test_acc", 0)),
        "input_shape": list(shape)})
    return run
