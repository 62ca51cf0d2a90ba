"""Exact algebra of merging convolutions that have no non-linearity between them.

* :func:`fold_bn` — BatchNorm (inference statistics) into the preceding convolution:
  ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``.
* :func:`compose` — ``conv_b ∘ conv_a`` as one convolution. Kernel sizes add (``k_a +
  s_a·(k_b − 1)``, i.e. 3×3 then 3×3 gives 5×5); a stride ``s_a`` in the first convolution
  dilates the second kernel by ``s_a``; the merged stride is ``s_a·s_b``.
* :func:`add_centre` — a parallel identity or 1×1 (projection) path, ``y = K∗x + P∗x``, added
  into the centre tap of ``K``.
* :class:`MergedBlock` / :func:`apply_merges` — the model surgery: a ResNet basic block
  without its inner ReLU replaced by one convolution.
* :func:`crop` / :func:`crop_conv` — the central k×k of a kernel (or convolution): exact only
  when the outer taps are zero, which the shallow model's ring stage trains them to be.

Border exactness. With "same" zero padding on both convolutions, the second one sees zeros
where the composed convolution sees ``conv_a`` of zero padding (its bias and partial sums), so
the merge is wrong on a border of ``p_b`` output pixels. It is exact everywhere for the
*pad-first* arrangement: ``conv_a`` padded by ``p_a + s_a·p_b`` and ``conv_b`` by 0. The merged
convolution uses padding ``p_a + s_a·p_b`` and equals that arrangement to float precision;
:func:`pad_first` converts a pair of convolutions to it (the function changes on the border,
so a model is fine-tuned after the conversion).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.pi.models import BasicBlock


def _check(conv: nn.Conv2d, what: str) -> None:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ConfigError(f"{what}: only ungrouped, undilated, zero-padded convolutions can be merged")
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        raise ConfigError(f"{what}: only square kernels, strides and paddings can be merged")


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution (BN in inference mode)."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is None:
        return w, b
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return w * scale[:, None, None, None], (b - bn.running_mean.double()) * scale + bn.bias.detach().double()


def compose(wa: torch.Tensor, ba: torch.Tensor, stride_a: int, wb: torch.Tensor, bb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``conv_b(conv_a(x))`` (``conv_b`` with stride 1), in float64.

    ``K[o, i] = Σ_m Σ_{u,v} wb[o, m, u, v] · wa[m, i]`` shifted by ``(s_a·u, s_a·v)``.
    """
    co, cm, kb, _ = wb.shape
    cm2, ci, ka, _ = wa.shape
    if cm != cm2:
        raise ConfigError(f"cannot compose: the second convolution takes {cm} channels, the first gives {cm2}")
    k = ka + stride_a * (kb - 1)
    kernel = torch.zeros(co, ci, k, k, dtype=torch.float64)
    for u in range(kb):
        for v in range(kb):
            part = torch.einsum("om,mihw->oihw", wb[:, :, u, v], wa)
            kernel[:, :, stride_a * u : stride_a * u + ka, stride_a * v : stride_a * v + ka] += part
    bias = bb + wb.sum(dim=(2, 3)) @ ba
    return kernel, bias


def add_centre(kernel: torch.Tensor, path: torch.Tensor | None = None) -> torch.Tensor:
    """Add a parallel identity (``path=None``) or 1×1 convolution ``path`` (o, i, 1, 1) at the centre tap."""
    k = kernel.shape[-1]
    if k % 2 == 0:
        raise ConfigError("a skip connection folds only into an odd-sized kernel")
    out = kernel.clone()
    c = k // 2
    if path is None:
        if kernel.shape[0] != kernel.shape[1]:
            raise ConfigError("an identity skip needs as many input as output channels")
        out[:, :, c, c] += torch.eye(kernel.shape[0], dtype=kernel.dtype)
    else:
        out[:, :, c, c] += path[:, :, 0, 0]
    return out


