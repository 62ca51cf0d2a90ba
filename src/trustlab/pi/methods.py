"""The ReLU-reduction methods by name: the one table the CLI, the run loader and the reductions read.

It imports nothing heavy, so the CLI builds one command per method at start-up. Each method's
implementation is a class in :mod:`trustlab.pi.reductions`, registered under the same name; a run
of method ``m`` is a run folder of kind ``pi-m``.
"""

from __future__ import annotations

from dataclasses import dataclass

GRANULARITIES = ("pixel", "channel")  # a mask entry per activation, or per channel (shared over positions)
DEFAULT_GRANULARITY = GRANULARITIES[0]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str  # the CLI command's help
    granularities: tuple[str, ...] = (DEFAULT_GRANULARITY,)

    @property
    def kind(self) -> str:
        return f"pi-{self.name}"


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("senet", "SENet: sensitivity-based per-layer budgets, learned ReLU locations, distillation.", GRANULARITIES),
    MethodInfo("snl", "SNL baseline: α-mask with L1 penalty, global top-budget binarisation, KD fine-tuning."),
    MethodInfo("layerdrop", "Layer-drop baseline (DeepReDuce-style): linearise whole ReLU layers, least critical first."),
)}
