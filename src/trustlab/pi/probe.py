"""One forward pass on a zero image with forward hooks: how trustlab inspects any model."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

Hook = Callable[[nn.Module, tuple, torch.Tensor], object]


def probe(model: nn.Module, input_shape: tuple[int, ...], hook_for: Callable[[str, nn.Module], Hook | None]) -> None:
    """Run ``model`` once (eval mode, no grad) on zeros of ``input_shape`` with ``hook_for(name, module)``
    attached to every named module it returns a hook for; the mode is restored and hooks removed."""
    handles = []
    for name, module in model.named_modules():
        fn = hook_for(name, module) if name else None
        if fn is not None:
            handles.append(module.register_forward_hook(fn))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
