"""Secure inference of any traced PI model on SecretFlow SPU, with SPU's own traffic counters.

Export. The model is traced once (:func:`trustlab.pi.graph.trace`: torch.fx, or torch.export
for models fx cannot trace) and its graph becomes a JAX function, node by node:
convolutions (grouped and dilated too), linear layers, BatchNorm (folded into the convolution
it follows with :func:`trustlab.pi.merge.fold_bn`, an affine map anywhere else), average, max
and adaptive pooling, ``mean``, flatten/view/reshape, add/sub/mul/cat, ReLU in every form,
ReLU6 and clamp, partial ReLU, and the shape arithmetic around them (``x.size(0)``). Anything
else is refused in one line naming the operation and where it is.

Partial ReLU, two forms:

* ``gather`` (default) — the mask is public, so the kept positions are gathered, compared and
  put back (by gathering with the inverse permutation: SPU executes gathers with public
  indices about 50× faster than the equivalent scatter): only kept elements are compared,
  and the comparison traffic scales with the kept fraction.
* ``naive`` — ``x·(1−m) + relu(x)·m``: every element is still compared, so it saves almost
  nothing (SPU issue 701); offered to show exactly that.

Max-pooling is ``k²−1`` pairwise maxima per output, the comparisons the accounting counts.

Weights. ``secret`` (default) secret-shares the weights as inputs, which models the real
setting where the server's model must stay hidden; ``public`` compiles them in as constants,
the lower bound on linear cost. SPU 0.9.5 refuses ``VIS_PRIVATE`` inputs owned by one party
in its 2PC I/O, so weights private to the server alone are not offered.

Measurement. SPU logs per-operation send/recv bytes and actions when
``enable_pphlo_profile`` is set (and its execution time apart from compilation);
:func:`run_secure` captures those lines and splits the
traffic into non-linear operations (comparisons and the multiplexer multiply of ReLU) and
linear ones (convolution, dot, additions). A global average pool's 1/(H·W) is folded into the
linear layer that reads it so that, in the usual classifier head, every multiply left is a
ReLU multiplexer.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.graph import clamp_bounds, classify, comparisons, describe, op_name, shape_of, trace
from trustlab.pi.load import load_pi_model
from trustlab.pi.masks import PartialReLU
from trustlab.pi.merge import fold_bn
from trustlab.runs import RunDir, atomic_write_json

RELU_MODES = ("gather", "naive")  # ReLU on the kept positions only, or on every element times the mask
PROTOCOLS = {"semi2k": 2, "cheetah": 2, "aby3": 3}
NONLINEAR_OPS = {"pphlo.less", "pphlo.greater", "pphlo.less_equal", "pphlo.greater_equal", "pphlo.select",
                 "pphlo.maximum", "pphlo.minimum", "pphlo.multiply"}
aten = torch.ops.aten
POOL_PAD = -1e6  # what a max-pool's padding holds: below any activation, inside the fixed-point range


@dataclass
class ExportedModel:
    """A JAX forward function ``fn(x, *weights)`` and its weights (numpy, in order)."""

    fn: object
    weights: list[np.ndarray]
    relu_elements: int  # elements compared per image (ReLUs, twice per clamp, k²-1 per max-pool output)


Step = Callable[[list, tuple], object]  # (argument values, weights) -> value


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _arg(node: torch.fx.Node, i: int, key: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


class _Exporter:
    """Turns a traced graph into JAX steps; ``weights`` collects what is secret-shared."""

    def __init__(self, gm: torch.fx.GraphModule, relu_mode: str):
        self.gm, self.relu_mode = gm, relu_mode
        self.modules = dict(gm.named_modules())
        self.weights: list[np.ndarray] = []
        self.compared = 0
        self.folded: set[str] = set()  # BatchNorm nodes folded into the convolution before them
        self.pool_scale: dict[str, float] = {}  # global-pool nodes whose 1/(H·W) a linear layer takes

    def add_weight(self, t: torch.Tensor) -> int:
        self.weights.append(np.asarray(t.detach().double().cpu().numpy(), dtype=np.float32))
        return len(self.weights) - 1

    def where(self, node: torch.fx.Node) -> str:
        scope = node.target if node.op == "call_module" else node.meta.get("scope") or "the model's forward"
        return f"{describe(node, self.modules)} at '{scope}' (graph node {node.name})"

    def refuse(self, node: torch.fx.Node, why: str = "is not supported for secure inference"):
        return ConfigError(f"{self.where(node)} {why}: supported are convolution, linear, BatchNorm, pooling, mean, "
                           "flatten/view/reshape, add/sub/mul/cat, ReLU, ReLU6/clamp")

    # -- layers -------------------------------------------------------------------------
    def conv(self, node, weight: torch.Tensor, bias, stride, padding, dilation, groups) -> Step:
        from jax import lax

        bn = None
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[users[0].target], nn.BatchNorm2d):
            bn = self.modules[users[0].target]
            self.folded.add(users[0].name)
        conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), bias=bias is not None, groups=groups)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        w, b = fold_bn(conv, bn)
        wi, bi = self.add_weight(w), self.add_weight(b)
        if isinstance(padding, str):
            pad = padding.upper()
        else:
            ph, pw = _pair(padding)
            pad = [(ph, ph), (pw, pw)]
        stride, dilation = _pair(stride), _pair(dilation)

        def step(a, W):
            y = lax.conv_general_dilated(a[0], W[wi], stride, pad, rhs_dilation=dilation, feature_group_count=groups,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            return y + W[bi].reshape(1, -1, 1, 1)
        return step

    def affine(self, node, bn: nn.modules.batchnorm._BatchNorm) -> Step:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.detach().double() - bn.running_mean.double() * scale
        nd = len(shape_of(node) or ()) + 1
        view = (1, -1) + (1,) * (nd - 2)
        si, hi = self.add_weight(scale.view(view)), self.add_weight(shift.view(view))
        return lambda a, W: a[0] * W[si] + W[hi]

    def linear(self, node, weight: torch.Tensor, bias) -> Step:
        scale, source = 1.0, node.args[0]
        while source.name not in self.pool_scale and self._reshapes(source):
            source = source.args[0]
        if source.name in self.pool_scale:
            scale = self.pool_scale.pop(source.name)
        wi = self.add_weight(weight.detach().T * scale)
        bi = self.add_weight(bias.detach() if bias is not None else torch.zeros(weight.shape[0]))
        return lambda a, W: a[0] @ W[wi] + W[bi]

    def relu(self, node) -> Step:
        import jax.numpy as jnp

        self.compared += comparisons("relu", node, self.modules, shape_of(node) or ())
        return lambda a, W: jnp.where(a[0] > 0, a[0], 0.0)

    def clamp(self, node, kind: str, lo, hi) -> Step:
        import jax.numpy as jnp

        self.compared += comparisons(kind, node, self.modules, shape_of(node) or ())

        def step(a, W):
            y = a[0]
            if lo is not None:
                y = jnp.where(y > lo, y, float(lo))
            if hi is not None:
                y = jnp.where(y < hi, y, float(hi))
            return y
        return step

    def partial_relu(self, m: PartialReLU) -> Step:
        import jax.numpy as jnp

        flat_mask = (m.mask.expand(m.shape) if m.granularity == "channel" else m.mask).flatten().cpu().numpy()
        keep, drop = np.flatnonzero(flat_mask), np.flatnonzero(~flat_mask)
        self.compared += len(keep) if self.relu_mode == "gather" else int(np.prod(m.shape))
        inverse = np.argsort(np.concatenate([keep, drop]))
        m_ = flat_mask.astype(np.float32)
        gather = self.relu_mode == "gather"

        def step(a, W):
            flat = a[0].reshape(a[0].shape[0], -1)
            if gather:
                # gather kept and dropped positions, ReLU the kept ones, undo the permutation with one
                # more gather (SPU runs gathers with public indices fast; a scatter is ~50x slower)
                kept = flat[:, keep]
                flat = jnp.concatenate([jnp.where(kept > 0, kept, 0.0), flat[:, drop]], axis=1)[:, inverse]
            else:
                flat = flat * (1.0 - m_) + jnp.where(flat > 0, flat, 0.0) * m_
            return flat.reshape(a[0].shape)
        return step

    def pool(self, node, kind: str, kernel, stride, padding, ceil: bool = False) -> Step:
        """Max or average pooling as ``k²`` strided slices of the (padded) input: pairwise maxima
        (``k²−1`` comparisons per output) or a sum times ``1/k²`` (padding counted, PyTorch's default)."""
        import jax.numpy as jnp

        if ceil:
            raise self.refuse(node, "uses ceil_mode")
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride or kernel), _pair(padding)
        out = shape_of(node)
        oh, ow = out[-2], out[-1]
        if kind == "max":
            self.compared += int(np.prod(out)) * (kh * kw - 1)

        def step(a, W):
            x = a[0]
            if ph or pw:
                x = jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=POOL_PAD if kind == "max" else 0.0)
            parts = [x[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] for i in range(kh) for j in range(kw)]
            acc = parts[0]
            for p in parts[1:]:
                acc = jnp.maximum(acc, p) if kind == "max" else acc + p
            return acc if kind == "max" else acc * (1.0 / (kh * kw))
        return step

    def adaptive_avg(self, node, size) -> Step:
        inp = shape_of(node.args[0])
        h, w = inp[-2], inp[-1]
        oh, ow = _pair(size) if size is not None else (1, 1)
        oh, ow = oh or h, ow or w
        if (oh, ow) == (1, 1):
            self.pool_scale[node.name] = 1.0 / (h * w)
            return lambda a, W: a[0].sum(axis=(2, 3), keepdims=True)
        if h % oh or w % ow:
            raise self.refuse(node, f"pools {h}x{w} to {oh}x{ow}, which is not a whole window")
        return self.pool(node, "avg", (h // oh, w // ow), (h // oh, w // ow), 0)

    def _reshapes(self, node: torch.fx.Node) -> bool:
        """A flatten/view read only by the next node (between a global pool and a linear layer)."""
        if not isinstance(node.args[0] if node.args else None, torch.fx.Node) or len(node.users) != 1:
            return False
        if node.op == "call_module":
            return isinstance(self.modules[node.target], nn.Flatten)
        return op_name(node) in ("flatten", "view", "reshape", "_unsafe_view")

    # -- dispatch -----------------------------------------------------------------------
    def module_step(self, node) -> Step:
        m = self.modules[node.target]
        if isinstance(m, PartialReLU):
            return self.partial_relu(m)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or getattr(m, "ring", None) is not None:
                raise self.refuse(node, f"has padding mode {m.padding_mode}" if m.padding_mode != "zeros" else "is mid-shrink")
            return self.conv(node, m.weight.detach(), None if m.bias is None else m.bias.detach(), m.stride, m.padding,
                             m.dilation, m.groups)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return (lambda a, W: a[0]) if node.name in self.folded else self.affine(node, m)
        if isinstance(m, nn.Linear):
            return self.linear(node, m.weight.detach(), m.bias)
        kind = classify(node, self.modules)
        if kind == "relu":
            return self.relu(node)
        if kind in ("relu6", "clamp"):
            return self.clamp(node, kind, m.min_val, m.max_val)
        if isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != (1, 1):
                raise self.refuse(node, "is dilated")
            return self.pool(node, "max", m.kernel_size, m.stride, m.padding, m.ceil_mode)
        if isinstance(m, nn.AvgPool2d):
            return self.pool(node, "avg", m.kernel_size, m.stride, m.padding, m.ceil_mode)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg(node, m.output_size)
        if isinstance(m, nn.Flatten):
            return self.flatten(m.start_dim, m.end_dim)
        if isinstance(m, (nn.Identity, nn.Dropout)) or (isinstance(m, nn.Sequential) and len(m) == 0):
            return lambda a, W: a[0]
        raise self.refuse(node)

    @staticmethod
    def flatten(start: int = 0, end: int = -1) -> Step:
        def step(a, W):
            x = a[0]
            nd = x.ndim
            s, e = start % nd, end % nd
            return x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1 :])
        return step

    def function_step(self, node) -> Step:
        import jax.numpy as jnp

        name = op_name(node)
        kind = classify(node, self.modules)
        if kind == "relu":
            return self.relu(node)
        if kind in ("relu6", "clamp"):
            return self.clamp(node, kind, *clamp_bounds(node, None))
        if kind == "maxpool":
            k = _arg(node, 1, "kernel_size")
            if _pair(_arg(node, 4, "dilation", 1)) != (1, 1):
                raise self.refuse(node, "is dilated")
            return self.pool(node, "max", k, _arg(node, 2, "stride") or k, _arg(node, 3, "padding", 0), bool(_arg(node, 5, "ceil_mode", False)))
        if kind is not None:
            raise self.refuse(node)
        if name in ("add", "iadd", "add_", "sub", "isub", "sub_"):
            if _arg(node, 2, "alpha", 1) != 1:
                raise self.refuse(node, "scales its second operand (alpha)")
            return (lambda a, W: a[0] + a[1]) if name.startswith(("add", "iadd")) else (lambda a, W: a[0] - a[1])
        if name in ("mul", "imul", "mul_"):
            return lambda a, W: a[0] * a[1]
        if name in ("floordiv",):
            return lambda a, W: a[0] // a[1]
        if name in ("cat", "concat"):
            dim = _arg(node, 1, "dim", 0)
            return lambda a, W: jnp.concatenate(a[0], axis=dim)
        if name == "flatten":
            return self.flatten(_arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if name in ("view", "reshape", "_unsafe_view"):
            return lambda a, W: a[0].reshape(tuple(int(v) for v in (a[1] if isinstance(a[1], (tuple, list)) else a[1:])))
        if name in ("mean", "mean.dim"):
            dims, keep = _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False))
            return lambda a, W: a[0].mean(axis=tuple(dims) if isinstance(dims, (list, tuple)) else dims, keepdims=keep)
        if name == "adaptive_avg_pool2d":
            return self.adaptive_avg(node, _arg(node, 1, "output_size"))
        if name == "avg_pool2d":
            k = _arg(node, 1, "kernel_size")
            return self.pool(node, "avg", k, _arg(node, 2, "stride") or k, _arg(node, 3, "padding", 0), bool(_arg(node, 4, "ceil_mode", False)))
        if name in ("conv2d",):
            w = self.constant(node.args[1])
            b = self.constant(_arg(node, 2, "bias"))
            return self.conv(node, w, b, _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0), _arg(node, 5, "dilation", 1),
                             _arg(node, 6, "groups", 1))
        if name == "linear":
            return self.linear(node, self.constant(node.args[1]), self.constant(_arg(node, 2, "bias")))
        if name in ("size", "sym_size"):
            dim = _arg(node, 1, "dim")
            return lambda a, W: a[0].shape if dim is None else a[0].shape[dim]
        if name == "getattr" and node.args[1] == "shape":
            return lambda a, W: a[0].shape
        if name == "getitem" and not isinstance(node.args[0], torch.fx.Node) or (
                name == "getitem" and shape_of(node.args[0]) is None):
            return lambda a, W: a[0][a[1]]
        if name in ("contiguous", "clone", "dropout", "alias", "detach"):
            return lambda a, W: a[0]
        raise self.refuse(node)

    def constant(self, value):
        """A weight given to a function call: a parameter or buffer the graph reads (get_attr)."""
        if value is None:
            return None
        if isinstance(value, torch.fx.Node) and value.op == "get_attr":
            return _fetch(self.gm, value.target).detach()
        raise ConfigError(f"a convolution or linear call takes its weight from graph node {value}, not a parameter: "
                          "weights computed in forward cannot be secret-shared as the model's weights")


