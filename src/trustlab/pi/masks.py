"""Partial-ReLU layers: ReLU on kept positions, identity elsewhere.

``PartialReLU`` replaces one ReLU call site (:mod:`trustlab.pi.graph`) whose activation has
shape (C, ...) per example: a (C, H, W) map or a (C,) feature vector. Its boolean ``mask``
buffer marks where the ReLU stays: per position (the site's shape) or per channel (C, 1, …). The
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
from trustlab.pi.graph import put_module, split_sites
from trustlab.pi.methods import DEFAULT_GRANULARITY, GRANULARITIES


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
    pi_leaf = True  # traced as one call (trustlab.pi.graph)
    pi_kind = "partial-relu"

    def __init__(self, shape: tuple[int, ...], granularity: str = DEFAULT_GRANULARITY):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be 'pixel' or 'channel', not '{granularity}'")
        if not shape:
            raise ConfigError("a partial ReLU needs an activation with at least one dimension per example")
        self.shape = tuple(int(d) for d in shape)
        self.granularity = granularity
        mask_shape = self.shape if granularity == "pixel" else (self.shape[0],) + (1,) * (len(self.shape) - 1)
        self.register_buffer("mask", torch.ones(mask_shape, dtype=torch.bool))
        self.scores: nn.Parameter | None = None
        self.mode = "mask"
        self.keep = 0

    @property
    def unit_size(self) -> int:
        """ReLUs per mask entry: 1 per position, the positions of a channel (H·W) per channel."""
        return 1 if self.granularity == "pixel" else self.mask.new_ones(self.shape).numel() // self.shape[0]

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


def install_partial_relus(model: nn.Module, input_shape: tuple[int, ...], granularity: str = DEFAULT_GRANULARITY
                          ) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with an all-kept ``PartialReLU`` at every ReLU call site (one per site,
    also where one module is called at several places, or ``F.relu`` is called), and the site names."""
    gm, relus = split_sites(model, input_shape)
    device = next(iter(gm.parameters()), torch.empty(0)).device
    for site in relus:
        put_module(gm, site.name, PartialReLU(site.shape, granularity).to(device))
    return gm, [site.name for site in relus]


def partial_relus(model: nn.Module) -> dict[str, PartialReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PartialReLU)}


def export_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Site name -> boolean mask (the site's shape, or C,1,... per channel) of the kept ReLU positions."""
    return {n: m.mask.clone() for n, m in partial_relus(model).items()}


def kept_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    """Site name -> (N, d) long tensor of the indices (c, h, w for a map) where a ReLU is applied."""
    out = {}
    for n, m in partial_relus(model).items():
        full = m.mask.expand(m.shape) if m.granularity == "channel" else m.mask
        out[n] = full.nonzero()
    return out
