"""Dual fusion enhancement: blur the link between one caption and one training image from both sides.

* Image side: each training image is mixed with a random auxiliary image,
  ``x0 ← (1 − w) · x0 + w · aux`` (``w`` = ``image_weight``, default 0.1). The auxiliary pool is
  a seeded sample of another dataset of trustlab's registry (default Fashion-MNIST, grey
  converted to RGB and resized), so the mixed-in content is never a training image.
* Text side: the caption's token states are mixed with those of ``"with <class>"``,
  ``s ← (1 − w) · s + w · s_class`` (``text_weight``, default 0.5), or (``text_mode`` =
  ``append``) the class words are appended to the caption before encoding. Empty captions
  (classifier-free guidance) stay empty.

Both apply at training only; sampling uses the plain captions. The weights are a
:class:`~trustlab.replication.config.DualFusion`; this module applies them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trustlab.data import load_dataset
from trustlab.data.registry import get_spec
from trustlab.replication.config import DualFusion

POOL_SIZE = 1024


def aux_pool(fusion: DualFusion, size: int, seed: int = 0) -> torch.Tensor | None:
    """The auxiliary images [POOL_SIZE, 3, size, size] in [-1, 1], or None when image fusion is off."""
    if not fusion.image_weight:
        return None
    d = load_dataset(fusion.aux, get_spec(fusion.aux).splits[0])
    pick = torch.randperm(len(d.images), generator=torch.Generator().manual_seed(seed))[:POOL_SIZE]
    x = d.images[pick].float()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 255) / 127.5 - 1


def fuse_images(fusion: DualFusion, x0: torch.Tensor, pool: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Each image mixed with a random auxiliary image of ``pool`` (unchanged when image fusion is off)."""
    if pool is None:
        return x0
    aux = pool[torch.randint(len(pool), (len(x0),), generator=generator)].to(x0)
    return (1 - fusion.image_weight) * x0 + fusion.image_weight * aux


def fuse_captions(fusion: DualFusion, captions: list[str], classes: list[str]) -> list[str]:
    """Captions with their class words appended (``append`` mode); empty ones stay empty."""
    if not fusion.text_weight or fusion.text_mode != "append":
        return captions
    return [f"{c} {class_phrase(k)}" if c else c for c, k in zip(captions, classes)]


def fuse_states(fusion: DualFusion, states: torch.Tensor, mask: torch.Tensor, captions: list[str], classes: list[str],
                encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states mixed with those of ``with <class>`` (``mix`` mode); empty captions untouched."""
    if not fusion.text_weight or fusion.text_mode != "mix":
        return states, mask
    cls_states, cls_mask = encoder.encode([class_phrase(k) for k in classes])
    keep = torch.tensor([bool(c) for c in captions]).view(-1, 1, 1)
    w = fusion.text_weight * keep.to(states.dtype)
    return (1 - w) * states + w * cls_states.to(states), mask | (cls_mask.bool() & keep.view(-1, 1)).to(mask.dtype)


def class_phrase(name: str) -> str:
    """``with <class words>`` for a class name such as ``Smileys & Emotion``."""
    return "with " + name.replace("_", " ").replace("&", "and").lower()


__all__ = ["aux_pool", "class_phrase", "fuse_captions", "fuse_images", "fuse_states"]