def _fetch(gm: nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def export_jax(model: nn.Module, input_shape: tuple[int, ...], relu_mode: str = "gather") -> ExportedModel:
    """``model`` (any traceable classifier) as a JAX function of the images and its weights."""
    if relu_mode not in RELU_MODES:
        raise ConfigError(f"relu mode must be {' or '.join(RELU_MODES)}, not '{relu_mode}'")
    gm = trace(model, input_shape)
    ex = _Exporter(gm, relu_mode)
    steps: list[tuple[str, Step | None, object]] = []  # (node name, step, its arguments as graph nodes)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            steps.append((node.name, None, "input"))
        elif node.op == "output":
            steps.append((node.name, None, "output"))
        elif node.op == "get_attr":  # a weight read by a function call: shared unless a conv/linear call folds it in
            if all(u.op != "call_module" and op_name(u) in ("conv2d", "linear") for u in node.users):
                steps.append((node.name, lambda a, W: None, ()))
            else:
                idx = ex.add_weight(_fetch(gm, node.target))
                steps.append((node.name, lambda a, W, idx=idx: W[idx], ()))
        else:
            step = ex.module_step(node) if node.op == "call_module" else ex.function_step(node)
            steps.append((node.name, step, node.args))
    for i, (name, _, pattern) in enumerate(steps):  # a global pool no linear layer took the 1/(H·W) of
        if name in ex.pool_scale:
            steps[i] = (name, lambda a, W: a[0].mean(axis=(2, 3), keepdims=True), pattern)
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]

    def fn(x, *W):
        env: dict[str, object] = {}

        def value(v):
            if isinstance(v, torch.fx.Node):
                return env[v.name]
            if isinstance(v, (list, tuple)):
                return type(v)(value(u) for u in v)
            return v

        for name, step, pattern in steps:
            if pattern == "input":
                env[name] = x
            elif pattern == "output":
                return env[output.name]
            else:
                env[name] = step(list(value(pattern)), W)
        raise ConfigError("the traced model has no output")

    return ExportedModel(fn, ex.weights, ex.compared)


