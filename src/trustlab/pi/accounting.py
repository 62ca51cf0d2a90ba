"""ReLU, MAC and parameter accounting for any ``nn.Module``, by forward hooks.

One canonical counter, because published ReLU counts differ with the architecture variant:
count the model you actually run. Conventions (those of SNL/SENet/DeepReDuce):

* ReLUs: output elements of each ``nn.ReLU`` per input image; for a partial-ReLU layer (any
  module with a ``kept_relus()`` method) only the kept positions.
* MACs: convolutions ``out_elements · cin/groups · kh · kw``; linear ``in · out``. BatchNorm,
  pooling and residual additions are not counted (BN folds into the convolution).
* Parameters: each module's own parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from trustlab.pi.probe import probe


@dataclass
class LayerCount:
    name: str
    kind: str
    output: tuple[int, ...]
    relus: int
    macs: int
    params: int


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

    def relu_layers(self) -> list[LayerCount]:
        return [layer for layer in self.layers if layer.kind in ("ReLU", "PartialReLU")]

    def to_dict(self) -> dict:
        return {"relus": self.relus, "macs": self.macs, "params": self.params,
                "layers": [asdict(layer) for layer in self.layers]}


def is_relu_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU) or hasattr(m, "kept_relus")


def count(model: nn.Module, input_shape: tuple[int, ...]) -> Accounting:
    """Count ReLUs, MACs and parameters of ``model`` on one input of ``input_shape`` (C,H,W)."""
    rows: list[LayerCount] = []

    def hook(name: str):
        def fn(mod: nn.Module, inp, out) -> None:
            shape = tuple(out.shape[1:])
            per_image = int(out[0].numel())
            relus = macs = 0
            if hasattr(mod, "kept_relus"):
                relus = int(mod.kept_relus())
            elif isinstance(mod, nn.ReLU):
                relus = per_image
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                macs = per_image * (mod.in_channels // mod.groups) * kh * kw
            elif isinstance(mod, nn.Linear):
                macs = mod.in_features * mod.out_features
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            kind = "PartialReLU" if hasattr(mod, "kept_relus") else type(mod).__name__
            rows.append(LayerCount(name, kind, shape, relus, macs, params))
        return fn

    probe(model, input_shape, lambda name, mod: hook(name) if is_relu_layer(mod) or isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) else None)
    return Accounting(rows)
