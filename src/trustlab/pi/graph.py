"""The model as a graph: every non-linear call site of any traceable ``nn.Module``.

Private-inference cost lives in the non-linear operations, and a user's model calls them in
many ways: an ``nn.ReLU`` module per place, one ``nn.ReLU`` module called at several places
(torchvision's ResNet block), ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` inside ``forward``
(the CIFAR ResNet code of the SNL-era repositories), in-place forms of each. Forward hooks on
``nn.ReLU`` modules see only some of these, and see a shared module as one place. So trustlab
traces the model once and works on the graph:

* :func:`trace` — ``torch.fx`` symbolic tracing first; a model that fx cannot trace (Python
  control flow on shapes, as in Hugging Face models) goes through ``torch.export`` instead,
  and the exported graph is *lifted* back to module calls: every ATen call that a standard
  leaf module (convolution, BatchNorm, linear, activation, pooling, …) made becomes a call of
  that module again, so both routes give the same kind of graph and BatchNorm still trains.
  Only the first tensor output is kept (the logits of a ``ModelOutput`` or a tuple).
* :func:`sites` — every non-linear *call site*, in execution order, with its output shape:
  ReLU in every form (``clamp(min=0)`` and ``clamp_min(0)`` included: the sites masks act on), ReLU6 and clamp (one
  comparison per bound and element),
  max-pooling (``k²−1`` comparisons per output), and the non-linearities that ReLU-based PI
  cost models do not cover (GELU, SiLU, softmax, and comparisons in other words: ``maximum``, ``where``,
  ``gt``, ``topk``, …), named rather than dropped.
* :func:`split_sites` — a copy of the model in which every ReLU call site is its own
  ``nn.ReLU`` module, named after the site; masks (:mod:`trustlab.pi.masks`), sensitivity and
  distillation then address sites by name.

Site names. A ReLU module called once keeps its module path (``layer1.0.relu1``), so names
and checkpoints of models made of such modules are unchanged; the k-th call of a shared module
is ``PATH_k`` (``layer1.0.relu`` and ``layer1.0.relu_2``); a functional call is named after the
module whose ``forward`` made it and the function (``layer1.0.relu``, then ``layer1.0.relu_2``, …).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from trustlab.errors import ConfigError

aten = torch.ops.aten

# What each kind of call site is, by module class or by function (torch-level and ATen-level).
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, aten.relu.default, aten.relu_.default}
RELU_METHODS = {"relu", "relu_"}
CLAMP_FUNCTIONS = {F.relu6, F.hardtanh, torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max, aten.hardtanh.default,
                   aten.hardtanh_.default, aten.clamp.default, aten.clamp_.default, aten.clamp_min.default,
                   aten.clamp_max.default}
CLAMP_METHODS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_"}
MAXPOOL_FUNCTIONS = {F.max_pool2d, aten.max_pool2d.default, aten.max_pool2d_with_indices.default}
CONV_FUNCTIONS = {F.conv2d, aten.conv2d.default}
LINEAR_FUNCTIONS = {F.linear, aten.linear.default}
UNCOVERED_MODULES = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax, nn.LeakyReLU, nn.ELU, nn.SELU,
                     nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.PReLU, nn.LayerNorm, nn.GroupNorm,
                     nn.AdaptiveMaxPool2d, nn.MultiheadAttention, nn.Threshold, nn.CELU, nn.GLU, nn.RReLU, nn.LogSigmoid,
                     nn.Softsign, nn.Softmin, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.MaxPool1d, nn.MaxPool3d)
UNCOVERED_NAMES = {"gelu", "silu", "sigmoid", "tanh", "softmax", "_softmax", "log_softmax", "_log_softmax", "leaky_relu",
                   "elu", "selu", "hardswish", "hardsigmoid", "mish", "softplus", "prelu", "layer_norm", "group_norm",
                   "native_layer_norm", "exp", "sqrt", "rsqrt", "erf", "adaptive_max_pool2d",
                   "scaled_dot_product_attention", "sign", "abs",
                   # comparisons in other words: each is secure comparisons that no ReLU cost model prices
                   "maximum", "minimum", "fmax", "fmin", "max", "min", "amax", "amin", "argmax", "argmin", "where",
                   "threshold", "gt", "lt", "ge", "le", "topk", "sort", "floor", "ceil", "round", "max_pool1d",
                   "max_pool3d", "celu", "glu", "rrelu", "log_sigmoid", "softsign", "softmin", "tanhshrink", "hardshrink",
                   "softshrink"}

# Standard leaf modules whose single ATen call the export route lifts back to a module call.
LIFTABLE = {nn.Conv2d: {"conv2d"}, nn.Linear: {"linear"}, nn.BatchNorm2d: {"batch_norm"}, nn.BatchNorm1d: {"batch_norm"},
            nn.ReLU: {"relu", "relu_"}, nn.ReLU6: {"hardtanh", "hardtanh_"}, nn.Hardtanh: {"hardtanh", "hardtanh_"},
            nn.MaxPool2d: {"max_pool2d"}, nn.AvgPool2d: {"avg_pool2d"}, nn.AdaptiveAvgPool2d: {"adaptive_avg_pool2d"},
            nn.Flatten: {"flatten"}, nn.Dropout: {"dropout", "dropout_"}, nn.Identity: {"alias"}}


@dataclass(frozen=True)
class Site:
    """One place where the model computes a non-linear function of its activations."""

    name: str  # unique; a ReLU site's name is also its module's name after :func:`split_sites`
    kind: str  # relu | relu6 | clamp | maxpool | partial-relu | an uncovered op (gelu, softmax, ...)
    call: str  # how the code called it: nn.ReLU, F.relu, Tensor.relu_, aten.relu, ...
    node: str  # the fx node
    shape: tuple[int, ...]  # output shape per example
    comparisons: int  # secure comparisons per example (0 where the cost model does not cover the op)

    @property
    def covered(self) -> bool:
        return self.kind in ("relu", "partial-relu", "relu6", "clamp", "maxpool")

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Tracer(torch.fx.Tracer):
    """fx tracer that records, on every node, the module whose ``forward`` created it (its scope),
    and keeps trustlab's own layers (partial ReLUs, merged convolutions) as single calls."""

    def __init__(self):
        super().__init__()
        self.scopes: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return bool(getattr(m, "pi_leaf", False)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.scopes.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.scopes.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["scope"] = self.scopes[-1]
        return node


def _first_error_line(e: Exception) -> str:
    """The error's first line, and where in the model's code it arose (the last frame outside torch and trustlab)."""
    import traceback

    text = str(e).strip().splitlines()
    line = (f"{type(e).__name__}: {text[0]}" if text else type(e).__name__)[:200]
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not any(part in f.filename for part in ("/torch/", "/trustlab/", "<eval_with_key>"))]
    if frames:
        f = frames[-1]
        line += f" at {f.filename.rsplit('/', 1)[-1]}:{f.lineno}" + (f" `{f.line.strip()[:80]}`" if f.line else "")
    return line