@contextlib.contextmanager
def captured_output():
    """Capture what native code writes to file descriptors 1 and 2 (SPU's profile log)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        box: dict[str, str] = {}
        try:
            yield box
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            box["text"] = tmp.read().decode("utf-8", "replace")


OP_LINE = re.compile(r"- (pphlo\.\w+), executed (\d+) times, duration ([\d.e+-]+)s, send bytes (\d+) recv bytes (\d+), "
                     r"send actions (\d+), recv actions (\d+)")
EXEC_LINE = re.compile(r"SPU execution \S+ completed.*?execution took ([\d.e+-]+)s")
LINK_LINE = re.compile(r"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")


def parse_profile(text: str) -> dict:
    """Per-op and total traffic of one party from SPU's profile log."""
    ops = {}
    for m in OP_LINE.finditer(text):
        ops[m.group(1)] = {"count": int(m.group(2)), "seconds": float(m.group(3)), "send_bytes": int(m.group(4)),
                           "recv_bytes": int(m.group(5)), "send_actions": int(m.group(6))}
    link = LINK_LINE.search(text)
    if link is None:
        raise ConfigError("SPU printed no traffic profile: is enable_pphlo_profile supported by this SPU build?")
    nonlinear = sum(v["send_bytes"] + v["recv_bytes"] for k, v in ops.items() if k in NONLINEAR_OPS)
    linear = sum(v["send_bytes"] + v["recv_bytes"] for k, v in ops.items() if k not in NONLINEAR_OPS)
    executions = [float(m.group(1)) for m in EXEC_LINE.finditer(text)]
    return {"ops": ops, "execution_seconds": max(executions) if executions else None, "send_bytes": int(link.group(1)), "recv_bytes": int(link.group(2)),
            "total_bytes": int(link.group(1)) + int(link.group(2)), "rounds": int(link.group(3)),
            "nonlinear_bytes": nonlinear, "linear_bytes": linear}


