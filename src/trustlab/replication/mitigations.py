"""Standard replication mitigations (Somepalli et al. 2023), composable, for training and sampling.

Caption-side ones rewrite the caption string before encoding; ``embedding-noise`` adds
Gaussian noise to the text states. Training applies them per example and per step (seeded by
the step, so a resumed run draws the same); sampling applies the inference-time ones to the
prompts.

Three more act on the model's own memorization signal (:mod:`trustlab.replication.memorization`):

==================  =========  ==================================================================
name                when       what
==================  =========  ==================================================================
caption-replace     train      with probability p, the caption becomes random vocabulary words
word-add            both       with probability p, a random vocabulary word is inserted
word-repeat         both       with probability p, a random word of the caption is repeated
embedding-noise     both       Gaussian noise of std sigma on the text states
wen-filter          train      the share p of each batch with the largest text-conditional noise
                               prediction (Wen et al.'s magnitude) is left out of the loss
wen-optimize        inference  the text states optimised (``steps`` Adam steps of rate ``lr``) to
                               lower the magnitude at the first step (Wen et al.); a gated prompt
                               stops once it falls below the gate
opposite-guidance   inference  guidance reversed (scale −g) for the first share ``delay`` of the
                               steps, then as usual (Jain et al., CVPR 2025: out of the
                               attraction basin before guidance pulls)
==================  =========  ==================================================================

At sampling any of them can be *gated*: applied only to the prompts a detector flags
(``sampling.Gate``), so the others sample exactly as without mitigation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from trustlab.errors import ConfigError

TRAIN = ("caption-replace", "word-add", "word-repeat", "embedding-noise", "wen-filter")
INFERENCE = ("word-add", "word-repeat", "embedding-noise", "wen-optimize", "opposite-guidance")


@dataclass(frozen=True)
class Mitigations:
    """Which mitigations are on; ``p`` is the per-caption probability (for ``wen-filter``, the share of each
    batch left out), ``sigma`` the noise std, ``steps`` and ``lr`` those of ``wen-optimize``, ``delay`` the
    share of the sampling steps ``opposite-guidance`` reverses."""

    names: tuple[str, ...] = ()
    p: float = 0.1
    sigma: float = 0.1
    steps: int = 10
    lr: float = 0.05
    delay: float = 0.1

    def check(self, allowed: tuple[str, ...], where: str) -> "Mitigations":
        bad = [n for n in self.names if n not in allowed]
        if bad:
            raise ConfigError(f"mitigation '{bad[0]}' does not apply at {where}: use {', '.join(allowed)}")
        if not 0 <= self.p <= 1 or self.sigma < 0:
            raise ConfigError("mitigation probability must lie in [0, 1] and sigma be >= 0")
        if self.steps < 1 or self.lr <= 0 or not 0 <= self.delay <= 1:
            raise ConfigError("--mitigation-steps must be >= 1, --mitigation-lr > 0 and --mitigation-delay in [0, 1]")
        return self

    def captions(self, captions: list[str], vocabulary: list[str], rng: random.Random) -> list[str]:
        out = []
        for c in captions:
            words = c.split()
            if "caption-replace" in self.names and rng.random() < self.p:
                words = rng.choices(vocabulary, k=max(1, len(words)))
            if "word-add" in self.names and rng.random() < self.p:
                words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
            if "word-repeat" in self.names and words and rng.random() < self.p:
                i = rng.randrange(len(words))
                words.insert(i, words[i])
            out.append(" ".join(words))
        return out

    def states(self, states: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # noqa: F821
        """``states`` plus float32 Gaussian noise drawn on the generator's device (tensor methods only: this
        module stays torch-free, so that configurations can check mitigation names without torch)."""
        if "embedding-noise" not in self.names or not self.sigma:
            return states
        noise = states.new_empty(states.shape, device=generator.device).float().normal_(generator=generator)
        return states + self.sigma * noise.to(states)


def parse(text: str | None, p: float = 0.1, sigma: float = 0.1, **settings) -> Mitigations:
    """Comma-separated names (``none`` or empty: no mitigation) and their settings (``steps``, ``lr``, ``delay``)."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip() and n.strip() != "none")
    return Mitigations(names, p, sigma, **settings)


def vocabulary(captions: list[str]) -> list[str]:
    """The words of the training captions (the pool random words are drawn from)."""
    return sorted({w for c in captions for w in c.split()})


__all__ = ["INFERENCE", "Mitigations", "TRAIN", "parse", "vocabulary"]
