"""ReLU, MAC and parameter accounting for any traceable ``nn.Module``, read off its graph.

One canonical counter, because published ReLU counts differ with the architecture variant:
count the model you actually run. The model is traced once (:func:`trustlab.pi.graph.trace`),
so every ReLU *call site* counts, whatever its form (``nn.ReLU``, ``F.relu``, ``Tensor.relu_``,
a module called twice). Conventions (those of SNL/SENet/DeepReDuce):

* ReLUs: output elements of each ReLU site per input example; for a partial-ReLU layer only
  the kept positions.
* Comparisons: what a secure protocol compares per example: one per ReLU, two per ReLU6 or
  two-sided clamp, ``k²−1`` per max-pool output. Non-linearities that ReLU cost models do
  not cover (GELU, SiLU, softmax, layer norm, …) are listed with 0 and a note, never dropped.
* MACs: convolutions ``out_elements · cin/groups · kh · kw``; linear ``out_elements · in``.
  BatchNorm, pooling and residual additions are not counted (BN folds into the convolution).
* Parameters: each layer's own parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.fx
import torch.nn as nn

from trustlab.pi.graph import CONV_FUNCTIONS, LINEAR_FUNCTIONS, Site, shape_of, sites, trace

SITE_KINDS = {"relu": "ReLU", "partial-relu": "PartialReLU", "relu6": "ReLU6", "clamp": "Clamp", "maxpool": "MaxPool"}
UNCOVERED_NOTE = "not covered by ReLU-based PI cost models"


@dataclass
class LayerCount:
    name: str
    kind: str
    output: tuple[int, ...]
    relus: int
    macs: int
    params: int
    comparisons: int = 0
    note: str = ""


@dataclass
class Accounting:
    layers: list[LayerCount]

    @property
    def relus(self) -> int:
        return sum(layer.relus for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def comparisons(self) -> int:
        return sum(layer.comparisons for layer in self.layers)

    @property
    def uncovered(self) -> list[LayerCount]:
        """Non-linear sites that ReLU cost models do not price (GELU, softmax, ...)."""
        return [layer for layer in self.layers if layer.note == UNCOVERED_NOTE]

    def relu_layers(self) -> list[LayerCount]:
        return [layer for layer in self.layers if layer.kind in ("ReLU", "PartialReLU")]

    def to_dict(self) -> dict:
        return {"relus": self.relus, "comparisons": self.comparisons, "macs": self.macs, "params": self.params,
                "uncovered": sorted({layer.kind for layer in self.uncovered}),
                "layers": [asdict(layer) for layer in self.layers]}


def is_relu_layer(m: nn.Module) -> bool:
    """A module that is one ReLU site of a split model (:func:`trustlab.pi.graph.split_sites`)."""
    return isinstance(m, nn.ReLU) or hasattr(m, "kept_relus")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _linear_row(node: torch.fx.Node, modules: dict[str, nn.Module]) -> LayerCount | None:
    """A convolution or linear layer (module or function call) with its MACs, else None."""
    out = shape_of(node)
    if out is None:
        return None
    if node.op == "call_module":
        m = modules[node.target]
        params = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            return LayerCount(node.target, "Conv2d", out, 0, _numel(out) * (m.in_channels // m.groups) * kh * kw, params)
        if isinstance(m, nn.Linear):
            return LayerCount(node.target, "Linear", out, 0, _numel(out) * m.in_features, params)
        if isinstance(m, nn.BatchNorm2d):
            return LayerCount(node.target, "BatchNorm2d", out, 0, 0, params)
        return None
    if node.op == "call_function" and node.target in CONV_FUNCTIONS | LINEAR_FUNCTIONS:
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        w = shape_of(weight) if isinstance(weight, torch.fx.Node) else None
        if w is None:
            return None
        w_full = tuple(weight.meta["tensor_meta"].shape)
        per_out = _numel(w_full[1:])  # cin/groups·kh·kw for a convolution, in_features for a linear layer
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        params = _numel(w_full) + (_numel(bias.meta["tensor_meta"].shape) if isinstance(bias, torch.fx.Node) else 0)
        scope = node.meta.get("scope", "")
        kind = "Conv2d" if node.target in CONV_FUNCTIONS else "Linear"
        return LayerCount(f"{scope}.{node.name}" if scope else node.name, kind, out, 0, _numel(out) * per_out, params)
    return None


def _site_row(site: Site, modules: dict[str, nn.Module]) -> LayerCount:
    kind = SITE_KINDS.get(site.kind, site.kind)
    relus = site.comparisons if site.kind == "partial-relu" else site.elements if site.kind == "relu" else 0
    params = sum(p.numel() for p in modules[site.name].parameters(recurse=False)) if site.name in modules else 0
    return LayerCount(site.name, kind, site.shape, relus, 0, params, site.comparisons,
                      "" if site.covered else UNCOVERED_NOTE)


def count_graph(gm: torch.fx.GraphModule) -> Accounting:
    """Per-layer counts of a traced model (:func:`trustlab.pi.graph.trace`), in execution order."""
    modules = dict(gm.named_modules())
    by_node = {s.node: s for s in sites(gm)}
    rows = []
    for node in gm.graph.nodes:
        row = _site_row(by_node[node.name], modules) if node.name in by_node else _linear_row(node, modules)
        if row is not None:
            rows.append(row)
    return Accounting(rows)


def count(model: nn.Module, input_shape: tuple[int, ...]) -> Accounting:
    """Count ReLUs, comparisons, MACs and parameters of ``model`` on one input of ``input_shape`` (C,H,W)."""
    return count_graph(trace(model, input_shape))
