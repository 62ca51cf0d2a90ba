"""Dual fusion enhancement: blur the link between one caption and one training image from both sides.

* Image side: each training image is mixed with a random auxiliary image,
  ``x0 ← (1 − w) · x0 + w · aux`` (``w`` = ``image_weight``, default 0.1). The auxiliary pool is
  a seeded sample of another dataset of trustlab's registry (default Fashion-MNIST, grey
  converted to RGB and resized), so the mixed-in content is never a training image.
* Text side: the caption's token states are mixed with those of ``"with <class>"``,
  ``s ← (1 − w) · s + w · s_class`` (``text_weight``, default 0.5), or (``text_mode`` =
  ``append``) the class words are appended to the caption before encoding. Empty captions
  (classifier-free guidance) stay empty.

Both apply at training only; sampling uses the plain captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trustlab.data import load_dataset
from trustlab.data.registry import get_spec
from trustlab.errors import ConfigError

POOL_SIZE = 1024


@dataclass(frozen=True)
class DualFusion:
    image_weight: float = 0.0
    aux: str = "fashion-mnist"
    text_weight: float = 0.0
    text_mode: str = "mix"

    def validate(self) -> None:
        if not 0 <= self.image_weight < 1 or not 0 <= self.text_weight <= 1:
            raise ConfigError("--fusion-image must lie in [0, 1) and --fusion-text in [0, 1]")
        if self.text_mode not in ("mix", "append"):
            raise ConfigError(f"--fusion-text-mode is mix or append, not '{self.text_mode}'")
        if self.image_weight:
            get_spec(self.aux)

    def pool(self, size: int, seed: int = 0) -> torch.Tensor | None:
        """The auxiliary images [POOL_SIZE, 3, size, size] in [-1, 1], or None when image fusion is off."""
        if not self.image_weight:
            return None

        d = load_dataset(self.aux, get_spec(self.aux).splits[0])
        pick = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(seed))[:POOL_SIZE]
        x = d.images[pick].float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x.clamp(0, 255) / 127.5 - 1

    def images(self, x0: torch.Tensor, pool: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        if pool is None:
            return x0
        aux = pool[torch.randint(len(pool), (len(x0),), generator=generator)].to(x0)
        return (1 - self.image_weight) * x0 + self.image_weight * aux

    def captions(self, captions: list[str], classes: list[str]) -> list[str]:
        """Captions with their class words appended (``append`` mode); empty ones stay empty."""
        if not self.text_weight or self.text_mode != "append":
            return captions
        return [f"{c} {class_phrase(k)}" if c else c for c, k in zip(captions, classes)]

    def states(self, states: torch.Tensor, mask: torch.Tensor, captions: list[str], classes: list[str],
               encoder) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states mixed with those of ``with <class>`` (``mix`` mode); empty captions untouched."""
        if not self.text_weight or self.text_mode != "mix":
            return states, mask
        cls_states, cls_mask = encoder.encode([class_phrase(k) for k in classes])
        keep = torch.tensor([bool(c) for c in captions]).view(-1, 1, 1)
        w = self.text_weight * keep.to(states.dtype)
        return (1 - w) * states + w * cls_states.to(states), mask | (cls_mask.bool() & keep.view(-1, 1)).to(mask.dtype)


def class_phrase(name: str) -> str:
    """``with <class words>`` for a class name such as ``Smileys & Emotion``."""
    return "with " + name.replace("_", " ").replace("&", "and").lower()


__all__ = ["DualFusion", "class_phrase"]
