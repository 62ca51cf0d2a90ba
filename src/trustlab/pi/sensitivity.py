"""ReLU sensitivity of each ReLU layer, and the allocation of a global ReLU budget to layers.

Two measures, for two uses:

* :func:`pruning_sensitivity` — SENet stage 1. SENet relates a layer's ReLU sensitivity
  *inversely* to its pruning sensitivity, measured as the density a layer keeps when the model
  is sparsified to a small global density. Choice made here (the paper trains a sparse proxy
  model; we prune the trained teacher once): global magnitude pruning of all convolution
  weights at ``density`` (default 0.1); the ReLU layer's sensitivity is ``1 − d`` of the last
  convolution executed before it, normalised to sum to one. A layer whose convolution keeps
  few weights (prunable) is one whose output needs its non-linearity more.
* :func:`removal_sensitivity` — the cost of linearising one whole ReLU layer (replacing it by
  the identity) in the trained model: the mean KL divergence from the original model's
  predictions on a batch of training images, plus the accuracy drop. Used to rank layers for
  layer-drop (DeepReDuce-style) and for shallow models.

:func:`allocate` splits a global budget over layers in proportion to a weight, capped by each
layer's size (water-filling), with exact integer totals.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.pi.accounting import is_relu_layer
from trustlab.pi.probe import probe


def relu_to_preceding_conv(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, str]:
    """ReLU layer name -> name of the last Conv2d executed before it (execution order, by hooks)."""
    order: list[tuple[str, bool]] = []
    probe(model, input_shape, lambda n, m: (lambda mod, i, o, n=n, relu=is_relu_layer(m): order.append((n, relu)))
          if isinstance(m, nn.Conv2d) or is_relu_layer(m) else None)
    out, last_conv = {}, None
    for name, relu in order:
        if relu:
            if last_conv is None:
                raise ConfigError(f"ReLU '{name}' has no convolution before it: pruning sensitivity needs one")
            out[name] = last_conv
        else:
            last_conv = name
    return out


def pruning_sensitivity(model: nn.Module, input_shape: tuple[int, ...], density: float = 0.1) -> dict[str, float]:
    if not 0 < density < 1:
        raise ConfigError(f"proxy density must be in (0, 1), not {density}")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    mags = torch.cat([m.weight.detach().abs().flatten() for m in convs.values()])
    k = max(1, int(round(density * mags.numel())))
    threshold = torch.topk(mags, k, sorted=True).values[-1]
    kept = {n: float((m.weight.detach().abs() >= threshold).float().mean()) for n, m in convs.items()}
    raw = {relu: 1.0 - kept[conv] for relu, conv in relu_to_preceding_conv(model, input_shape).items()}
    total = sum(raw.values()) or 1.0
    return {n: v / total for n, v in raw.items()}


@torch.no_grad()
def removal_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str] | None = None,
                        batch_size: int = 500) -> dict[str, dict[str, float]]:
    """Per ReLU layer: KL(original ‖ layer linearised) and accuracy drop on ``(x, y)``."""
    was = model.training
    model.eval()
    names = layers if layers is not None else [n for n, m in model.named_modules() if n and is_relu_layer(m)]

    def predict() -> torch.Tensor:
        return torch.cat([F.log_softmax(model(x[i : i + batch_size]), 1) for i in range(0, len(x), batch_size)])

    base = predict()
    base_acc = float((base.argmax(1) == y).float().mean())
    out = {}
    for name in names:
        handle = model.get_submodule(name).register_forward_hook(lambda mod, i, o: i[0])  # identity instead of ReLU
        try:
            logp = predict()
        finally:
            handle.remove()
        kl = float(F.kl_div(logp, base, log_target=True, reduction="batchmean"))
        out[name] = {"kl": kl, "acc_drop": base_acc - float((logp.argmax(1) == y).float().mean())}
    model.train(was)
    return out


def allocate(capacity: dict[str, int], weight: dict[str, float], budget: int) -> dict[str, int]:
    """Split ``budget`` units over layers ∝ ``weight``, never above ``capacity``; sums exactly."""
    total = sum(capacity.values())
    if budget <= 0 or budget >= total:
        raise ConfigError(f"budget {budget:,} must be between 1 and {total - 1:,} (the model has {total:,})")
    floor_w = 1e-3 * max(max(weight.values()), 1e-12)
    w = {n: max(weight.get(n, 0.0), floor_w) for n in capacity}
    alloc = {n: 0.0 for n in capacity}
    active, remaining = set(capacity), float(budget)
    while active:
        wsum = sum(w[n] for n in active)
        share = {n: remaining * w[n] / wsum for n in active}
        capped = [n for n in active if share[n] >= capacity[n]]
        if not capped:
            alloc.update(share)
            break
        for n in capped:
            alloc[n] = capacity[n]
            remaining -= capacity[n]
            active.remove(n)
    counts = {n: min(capacity[n], math.floor(v)) for n, v in alloc.items()}
    short = budget - sum(counts.values())
    by_remainder = sorted((n for n in capacity if counts[n] < capacity[n]), key=lambda n: (counts[n] - alloc[n], n))
    for n in by_remainder[:short]:
        counts[n] += 1
    assert sum(counts.values()) == budget
    return counts