def _example(model: nn.Module, input_shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    return torch.zeros(batch, *input_shape, device=p.device if p is not None else "cpu")


def _fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(model, graph, model.__class__.__name__)


def _innermost(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _export_trace(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` (batch dimension dynamic), lifted back to calls of the model's own leaf modules."""
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), strict=False)
    exported = ep.module()
    with warnings.catch_warnings():  # copying a graph deep-copies the export's pytree specs, which warn
        warnings.simplefilter("ignore", FutureWarning)
        graph = copy.deepcopy(exported.graph)  # a graph without an owning module takes calls of the model's modules
    graph._codegen = torch.fx.graph.CodeGen()  # plain forward(x): the pytree wrapping of the export is dropped
    modules = dict(model.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_module":  # the export's input-guard function: the lifted graph takes any batch size
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        path = _innermost(node)
        node.meta["scope"] = path
        module = modules.get(path)
        op = getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")
        lift = next((ops for cls, ops in LIFTABLE.items() if type(module) is cls), None)
        if module is not None and lift and op in lift:
            scope = path.rpartition(".")[0]
            with graph.inserting_before(node):
                new = graph.call_module(path, (node.args[0],))
            new.meta.update(node.meta, scope=scope)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif module is not None and list(module.children()) == []:
            node.meta["scope"] = path.rpartition(".")[0]
    gm = torch.fx.GraphModule(_Root(model, exported), graph, model.__class__.__name__)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


class _Root(nn.Module):
    """Attribute lookup for building the lifted graph: the user's modules by path, and the
    export's own constants (lifted tensors) where the model has no such attribute."""

    def __init__(self, model: nn.Module, exported: nn.Module):
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_exported", exported)

    def get_submodule(self, target: str) -> nn.Module:
        try:
            return self._model.get_submodule(target)
        except AttributeError:
            return self._exported.get_submodule(target)

    def __getattr__(self, name: str):
        for src in (self.__dict__["_model"], self.__dict__["_exported"]):
            if hasattr(src, name):
                return getattr(src, name)
        raise AttributeError(name)


def _first_tensor_output(gm: torch.fx.GraphModule) -> None:
    """Make the graph return one tensor: ``logits`` of a dict-like output, else the first tensor."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    value = out.args[0]
    if isinstance(value, torch.fx.Node):
        return
    if isinstance(value, dict):
        value = value.get("logits", next(iter(value.values()), None))
    elif isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.fx.Node)), None)
    if not isinstance(value, torch.fx.Node):
        raise ConfigError("the model returns no tensor: trustlab needs logits (a tensor, a tuple starting with one, or a dict with 'logits')")
    out.args = (value,)  # the other outputs' nodes stay: dropping them could drop an in-place update
    gm.recompile()


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """The model as an fx graph of module and function calls, every node's output shape recorded
    (``node.meta['tensor_meta']``, for a batch of 2) and its scope (``node.meta['scope']``).

    fx first, then ``torch.export``; a model neither can trace, or that rejects ``input_shape``,
    is a :class:`~trustlab.errors.ConfigError` naming the construct and where it is.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}")
    was = model.training
    model.eval()
    x = _example(model, input_shape)
    try:
        _check_runs(model, x, input_shape)
        try:
            gm = _fx_trace(model)
            _first_tensor_output(gm)
            _propagate(gm, x)
            gm.meta["route"] = "fx"
        except ConfigError:
            raise
        except Exception as fx_error:  # noqa: BLE001 - any tracing failure sends the model to torch.export
            try:
                with _quiet():
                    gm = _export_trace(model, x)
                _first_tensor_output(gm)
                _propagate(gm, x)
            except ConfigError:
                raise
            except Exception as export_error:  # noqa: BLE001
                raise ConfigError(f"cannot trace {type(model).__name__}: torch.fx failed ({_first_error_line(fx_error)}) "
                                  f"and torch.export failed ({_first_error_line(export_error)}); rewrite that construct "
                                  "so that it does not depend on tensor values") from None
            gm.meta["route"] = "export"
    finally:
        model.train(was)
    gm.train(was)
    return gm


@contextlib.contextmanager
def _quiet():
    """torch.export logs the partial graph of a model it cannot export: the error message says enough."""
    import logging

    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _propagate(gm: torch.fx.GraphModule, x: torch.Tensor) -> None:
    """Record every node's output shape (ShapeProp prints a traceback of its own on failure: kept quiet)."""
    with contextlib.redirect_stderr(io.StringIO()), torch.no_grad():
        ShapeProp(gm).propagate(x)


def _check_runs(model: nn.Module, x: torch.Tensor, input_shape: tuple[int, ...]) -> None:
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001 - the user's model rejected the input
        raise ConfigError(f"the model cannot take input {'x'.join(map(str, input_shape))} ({_first_error_line(e)})") from None


def shape_of(node: torch.fx.Node) -> tuple[int, ...] | None:
    """Output shape of ``node`` without the batch dimension (None for non-tensor nodes)."""
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(int(d) for d in meta.shape[1:])


def op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "_opname", None) or getattr(node.target, "__name__", str(node.target))


def describe(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """What the code called at ``node``: ``nn.ReLU``, ``F.relu``, ``Tensor.relu_``, ``aten.relu``, ..."""
    if node.op == "call_module":
        return f"nn.{type(modules[node.target]).__name__}" if type(modules[node.target]).__module__.startswith("torch.nn") \
            else type(modules[node.target]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if isinstance(node.target, torch._ops.OpOverload):
        return f"aten.{op_name(node)}"
    mod = getattr(node.target, "__module__", "") or ""
    prefix = "F" if mod.endswith("functional") else "torch" if mod.startswith("torch") else mod
    return f"{prefix}.{op_name(node)}"


def relu_input(node: torch.fx.Node) -> torch.fx.Node:
    return node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))


def is_inplace(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    return op_name(node).endswith("_") or bool(node.kwargs.get("inplace")) or (
        node.target in (F.relu, F.hardtanh, F.relu6) and len(node.args) > 1 and node.args[-1] is True)


def clamp_bounds(node: torch.fx.Node, module: nn.Module | None) -> tuple:
    if module is not None:
        return (module.min_val, module.max_val)
    if node.target is F.relu6:
        return (0.0, 6.0)
    if node.target in (F.hardtanh, aten.hardtanh.default, aten.hardtanh_.default):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return (lo, hi)
    name = op_name(node).rstrip("_")
    if name in ("clamp_min", "clamp_max"):  # one bound, the second argument
        bound = node.args[1] if len(node.args) > 1 else node.kwargs.get("min", node.kwargs.get("max"))
        return (bound, None) if name == "clamp_min" else (None, bound)
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return (lo, hi)


def classify(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The kind of non-linear site ``node`` is, or None for a linear (or shape) operation."""
    module = modules.get(node.target) if node.op == "call_module" else None
    if node.op == "call_module":
        if getattr(module, "pi_kind", None):
            return module.pi_kind
        if isinstance(module, nn.ReLU):
            return "relu"
        if isinstance(module, (nn.ReLU6, nn.Hardtanh)):
            return "relu6" if (module.min_val, module.max_val) == (0.0, 6.0) else "clamp"
        if isinstance(module, nn.MaxPool2d):
            return "maxpool"
        if isinstance(module, UNCOVERED_MODULES):
            return type(module).__name__.lower()
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    name = op_name(node)
    if node.target in RELU_FUNCTIONS or (node.op == "call_method" and name in RELU_METHODS):
        return "relu"
    if node.target in CLAMP_FUNCTIONS or (node.op == "call_method" and name in CLAMP_METHODS):
        bounds = tuple(clamp_bounds(node, None))
        if bounds in ((0, None), (0.0, None)):
            return "relu"  # x.clamp(min=0) is a ReLU written another way: a site like any other
        return "relu6" if bounds in ((0, 6), (0.0, 6.0)) else "clamp"
    if node.target in MAXPOOL_FUNCTIONS or (node.op == "call_method" and name == "max_pool2d"):
        return "maxpool"
    if name.rstrip("_") in UNCOVERED_NAMES or name in UNCOVERED_NAMES:
        return name.strip("_")
    return None


def _pool_window(node: torch.fx.Node, module: nn.Module | None) -> int:
    if module is not None:
        k = module.kernel_size
    else:
        k = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
    k = (k, k) if isinstance(k, int) else tuple(k)
    return int(k[0]) * int(k[-1])


def comparisons(kind: str, node: torch.fx.Node, modules: dict[str, nn.Module], shape: tuple[int, ...]) -> int:
    """Secure comparisons per example at a site: one per ReLU, two per clamp with both bounds,
    ``k²−1`` per max-pool output; 0 for what ReLU cost models do not cover."""
    n = 1
    for d in shape:
        n *= d
    module = modules.get(node.target) if node.op == "call_module" else None
    if kind == "relu":
        return n
    if kind == "partial-relu":
        return int(module.kept_relus())
    if kind in ("relu6", "clamp"):
        return n * sum(b is not None for b in clamp_bounds(node, module))
    if kind == "maxpool":
        return n * (_pool_window(node, module) - 1)
    return 0


def sites(gm: torch.fx.GraphModule) -> list[Site]:
    """Every non-linear call site of a traced model (:func:`trace`), in execution order."""
    modules = dict(gm.named_modules())
    out, taken = [], {n for n in modules if n}
    used: set[str] = set()
    for node in gm.graph.nodes:
        kind = classify(node, modules)
        if kind is None:
            continue
        shape = shape_of(node) or ()
        out.append(Site(_site_name(node, modules, taken, used), kind, describe(node, modules), node.name, shape,
                        comparisons(kind, node, modules, shape)))
    return out


def _site_name(node: torch.fx.Node, modules: dict[str, nn.Module], taken: set[str], used: set[str]) -> str:
    """A unique, stable name: a module's path for its first call, ``PATH_k`` for its k-th; a function
    call ``SCOPE.function`` (``_k`` again when repeated). Never the path of another existing module."""
    if node.op == "call_module":
        base = node.target
    else:
        scope = node.meta.get("scope", "")
        fn = op_name(node).rstrip("_") or "op"
        fn = {"hardtanh": "relu6", "max_pool2d_with_indices": "max_pool2d"}.get(fn, fn)
        base = f"{scope}.{fn}" if scope else fn
    name, k = base, 1
    while name in used or (name != base or node.op != "call_module") and name in taken:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def relu_sites(gm: torch.fx.GraphModule) -> list[Site]:
    return [s for s in sites(gm) if s.kind in ("relu", "partial-relu")]


def split_sites(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[torch.fx.GraphModule, list[Site]]:
    """A traced copy of ``model`` in which every ReLU call site is its own ``nn.ReLU`` module named
    after the site (in-place calls become out-of-place ones, and later readers of the input read
    the ReLU's output), and those sites in execution order. ``model`` itself is not changed."""
    gm = trace(copy.deepcopy(model), input_shape)
    modules = dict(gm.named_modules())
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    names = []
    for site in sites(gm):
        if site.kind != "relu":
            continue
        node = next(n for n in gm.graph.nodes if n.name == site.node)
        source, inplace = relu_input(node), is_inplace(node, modules)
        put_module(gm, site.name, nn.ReLU())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(site.name, (source,))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        if inplace:  # the code reads its input after an in-place ReLU: it means the ReLU's output
            for user in list(source.users):
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(source, new)
        gm.graph.erase_node(node)
        names.append(site)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, names


def put_module(gm: nn.Module, name: str, module: nn.Module) -> None:
    """Replace (or add) the submodule at ``name``, creating plain parent containers where the path is new."""
    parent = gm
    *path, leaf = name.split(".")
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    setattr(parent, leaf, module)


__all__ = ["Site", "clamp_bounds", "classify", "op_name", "put_module", "relu_sites", "shape_of", "sites", "split_sites", "trace"]