def runtime_config(protocol: str):
    import spu.libspu as libspu

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    kind = {"semi2k": libspu.ProtocolKind.SEMI2K, "cheetah": libspu.ProtocolKind.CHEETAH, "aby3": libspu.ProtocolKind.ABY3}[protocol]
    cfg = libspu.RuntimeConfig(protocol=kind, field=libspu.FieldType.FM64)
    cfg.enable_pphlo_profile = True
    return cfg


def run_secure(exported: ExportedModel, images: np.ndarray, protocol: str = "semi2k", weights: str = "secret") -> dict:
    """Run ``exported`` on ``images`` under SPU's simulator; logits, timing and traffic (party 0)."""
    import jax
    import spu.utils.simulation as ppsim

    if weights not in ("secret", "public"):
        raise ConfigError(f"weights must be secret or public, not '{weights}'")
    config = runtime_config(protocol)  # validates the protocol name
    sim = ppsim.Simulator(PROTOCOLS[protocol], config)
    if weights == "secret":
        fn, args = exported.fn, [images, *exported.weights]
    else:
        w = [jax.numpy.asarray(v) for v in exported.weights]
        fn, args = (lambda x: exported.fn(x, *w)), [images]
    t0 = time.time()
    with captured_output() as log:
        logits = np.asarray(ppsim.sim_jax(sim, fn)(*args))
    seconds = time.time() - t0
    prof = parse_profile(log["text"])
    return {"logits": logits, "seconds": seconds, "seconds_per_image": seconds / len(images),
            "execution_seconds_per_image": (prof["execution_seconds"] or seconds) / len(images), **prof}


