"""Distillation from the all-ReLU teacher (SENet stage 3, and the fine-tuning of every baseline).

Loss = CE(student, y) + T²·KL(teacher_T ‖ student_T) + β·PRAM, where PRAM (post-ReLU
activation mismatch) compares, at every ReLU layer, the student's and the teacher's
activation maps after the (partial) ReLU, each flattened and L2-normalised per image:
``mean over layers and images of ‖a_s/‖a_s‖ − a_t/‖a_t‖‖₂``. The normalisation makes the term
independent of activation scale, so one β works across layers. ``beta=0`` gives plain KD
(CE + KL), which is how SNL's public code fine-tunes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DistillationLoss:
    """A ``loss_fn(model, x, y)`` for :func:`trustlab.train.fit`."""

    def __init__(self, teacher: nn.Module, layers: list[str], temperature: float = 4.0, beta: float = 0.0,
                 extra=None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.layers = layers if beta > 0 else []
        self.T = temperature
        self.beta = beta
        self.extra = extra  # optional callable(model) -> tensor added to the loss (e.g. SNL's L1 on α)
        self._layout = torch.contiguous_format

    def _capture(self, model: nn.Module, acts: dict) -> list:
        core = model.module if hasattr(model, "module") else model
        return [core.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
                for n in self.layers]

    def _follow(self, model: nn.Module, x: torch.Tensor) -> None:
        """Put the teacher where the training loop put the student and its batch (device and layout).

        The loop chooses the device and memory layout for the model it trains; the teacher is
        only known to this loss, so the loss moves it, at its first use on a new device.
        """
        core = model.module if hasattr(model, "module") else model
        channels_last = any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                            for p in core.parameters())
        layout = torch.channels_last if channels_last else torch.contiguous_format
        first = next(self.teacher.parameters(), None)
        if first is not None and (first.device != x.device or self._layout != layout):
            self.teacher.to(x.device, memory_format=layout)
            self._layout = layout

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._follow(model, x)
        s_acts: dict[str, torch.Tensor] = {}
        t_acts: dict[str, torch.Tensor] = {}
        handles = self._capture(model, s_acts) + self._capture(self.teacher, t_acts)
        try:
            logits = model(x)
            with torch.no_grad():
                t_logits = self.teacher(x)
        finally:
            for h in handles:
                h.remove()
        loss = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits / self.T, 1), F.log_softmax(t_logits / self.T, 1), log_target=True,
                      reduction="batchmean")
        loss = loss + self.T**2 * kl
        if self.beta > 0:
            pram = torch.stack([
                (F.normalize(s_acts[n].flatten(1), dim=1) - F.normalize(t_acts[n].flatten(1), dim=1)).norm(dim=1).mean()
                for n in self.layers]).mean()
            loss = loss + self.beta * pram
        if self.extra is not None:
            core = model.module if hasattr(model, "module") else model
            loss = loss + self.extra(core)
        return loss