def crop(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """The central k×k taps (an approximation; used for the MAC-saving shallow option)."""
    big = kernel.shape[-1]
    if k > big or (big - k) % 2:
        raise ConfigError(f"cannot crop a {big}x{big} kernel to {k}x{k}")
    o = (big - k) // 2
    return kernel[:, :, o : o + k, o : o + k].clone()


def to_conv(kernel: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[-1], stride, padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(kernel.float())
        conv.bias.copy_(bias.float())
    return conv


def merge_pair(conv_a: nn.Conv2d, bn_a: nn.BatchNorm2d | None, conv_b: nn.Conv2d, bn_b: nn.BatchNorm2d | None,
               skip: str | tuple[nn.Conv2d, nn.BatchNorm2d | None] | None = None, kernel: int | None = None) -> nn.Conv2d:
    """One convolution for ``bn_b(conv_b(bn_a(conv_a(x)))) [+ skip(x)]`` in pad-first arrangement.

    ``skip`` is None, ``"identity"`` or ``(conv1x1, bn)``; ``kernel`` crops the merged kernel
    (None: exact).
    """
    _check(conv_a, "first convolution")
    _check(conv_b, "second convolution")
    if conv_b.stride[0] != 1:
        raise ConfigError("the second convolution of a merged pair must have stride 1")
    wa, ba = fold_bn(conv_a, bn_a)
    wb, bb = fold_bn(conv_b, bn_b)
    s = conv_a.stride[0]
    k, b = compose(wa, ba, s, wb, bb)
    padding = conv_a.padding[0] + s * conv_b.padding[0]
    if skip == "identity":
        k = add_centre(k)
    elif skip is not None:
        proj, proj_bn = skip
        _check(proj, "skip convolution")
        if proj.kernel_size[0] != 1 or proj.stride[0] != s or proj.padding[0] != 0:
            raise ConfigError("a projection skip folds in only as a 1x1 convolution with the block's stride")
        wp, bp = fold_bn(proj, proj_bn)
        k, b = add_centre(k, wp), b + bp
    conv = to_conv(k, b, s, padding)
    return conv if kernel is None else crop_conv(conv, kernel)


def crop_conv(conv: nn.Conv2d, kernel: int) -> nn.Conv2d:
    """``conv`` cut to its central ``kernel``×``kernel`` taps, padding reduced to keep the output grid.

    Exact when the cut taps are zero (a kernel whose outer ring was trained away), an
    approximation otherwise.
    """
    big = conv.kernel_size[0]
    if kernel == big:
        return conv
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    out = to_conv(crop(conv.weight.detach().double(), kernel), bias, conv.stride[0], conv.padding[0] - (big - kernel) // 2)
    return out.to(conv.weight.device)


def pad_first(conv_a: nn.Conv2d, conv_b: nn.Conv2d) -> None:
    """Move ``conv_b``'s padding onto ``conv_a`` (in place): the arrangement whose merge is exact."""
    extra = conv_a.stride[0] * conv_b.padding[0]
    conv_a.padding = (conv_a.padding[0] + extra, conv_a.padding[1] + extra)
    conv_b.padding = (0, 0)


def reference_forward(x: torch.Tensor, conv_a, bn_a, conv_b, bn_b, skip=None) -> torch.Tensor:
    """``bn_b(conv_b(bn_a(conv_a(x)))) + skip(x)`` with BN in inference mode (for tests and checks)."""
    def run(conv, bn, h):
        h = F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding)
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps) if bn is not None else h
    out = run(conv_b, bn_b, run(conv_a, bn_a, x))
    if skip == "identity":
        out = out + x
    elif skip is not None:
        out = out + run(skip[0], skip[1], x)
    return out


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
        self.ring: tuple[int, float] | None = None  # (core size, scale of the taps outside it) while shrinking

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ring is None:
            return self.relu2(self.bn(self.conv(x)))
        core, scale = self.ring
        w = self.conv.weight
        k, o = w.shape[-1], (w.shape[-1] - core) // 2
        mask = torch.full((k, k), scale, dtype=w.dtype, device=w.device)
        mask[o : o + core, o : o + core] = 1.0
        conv = F.conv2d(x, w * mask, self.conv.bias, self.conv.stride, self.conv.padding)
        return self.relu2(self.bn(conv))

    def cut(self, core: int) -> None:
        """Keep only the central ``core``×``core`` taps (exact once the ring's scale has reached 0)."""
        self.conv, self.ring = crop_conv(self.conv, core), None


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
