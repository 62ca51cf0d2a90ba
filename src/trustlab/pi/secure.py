"""Secure inference of trustlab PI models on SecretFlow SPU, with SPU's own traffic counters.

Export. A model is traced with ``torch.fx`` (partial-ReLU layers kept as leaves), every
BatchNorm that follows a convolution is folded into it (:func:`trustlab.pi.merge.fold_bn`),
and the graph becomes a JAX function: convolution, linear, average pooling, residual
additions, flatten, ReLU, partial ReLU. Any other layer is refused with its name and place.

Partial ReLU, two forms:

* ``gather`` (default) — the mask is public, so the kept positions are gathered, compared and
  put back (by gathering with the inverse permutation: SPU executes gathers with public
  indices about 50× faster than the equivalent scatter): only kept elements are compared,
  and the comparison traffic scales with the kept fraction.
* ``naive`` — ``x·(1−m) + relu(x)·m``: every element is still compared, so it saves almost
  nothing (SPU issue 701); offered to show exactly that.

Weights. ``secret`` (default) secret-shares the weights as inputs, which models the real
setting where the server's model must stay hidden; ``public`` compiles them in as constants,
the lower bound on linear cost. SPU 0.9.5 refuses ``VIS_PRIVATE`` inputs owned by one party
in its 2PC I/O, so weights private to the server alone are not offered.

Measurement. SPU logs per-operation send/recv bytes and actions when
``enable_pphlo_profile`` is set (and its execution time apart from compilation);
:func:`run_secure` captures those lines and splits the
traffic into non-linear operations (comparisons and the multiplexer multiply of ReLU) and
linear ones (convolution, dot, additions). The average pool's 1/(H·W) is folded into the
following linear layer so that every multiply left is a ReLU multiplexer.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.accounting import count
from trustlab.pi.load import load_pi_model
from trustlab.pi.masks import PartialReLU
from trustlab.pi.merge import fold_bn
from trustlab.pi.probe import probe
from trustlab.runs import RunDir, atomic_write_json

RELU_MODES = ("gather", "naive")  # ReLU on the kept positions only, or on every element times the mask
PROTOCOLS = {"semi2k": 2, "cheetah": 2, "aby3": 3}
NONLINEAR_OPS = {"pphlo.less", "pphlo.greater", "pphlo.less_equal", "pphlo.greater_equal", "pphlo.select",
                 "pphlo.maximum", "pphlo.minimum", "pphlo.multiply"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PartialReLU) or super().is_leaf_module(m, qualname)


@dataclass
class ExportedModel:
    """A JAX forward function ``fn(x, *weights)`` and its weights (numpy, in order)."""

    fn: object
    weights: list[np.ndarray]
    relu_elements: int  # elements compared per image


def export_jax(model: nn.Module, input_shape: tuple[int, ...], relu_mode: str = "gather") -> ExportedModel:
    import jax.numpy as jnp
    from jax import lax

    if relu_mode not in RELU_MODES:
        raise ConfigError(f"relu mode must be {' or '.join(RELU_MODES)}, not '{relu_mode}'")
    model = model.eval()
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    shapes = _shapes(model, input_shape)
    users: dict[str, int] = {}
    for n in graph.nodes:
        for a in n.all_input_nodes:
            users[a.name] = users.get(a.name, 0) + 1

    weights: list[np.ndarray] = []
    ops: list[tuple] = []  # (node name, kind, args, weight indices, extra)

    def add_weight(t: torch.Tensor) -> int:
        weights.append(np.asarray(t.detach().double().numpy(), dtype=np.float32))
        return len(weights) - 1

    folded: dict[str, str] = {}  # bn node name -> conv node name it was folded into
    conv_params: dict[str, tuple] = {}
    pool_scale: dict[str, float] = {}
    relu_elements = 0
    nodes = list(graph.nodes)
    for n in nodes:
        if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d):
            conv = modules[n.target]
            if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
                raise ConfigError(f"layer '{n.target}' ({conv}) is not supported for secure inference: grouped/dilated convolution")
            bn = None
            follower = [u for u in n.users]
            if len(follower) == 1 and follower[0].op == "call_module" and isinstance(modules[follower[0].target], nn.BatchNorm2d):
                bn = modules[follower[0].target]
                folded[follower[0].name] = n.name
            w, b = fold_bn(conv, bn)
            conv_params[n.name] = (add_weight(w), add_weight(b), conv.stride, conv.padding)
    for n in nodes:
        if n.op == "placeholder":
            ops.append((n.name, "input", [], ()))
        elif n.op == "output":
            ops.append((n.name, "output", [a.name for a in n.all_input_nodes], ()))
        elif n.op == "call_module":
            m = modules[n.target]
            src = [a.name for a in n.all_input_nodes]
            if isinstance(m, nn.Conv2d):
                ops.append((n.name, "conv", src, conv_params[n.name]))
            elif isinstance(m, nn.BatchNorm2d):
                if n.name in folded:
                    ops.append((n.name, "same", src, ()))
                else:
                    w, b = fold_bn(nn.Conv2d(m.num_features, m.num_features, 1, bias=False).requires_grad_(False), m)
                    scale = torch.diagonal(w[:, :, 0, 0])
                    ops.append((n.name, "affine", src, (add_weight(scale.view(1, -1, 1, 1)), add_weight(b.view(1, -1, 1, 1)))))
            elif isinstance(m, nn.ReLU):
                relu_elements += int(np.prod(shapes[n.target]))
                ops.append((n.name, "relu", src, ()))
            elif isinstance(m, PartialReLU):
                flat_mask = (m.mask.expand(m.shape) if m.granularity == "channel" else m.mask).flatten().numpy()
                keep, drop = np.flatnonzero(flat_mask), np.flatnonzero(~flat_mask)
                relu_elements += len(keep) if relu_mode == "gather" else int(np.prod(m.shape))
                inverse = np.argsort(np.concatenate([keep, drop]))
                ops.append((n.name, "prelu", src, (keep, drop, inverse, flat_mask.astype(np.float32))))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                if m.output_size not in (1, (1, 1)):
                    raise ConfigError(f"layer '{n.target}': only global average pooling is supported")
                h, w_ = shapes[n.target + ".__in__"][-2:] if n.target + ".__in__" in shapes else (1, 1)
                pool_scale[n.name] = 1.0 / (h * w_)
                ops.append((n.name, "sumpool", src, ()))
            elif isinstance(m, nn.Linear):
                scale = 1.0
                chain = n.all_input_nodes[0]
                while chain.name not in pool_scale and chain.op == "call_function" and chain.all_input_nodes:
                    chain = chain.all_input_nodes[0]
                if chain.name in pool_scale:
                    scale = pool_scale.pop(chain.name)
                b = m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)
                ops.append((n.name, "linear", src, (add_weight(m.weight.detach().T * scale), add_weight(b))))
            elif isinstance(m, (nn.Identity, nn.Sequential)) and len(list(m.children())) == 0:
                ops.append((n.name, "same", src, ()))
            else:
                raise ConfigError(f"layer '{n.target}' ({type(m).__name__}) is not supported for secure inference")
        elif n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target))
            src = [a.name for a in n.all_input_nodes]
            if name in ("add", "iadd"):
                ops.append((n.name, "add", src, ()))
            elif name == "flatten":
                ops.append((n.name, "flatten", src, ()))
            else:
                raise ConfigError(f"operation '{name}' at node '{n.name}' is not supported for secure inference")
        else:
            raise ConfigError(f"graph node '{n.name}' ({n.op}) is not supported for secure inference")
    if pool_scale:  # a pool not followed by a linear layer: scale explicitly
        for i, op in enumerate(ops):
            if op[0] in pool_scale:
                ops[i] = (op[0], "meanpool", op[2], (pool_scale[op[0]],))

    def fn(x, *w):
        env = {}
        for name, kind, src, extra in ops:
            a = [env[s] for s in src]
            if kind == "input":
                env[name] = x
            elif kind == "output":
                return a[0]
            elif kind == "conv":
                wi, bi, stride, pad = extra
                y = lax.conv_general_dilated(a[0], w[wi], tuple(stride), [(pad[0], pad[0]), (pad[1], pad[1])],
                                             dimension_numbers=("NCHW", "OIHW", "NCHW"))
                env[name] = y + w[bi].reshape(1, -1, 1, 1)
            elif kind == "affine":
                env[name] = a[0] * w[extra[0]] + w[extra[1]]
            elif kind == "same":
                env[name] = a[0]
            elif kind == "relu":
                env[name] = jnp.where(a[0] > 0, a[0], 0.0)
            elif kind == "prelu":
                keep, drop, inverse, m_ = extra
                flat = a[0].reshape(a[0].shape[0], -1)
                if relu_mode == "gather":
                    # gather kept and dropped positions, ReLU the kept ones, undo the permutation with
                    # one more gather (SPU runs gathers with public indices fast; a scatter is ~50x slower)
                    kept = flat[:, keep]
                    flat = jnp.concatenate([jnp.where(kept > 0, kept, 0.0), flat[:, drop]], axis=1)[:, inverse]
                else:
                    flat = flat * (1.0 - m_) + jnp.where(flat > 0, flat, 0.0) * m_
                env[name] = flat.reshape(a[0].shape)
            elif kind == "sumpool":
                env[name] = a[0].sum(axis=(2, 3), keepdims=True)
            elif kind == "meanpool":
                env[name] = a[0].mean(axis=(2, 3), keepdims=True)
            elif kind == "linear":
                env[name] = a[0] @ w[extra[0]] + w[extra[1]]
            elif kind == "add":
                env[name] = a[0] + a[1]
            elif kind == "flatten":
                env[name] = a[0].reshape(a[0].shape[0], -1)
        raise ConfigError("the traced model has no output")

    return ExportedModel(fn, weights, relu_elements)


def _shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple]:
    """Output shape of every module, and input shape under ``NAME.__in__``."""
    out: dict[str, tuple] = {}

    def hook_for(n: str, m: nn.Module):
        def hook(mod, i, o):
            out[n] = tuple(o.shape[1:])
            if i and torch.is_tensor(i[0]):
                out[n + ".__in__"] = tuple(i[0].shape[1:])
        return hook

    probe(model, input_shape, hook_for)
    return out


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


def secure_infer(run_dir: str, protocol: str = "semi2k", images: int = 4, weights: str = "secret",
                 relu_mode: str = "gather") -> dict:
    """Secure inference of a PI run's model on its first test images; the result is also saved
    in ``RUN/secure/<protocol>-<relu_mode>-<weights>.json``."""

    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    if images < 1:
        raise ConfigError("--images must be at least 1")
    model, shape, data_cfg = load_pi_model(run_dir)
    data = data_cfg.load()
    x = data.x_test[:images]
    exported = export_jax(model, shape, relu_mode)
    with torch.no_grad():
        plain = model(x).numpy()
    res = run_secure(exported, x.numpy().astype(np.float32), protocol, weights)
    same_top1 = bool((res["logits"].argmax(1) == plain.argmax(1)).all())
    out = {"protocol": protocol, "weights": weights, "relu_mode": relu_mode, "images": int(len(x)),
           "relus": count(model, shape).relus, "compared_elements_per_image": exported.relu_elements,
           "same_top1_as_plaintext": same_top1, "max_abs_logit_error": float(np.abs(res["logits"] - plain).max()),
           "seconds_per_image": res["seconds_per_image"], "execution_seconds_per_image": res["execution_seconds_per_image"],
           "total_bytes": res["total_bytes"],
           "nonlinear_bytes": res["nonlinear_bytes"], "linear_bytes": res["linear_bytes"], "rounds": res["rounds"],
           "per_op": res["ops"], "note": "party 0's traffic (sent + received); seconds_per_image includes SPU compilation, "
                   "execution_seconds_per_image is SPU's own execution time"}
    run = RunDir(run_dir)
    atomic_write_json(run.path / "secure" / f"{protocol}-{relu_mode}-{weights}.json", out)
    run.write_table(f"secure-{protocol}-{relu_mode}-{weights}",
                    [{"op": k, **v} for k, v in sorted(res["ops"].items(), key=lambda kv: -kv[1]["send_bytes"])],
                    title=f"SPU {protocol} per-operation traffic ({relu_mode} ReLU, {weights} weights)")
    return out
