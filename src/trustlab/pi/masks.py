"""Partial-ReLU layers: ReLU on kept positions, identity elsewhere.

``PartialReLU`` replaces an ``nn.ReLU`` whose activation map has shape (C, H, W). Its boolean
``mask`` buffer marks where the ReLU stays: per pixel (C, H, W) or per channel (C, 1, 1). The
mask is a buffer, so it travels in checkpoints (as booleans in safetensors) and a model with
masks exports its exact kept positions (:func:`export_masks`).

While a mask is being searched, the layer carries real-valued ``scores`` and runs in one of
two modes:

* ``topk`` (SENet stage 2): the forward pass keeps exactly the ``keep`` highest-scoring
  positions; gradients reach the scores through a sigmoid straight-through estimator. The
  ReLU count is exact at every step.
* ``soft`` (SNL): the output is ``x + α·(relu(x) − x)`` with ``α = scores`` (SNL's
  ``α·relu(x) + (1−α)·x``), trained with an L1 penalty on α.

:meth:`PartialReLU.freeze` turns the scores into the boolean mask (top ``keep``) and drops them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.pi.methods import DEFAULT_GRANULARITY, GRANULARITIES
from trustlab.pi.probe import probe


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean tensor shaped like ``scores`` with exactly ``k`` True at the largest entries.

    Ties are broken by position (stable), so the count is exact whatever the values.
    """
    flat = scores.detach().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


class PartialReLU(nn.Module):
    def __init__(self, shape: tuple[int, int, int], granularity: str = DEFAULT_GRANULARITY):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be 'pixel' or 'channel', not '{granularity}'")
        self.shape = tuple(shape)
        self.granularity = granularity
        c, h, w = self.shape
        self.register_buffer("mask", torch.ones((c, h, w) if granularity == "pixel" else (c, 1, 1), dtype=torch.bool))
        self.scores: nn.Parameter | None = None
        self.mode = "mask"
        self.keep = 0

    @property
    def unit_size(self) -> int:
        """ReLUs per mask entry: 1 per pixel, H·W per channel."""
        return 1 if self.granularity == "pixel" else self.shape[1] * self.shape[2]

    @property
    def units(self) -> int:
        return self.mask.numel()

    def start_search(self, mode: str, init: torch.Tensor, keep: int | None = None) -> None:
        if mode not in ("topk", "soft"):
            raise ConfigError(f"unknown mask search mode '{mode}'")
        self.mode = mode
        self.scores = nn.Parameter(init.detach().clone().reshape(self.mask.shape).float())
        self.keep = int(keep) if keep is not None else self.units

    def freeze(self, keep: int | None = None) -> None:
        """Fix the mask to the top ``keep`` scores (default: the search's count) and drop scores."""
        if self.scores is not None:
            self.mask.copy_(topk_mask(self.scores, self.keep if keep is None else int(keep)))
        self.scores = None
        self.mode = "mask"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "soft":
            m = self.scores
        elif self.mode == "topk":
            hard = topk_mask(self.scores, self.keep).to(x.dtype)
            soft = torch.sigmoid(self.scores)
            m = hard + soft - soft.detach() if self.training else hard
        else:
            m = self.mask.to(x.dtype)
        return x + m * (torch.relu(x) - x)

    def kept_relus(self) -> int:
        if self.mode == "topk":
            return self.keep * self.unit_size
        if self.mode == "soft":
            return int((self.scores.detach() > 1e-2).sum()) * self.unit_size
        return int(self.mask.sum()) * self.unit_size

    def extra_repr(self) -> str:
        return f"shape={self.shape}, granularity={self.granularity}, mode={self.mode}"


def activation_shapes(model: nn.Module, input_shape: tuple[int, ...], kinds=(nn.ReLU, PartialReLU)) -> dict[str, tuple]:
    """Output shape (without batch) of every module of ``kinds``, by one forward pass."""
    shapes: dict[str, tuple] = {}
    probe(model, input_shape, lambda n, m: (lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
          if isinstance(m, kinds) else None)
    return shapes


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def install_partial_relus(model: nn.Module, input_shape: tuple[int, int, int], granularity: str = DEFAULT_GRANULARITY) -> list[str]:
    """Replace every ``nn.ReLU`` of ``model`` by an all-kept ``PartialReLU``; return their names."""
    shapes = activation_shapes(model, input_shape, kinds=(nn.ReLU,))
    for name, shape in shapes.items():
        if len(shape) != 3:
            raise ConfigError(f"ReLU '{name}' acts on a {len(shape)}-d activation; partial ReLUs need (C, H, W) maps")
        _set_module(model, name, PartialReLU(shape, granularity).to(next(model.parameters()).device))
    return list(shapes)


def partial_relus(model: nn.Module) -> dict[str, PartialReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PartialReLU)}


def export_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> boolean mask (C,H,W or C,1,1) of the kept ReLU positions."""
    return {n: m.mask.clone() for n, m in partial_relus(model).items()}


def kept_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> (N, 3) long tensor of the (c, h, w) indices where a ReLU is applied."""
    out = {}
    for n, m in partial_relus(model).items():
        full = m.mask.expand(m.shape) if m.granularity == "channel" else m.mask
        out[n] = full.nonzero()
    return out