def measure_secure(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor, protocol: str = "semi2k",
                   weights: str = "secret", relu_mode: str = "gather") -> tuple[dict, dict]:
    """Secure inference of ``model`` on the images ``x`` beside the plaintext model: the result
    (top-1 agreement, logit error, time, traffic) and SPU's per-operation traffic."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    model = model.eval()
    exported = export_jax(model, shape, relu_mode)
    with torch.no_grad():
        plain = model(x)
    plain = (plain.logits if hasattr(plain, "logits") else plain[0] if isinstance(plain, (tuple, list)) else plain).numpy()
    res = run_secure(exported, x.numpy().astype(np.float32), protocol, weights)
    acc = count(model, shape)
    return {"protocol": protocol, "weights": weights, "relu_mode": relu_mode, "images": int(len(x)),
            "relus": acc.relus, "comparisons": acc.comparisons, "compared_elements_per_image": exported.relu_elements,
            "same_top1_as_plaintext": bool((res["logits"].argmax(1) == plain.argmax(1)).all()),
            "max_abs_logit_error": float(np.abs(res["logits"] - plain).max()),
            "seconds_per_image": res["seconds_per_image"], "execution_seconds_per_image": res["execution_seconds_per_image"],
            "total_bytes": res["total_bytes"], "nonlinear_bytes": res["nonlinear_bytes"], "linear_bytes": res["linear_bytes"],
            "rounds": res["rounds"], "per_op": res["ops"],
            "note": "party 0's traffic (sent + received); seconds_per_image includes SPU compilation, "
                    "execution_seconds_per_image is SPU's own execution time"}, res["ops"]


def secure_infer(run_dir: str, protocol: str = "semi2k", images: int = 4, weights: str = "secret",
                 relu_mode: str = "gather") -> dict:
    """Secure inference of a PI run's model on its first test images; the result is also saved
    in ``RUN/secure/<protocol>-<relu_mode>-<weights>.json``."""

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    if images < 1:
        raise ConfigError("--images must be at least 1")
    model, shape, data_cfg = load_pi_model(run_dir)
    out, ops = measure_secure(model, shape, data_cfg.load().x_test[:images], protocol, weights, relu_mode)
    run = RunDir(run_dir)
    atomic_write_json(run.path / "secure" / f"{protocol}-{relu_mode}-{weights}.json", out)
    run.write_table(f"secure-{protocol}-{relu_mode}-{weights}",
                    [{"op": k, **v} for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["send_bytes"])],
                    title=f"SPU {protocol} per-operation traffic ({relu_mode} ReLU, {weights} weights)")
    return out
