"""Captioned training sets for the diffusion testbed.

Replication grows with unique captions, with few images and with duplicated images, so all
three are options: a seeded subset of ``n`` images from the ``emoji`` registry dataset (or any
folder of images with a ``captions.jsonl`` of ``{"file": ..., "caption": ...}`` lines),
captions per image (``unique``, the default) or per class (``class``), and a share of the
images repeated ``duplicate_times`` times. Images are RGB in [-1, 1] at ``size``×``size``.

A copy detector can only tell copies from look-alikes if the training images are not
look-alikes of each other, so a registry dataset drops its near-duplicate sources before the
subset is drawn: emoji keep one skin tone per base emoji (the base one), and of any two
images whose flip-invariant pixel similarity exceeds ``near_duplicate`` the later is dropped.

Duplication follows the literature's schemes (Somepalli et al. 2023): ``dup_both`` repeats
image and caption; ``dup_image`` repeats the image under other captions (captions of pool
images left out of the subset), a positive control where the image, not the prompt, is what
is repeated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trustlab.data import load_dataset
from trustlab.data.readers import SKIN_TONES
from trustlab.data.registry import get_spec
from trustlab.errors import ConfigError, DataError
from trustlab.files import on_white, read_image_rgba, read_text
from trustlab.replication.captions import generalize
from trustlab.replication.config import CaptionDataConfig
from trustlab.replication.metrics import pixel_similarity_mirrored


@dataclass
class CaptionedImages:
    """Images [N, 3, S, S] in [-1, 1], one caption and class index per image.

    ``origin[i]`` is the distinct image row ``i`` shows: duplication appends copies after the
    distinct images, so rows ``0 .. distinct - 1`` are the distinct images themselves.
    """

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    classes: list[str]
    source: str
    origin: torch.Tensor | None = None
    original_captions: list[str] | None = None  # before generalization (None: the captions are the originals)

    def __len__(self) -> int:
        return len(self.captions)

    def origins(self) -> torch.Tensor:
        return self.origin if self.origin is not None else torch.arange(len(self))

    @property
    def distinct(self) -> int:
        """How many distinct images the training set holds (its first rows)."""
        return int(self.origins().max()) + 1 if len(self) else 0

    def captions_for(self, prompts: str) -> list[str]:
        """The captions prompts are drawn from: ``training`` ones, or the ``original`` ones before generalization."""
        if prompts != "original":
            return self.captions
        if self.original_captions is None:
            raise ConfigError("--prompts original: this model was trained on its original captions (no --generalize)")
        return self.original_captions

    def duplicated(self) -> torch.Tensor:
        """[distinct] bool: which distinct images appear more than once."""
        return torch.bincount(self.origins(), minlength=self.distinct) > 1


def load_captioned(cfg: CaptionDataConfig) -> CaptionedImages:
    """The captioned training set ``cfg`` describes (subset, captions, generalization, duplicates)."""
    cfg.validate()
    if cfg.dataset == "folder":
        data, dropped = read_folder(Path(cfg.folder), cfg.size), ""
    else:
        data, dropped = _from_registry(cfg.dataset, cfg.size, cfg.skin_tones, cfg.near_duplicate)
    pool = data
    rng = np.random.default_rng(cfg.seed)
    keep = np.arange(len(data))
    if cfg.n and cfg.n < len(data):
        keep = np.sort(rng.choice(len(data), size=cfg.n, replace=False))
        data = CaptionedImages(data.images[keep], [data.captions[i] for i in keep], data.labels[keep],
                               data.classes, data.source)
    if cfg.captions == "class":
        data.captions = [data.classes[int(k)].replace("_", " ").lower() for k in data.labels]
    if cfg.generalize:
        data.original_captions = data.captions
        data.captions = generalize(data.captions, cfg.generalize, cfg.llm_client())[0]
    if cfg.duplicate_share and cfg.duplicate_times:
        data = _duplicated(cfg, data, pool, keep, rng)
    data.source += (f", {cfg.n or 'all'} images at {cfg.size}x{cfg.size}{dropped}, {cfg.captions} captions"
                    + (f", {cfg.duplicate_share:.0%} duplicated x{cfg.duplicate_times} ({cfg.duplicate_scheme})"
                       if cfg.duplicate_share else "")
                    + (f", generalized ({cfg.generalize})" if cfg.generalize else ""))
    return data


def _duplicated(cfg: CaptionDataConfig, data: CaptionedImages, pool: CaptionedImages, keep: np.ndarray,
                rng: np.random.Generator) -> CaptionedImages:
    """``data`` with a share of its images appended ``duplicate_times`` more times (see the module doc)."""
    m = int(round(cfg.duplicate_share * len(data)))
    dup = np.repeat(rng.choice(len(data), size=m, replace=False), cfg.duplicate_times)
    idx = np.concatenate([np.arange(len(data)), dup])
    captions = [data.captions[i] for i in idx]
    original = None if data.original_captions is None else [data.original_captions[i] for i in idx]
    if cfg.duplicate_scheme == "dup_image":
        others = np.setdiff1d(np.arange(len(pool)), keep)
        if not len(others):  # the whole pool is in the subset: borrow the captions of other training images
            others = keep
        borrowed = rng.choice(others, size=len(dup), replace=len(dup) > len(others))
        captions[len(data):] = [pool.captions[i] for i in borrowed]
        if original is not None:
            original[len(data):] = captions[len(data):]
    return CaptionedImages(data.images[idx], captions, data.labels[idx], data.classes, data.source,
                           torch.from_numpy(idx), original)


def _from_registry(name: str, size: int, skin_tones: bool, near_duplicate: float) -> tuple[CaptionedImages, str]:
    """The dataset without its near-duplicate sources, and a phrase saying what was dropped."""

    spec = get_spec(name)
    d = load_dataset(name, spec.splits[0], size=size)
    if d.captions is None:
        raise DataError(f"dataset {name} has no captions: use emoji, or --dataset folder with a captions.jsonl")
    if d.images.shape[1] != 3:
        raise DataError(f"dataset {name} is not RGB")
    images, captions = d.images.float() / 127.5 - 1, list(d.captions)
    keep = np.ones(len(captions), dtype=bool)
    if not skin_tones:
        keep &= [not c.endswith(tuple(SKIN_TONES.values())) for c in captions]
    tones = int((~keep).sum())
    keep[keep] = distinct_rows(images[torch.from_numpy(keep)], near_duplicate)
    dropped = []
    if tones:
        dropped.append(f"{tones} skin-tone variations")
    if int((~keep).sum()) > tones:
        dropped.append(f"{int((~keep).sum()) - tones} near-duplicates (flip-invariant pixel similarity > {near_duplicate:g})")
    rows = torch.from_numpy(np.flatnonzero(keep))
    data = CaptionedImages(images[rows], [captions[i] for i in rows], d.labels[rows], d.classes, name)
    return data, f" (of {len(rows)} after dropping {' and '.join(dropped)})" if dropped else ""


def distinct_rows(images: torch.Tensor, bound: float) -> np.ndarray:
    """[N] bool: greedily, in order, the images whose flip-invariant pixel similarity to every kept one is <= ``bound``."""

    keep = np.ones(len(images), dtype=bool)
    if bound >= 1 or len(images) < 2:
        return keep
    close = (pixel_similarity_mirrored(images, images, True) > bound).numpy()
    for i in range(len(images)):
        if keep[i]:
            keep[i + 1:] &= ~close[i, i + 1:]
    return keep


def caption_records(index: Path) -> list[tuple[int, str, str]]:
    """(line number, file, caption) of each ``{"file", "caption"}`` JSON line of ``index``; a one-line
    error naming the line for anything else."""
    records = []
    for no, line in enumerate(read_text(index, "captions index", DataError, max_bytes=256 * 1024 * 1024).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records.append((no, str(rec["file"]), str(rec["caption"]).strip()))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{index}:{no}: expected a JSON object with \"file\" and \"caption\"") from None
    return records


def read_folder(folder: Path, size: int) -> CaptionedImages:
    """Images named by ``folder/captions.jsonl``; any size or mode, converted to RGB on white and resized."""
    from PIL import Image

    index = folder / "captions.jsonl"
    if not index.is_file():
        raise DataError(f"{index} not found: a folder dataset needs captions.jsonl with {{\"file\", \"caption\"}} lines")
    images, captions = [], []
    for no, file, caption in caption_records(index):
        if not caption:
            raise DataError(f"{index}:{no}: the caption of {file} is empty")
        rgba = read_image_rgba(folder / file, DataError, f"{index}:{no}: ")
        images.append(np.asarray(on_white(rgba).resize((size, size), Image.BICUBIC)).transpose(2, 0, 1))
        captions.append(caption)
    if not images:
        raise DataError(f"{index} lists no images")
    x = torch.from_numpy(np.stack(images)).float() / 127.5 - 1
    return CaptionedImages(x, captions, torch.zeros(len(captions), dtype=torch.long), ["image"], str(folder))


__all__ = ["CaptionedImages", "caption_records", "distinct_rows", "load_captioned", "read_folder"]
