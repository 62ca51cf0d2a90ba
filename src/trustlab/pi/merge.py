"""Exact algebra of merging convolutions that have no non-linearity between them.

* :func:`fold_bn` — BatchNorm (inference statistics) into the preceding convolution:
  ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``.
* :func:`compose` — ``conv_b ∘ conv_a`` as one convolution. Kernel sizes add (``k_a +
  s_a·(k_b − 1)``, i.e. 3×3 then 3×3 gives 5×5); a stride ``s_a`` in the first convolution
  dilates the second kernel by ``s_a``; the merged stride is ``s_a·s_b``.
* :func:`add_centre` — a parallel identity or 1×1 (projection) path, ``y = K∗x + P∗x``, added
  into the centre tap of ``K``.
* :func:`find_pairs` / :func:`apply_merges` — the model surgery, on the traced graph of any
  model (:mod:`trustlab.pi.graph`): a residual block of the shape conv–BN–ReLU–conv–BN plus an
  identity or 1×1-projection skip (a CIFAR or torchvision ResNet basic block, a WRN or Hugging
  Face basic layer) without its inner ReLU becomes one :class:`MergedConv2d` and a BatchNorm.
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
import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.pi.graph import put_module


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


class MergedConv2d(nn.Conv2d):
    """The convolution a merged block becomes. While the shallow model's ring stage shrinks it,
    ``ring = (core, scale)`` scales the taps outside the central ``core``×``core`` by ``scale``;
    :meth:`cut` then keeps the core only (exact once the scale has reached 0)."""

    pi_leaf = True  # traced as one call (trustlab.pi.graph)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ring: tuple[int, float] | None = None

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "MergedConv2d":
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  bias=conv.bias is not None).to(conv.weight.device)
        out.load_state_dict(conv.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ring is None:
            return super().forward(x)
        core, scale = self.ring
        w = self.weight
        k, o = w.shape[-1], (w.shape[-1] - core) // 2
        mask = torch.full((k, k), scale, dtype=w.dtype, device=w.device)
        mask[o : o + core, o : o + core] = 1.0
        return F.conv2d(x, w * mask, self.bias, self.stride, self.padding)

    def cut(self, core: int) -> None:
        """Keep only the central ``core``×``core`` taps, padding reduced to keep the output grid."""
        small = crop_conv(self, core)
        self.weight, self.bias = small.weight, small.bias
        self.kernel_size, self.padding, self.ring = small.kernel_size, small.padding, None


def identity_bn(channels: int, device) -> nn.BatchNorm2d:
    """A BatchNorm that is the identity in inference statistics: it keeps the merge exact and makes
    fine-tuning of stacked merged convolutions stable (without it they diverge at the usual rates);
    it folds back into the convolution for inference."""
    bn = nn.BatchNorm2d(channels).to(device)
    with torch.no_grad():
        bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1
    return bn


ADD_TARGETS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


@dataclass(frozen=True)
class Pair:
    """A mergeable block in a split model's graph: ``bn_b(conv_b(relu(bn_a(conv_a x)))) + skip(x)``.

    ``block`` is the module whose ``forward`` adds the skip (the block's name: ``layer1.0``);
    the rest are module names (BatchNorms may be None); ``skip`` is ``"identity"`` or the
    (1×1 convolution, BatchNorm) names of the projection.
    """

    block: str
    conv_a: str
    bn_a: str | None
    relu: str
    conv_b: str
    bn_b: str | None
    skip: str | tuple[str, str | None]
    add: str  # the graph node of the residual addition
    out_relu: str | None  # the ReLU site applied to the block's output, if any


def _module_call(node, modules: dict, kinds) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules[node.target], kinds)


def _sole_input(node: torch.fx.Node) -> torch.fx.Node | None:
    return node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None


def _conv_bn(node, modules: dict) -> tuple[torch.fx.Node | None, str | None, str | None]:
    """(input, conv name, BN name) when ``node`` is ``bn(conv(input))`` or ``conv(input)``, each used once."""
    bn = None
    if _module_call(node, modules, nn.BatchNorm2d):
        bn, node = node.target, _sole_input(node)
        if node is None or len(node.users) != 1:
            return None, None, None
    if not _module_call(node, modules, nn.Conv2d):
        return None, None, None
    return _sole_input(node), node.target, bn


def _is_relu(m: nn.Module) -> bool:
    """An inner ReLU: an ``nn.ReLU`` site, or a ReLU on its way to linear (the shallow model's sloped ReLU)."""
    return isinstance(m, nn.ReLU) or getattr(m, "pi_kind", None) == "relu"


def _match(add: torch.fx.Node, main, other, modules: dict) -> Pair | None:
    if not isinstance(main, torch.fx.Node) or len(main.users) != 1:
        return None
    relu_node, conv_b, bn_b = _conv_bn(main, modules)
    if relu_node is None or not (relu_node.op == "call_module" and _is_relu(modules[relu_node.target])) or len(relu_node.users) != 1:
        return None
    x, conv_a, bn_a = _conv_bn(_sole_input(relu_node), modules)
    inner = _sole_input(relu_node)
    if x is None or len(inner.users) != 1:
        return None
    if other is x:
        skip = "identity"
    else:
        if not isinstance(other, torch.fx.Node) or len(other.users) != 1:
            return None
        px, proj, proj_bn = _conv_bn(other, modules)
        if px is not x:
            return None
        skip = (proj, proj_bn)
    users = list(add.users)
    out_relu = users[0].target if len(users) == 1 and _module_call(users[0], modules, nn.Module) and _is_relu(modules[users[0].target]) else None
    return Pair(add.meta.get("scope", ""), conv_a, bn_a, relu_node.target, conv_b, bn_b, skip, add.name, out_relu)


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_TARGETS) or (node.op == "call_method" and node.target in ("add", "add_"))


def find_pairs(gm: torch.fx.GraphModule) -> list[Pair]:
    """Every mergeable block of a split model (:func:`trustlab.pi.graph.split_sites`), in graph order."""
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if not _is_add(node) or len(node.args) < 2 or node.kwargs.get("alpha", 1) != 1:
            continue
        a, b = node.args[0], node.args[1]
        pair = _match(node, a, b, modules) or _match(node, b, a, modules)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _free_name(gm: nn.Module, scope: str, base: str) -> str:
    name, k = f"{scope}.{base}" if scope else base, 1
    while True:
        try:
            gm.get_submodule(name)
        except AttributeError:
            return name
        k += 1
        name = f"{scope}.{base}_{k}" if scope else f"{base}_{k}"


def _erase_block(gm: torch.fx.GraphModule, add: torch.fx.Node) -> None:
    """Remove the merged block's nodes, from its addition back to its input: only nodes nothing else
    reads (a graph-wide dead-code pass would also drop in-place updates whose result goes unused)."""
    stack = [add]
    while stack:
        node = stack.pop()
        if node.users or node.op != "call_module" and node is not add:
            continue
        inputs = [a for a in node.all_input_nodes]
        gm.graph.erase_node(node)
        stack.extend(inputs)


def apply_merges(gm: torch.fx.GraphModule, blocks: list[str], kernel: int | None) -> torch.fx.GraphModule:
    """A copy of the split model ``gm`` with the named blocks merged (BN in inference statistics):
    each becomes ``BLOCK.conv`` (a :class:`MergedConv2d`) and ``BLOCK.bn`` (an identity BatchNorm)."""
    gm = copy.deepcopy(gm).eval()
    pairs = {p.block: p for p in find_pairs(gm)}
    missing = [b for b in blocks if b not in pairs]
    if missing:
        raise ConfigError(f"'{missing[0]}' is not a mergeable block of this model (blocks: {', '.join(pairs) or 'none'})")
    for name in blocks:
        p = pairs[name]
        get = lambda n: gm.get_submodule(n) if n else None  # noqa: E731
        skip = p.skip if p.skip == "identity" else (get(p.skip[0]), get(p.skip[1]))
        conv = MergedConv2d.of(merge_pair(get(p.conv_a), get(p.bn_a), get(p.conv_b), get(p.bn_b), skip, kernel))
        conv_name, bn_name = _free_name(gm, name, "conv"), None
        put_module(gm, conv_name, conv)
        bn_name = _free_name(gm, name, "bn")
        put_module(gm, bn_name, identity_bn(conv.out_channels, conv.weight.device))
        add = next(n for n in gm.graph.nodes if n.name == p.add)
        x = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == p.conv_a).args[0]
        with gm.graph.inserting_before(add):
            out = gm.graph.call_module(bn_name, (gm.graph.call_module(conv_name, (x,)),))
        add.replace_all_uses_with(out)
        _erase_block(gm, add)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()
