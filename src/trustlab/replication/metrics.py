"""Replication metrics: each generation against every training image, in three embeddings.

* ``pixel``: cosine similarity of mean-centred, normalised pixel vectors; the replication
  score is the 95th percentile over generations of the highest similarity to any training
  image, the share is the fraction above ``pixel_threshold``.
* ``carlini``: the tiled ℓ2 distance (largest per-tile ℓ2 over a 4×4 grid); a generation is
  extracted when its distance to the nearest training image is below half the mean distance
  to its 50 nearest (Carlini et al. 2023). Score: 95th percentile of that
  ``0.5·mean50 / nearest`` ratio (above 1 = extracted).
* ``gu``: ℓ2 to the nearest over ℓ2 to the second-nearest training image; memorised below 1/3
  (Gu et al. 2023). Score: 95th percentile of ``second / nearest`` (above 3 = memorised).
* ``sscd``: cosine of a user-supplied TorchScript copy-detection model's descriptors
  (``--sscd PATH``), share above 0.5, as in Somepalli et al.

The background level is the same statistic for training images against the other training
images (a dataset of near-duplicates replicates "by itself").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.errors import ConfigError


def _centred(x: torch.Tensor) -> torch.Tensor:
    v = x.flatten(1).double()
    v = v - v.mean(1, keepdim=True)
    return F.normalize(v, dim=1)


def pixel_similarity(gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """[G, N] cosine similarity of mean-centred pixels."""
    return _centred(gen) @ _centred(train).T


def tiled_l2(gen: torch.Tensor, train: torch.Tensor, grid: int = 4, chunk: int = 64) -> torch.Tensor:
    """[G, N] largest per-tile ℓ2 distance over a ``grid``×``grid`` tiling."""
    g, n = len(gen), len(train)
    s = gen.shape[-1] // grid

    def tiles(x):  # [B, grid*grid, C*s*s]
        b, c = x.shape[:2]
        return x.reshape(b, c, grid, s, grid, s).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, -1).double()

    tg, tt = tiles(gen), tiles(train)
    out = torch.empty(g, n, dtype=torch.float64, device=gen.device)
    for i in range(0, g, chunk):
        d = torch.cdist(tg[i : i + chunk].transpose(0, 1), tt.transpose(0, 1))  # [T, chunk, N]
        out[i : i + chunk] = d.max(0).values
    return out


def l2(gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    return torch.cdist(gen.flatten(1).double(), train.flatten(1).double())


def _summary(score_values: torch.Tensor, flagged: torch.Tensor) -> dict:
    v = score_values.double()
    return {"score": float(torch.quantile(v, 0.95)), "share": float(flagged.double().mean()),
            "median": float(v.median())}


def check_threshold(threshold: float, option: str = "--pixel-threshold") -> None:
    """A cosine-similarity threshold must lie in (-1, 1]; the error names the ``option`` that gave it."""
    if not -1 < threshold <= 1:
        raise ConfigError(f"{option} {threshold:g}: a cosine similarity threshold lies in (-1, 1]")


def pixel_similarity_mirrored(gen: torch.Tensor, train: torch.Tensor, flip: bool) -> torch.Tensor:
    """[G, N] pixel similarity; with ``flip`` the larger of the generation's and its mirror image's."""
    sim = pixel_similarity(gen, train)
    return torch.maximum(sim, pixel_similarity(gen.flip(-1), train)) if flip else sim


def calibrated_threshold(distinct: torch.Tensor, *, quantile: float = 0.99, flip: bool = False,
                         device: str | torch.device = "cpu") -> float:
    """The copy threshold below which ``quantile`` of distinct training images stay against each other.

    Each distinct image's highest pixel similarity to any *other* distinct image is what a
    look-alike reaches without copying (emoji: skin tones, white backgrounds, round faces); a
    generation above the 99th percentile of that is closer to a training image than almost any
    two different training images are to each other.
    """
    x = distinct.to(device)
    if len(x) < 2:
        raise ConfigError("a copy threshold needs at least two distinct training images")
    sim = pixel_similarity_mirrored(x, x, flip)
    sim.fill_diagonal_(-2.0)
    return float(torch.quantile(sim.max(1).values, quantile))


def copy_rates(max_similarity: torch.Tensor, nearest: torch.Tensor, prompt_index: torch.Tensor,
               origin: torch.Tensor, duplicated: torch.Tensor, threshold: float) -> dict:
    """Share of generations that copy: overall, for prompts of duplicated and of unique images.

    A generation *copies* when its nearest training image lies above ``threshold``; it copies
    *its own prompt's image* when that nearest image shows the same distinct image as the
    training row its prompt came from (``origin`` maps rows to distinct images).
    """
    copied = max_similarity.cpu() > threshold
    prompt_origin = origin[prompt_index]
    own = copied & (origin[nearest.cpu()] == prompt_origin)
    dup = duplicated[prompt_origin]

    def share(flags: torch.Tensor, where: torch.Tensor | None = None) -> float | None:
        flags = flags if where is None else flags[where]
        return float(flags.double().mean()) if len(flags) else None

    return {"threshold": threshold, "copy_rate": share(copied), "copy_rate_dup": share(copied, dup),
            "copy_rate_unique": share(copied, ~dup), "own_prompt_copy_rate": share(own),
            "own_prompt_copy_rate_dup": share(own, dup), "own_prompt_copy_rate_unique": share(own, ~dup),
            "prompts_dup": int(dup.sum()), "prompts_unique": int((~dup).sum())}


def replication(gen: torch.Tensor, train: torch.Tensor, *, pixel_threshold: float = 0.9,
                exclude_self: bool = False, sscd=None, device: str | torch.device = "cpu", flip: bool = False) -> dict:
    """Replication statistics of ``gen`` against ``train`` (both [B, 3, S, S] in [-1, 1]), computed on ``device``.

    ``flip``: the pixel similarity is the larger of the generation's and its mirror image's, so a
    mirrored copy counts as a copy.
    """
    check_threshold(pixel_threshold)
    if gen.shape[1:] != train.shape[1:]:
        raise ConfigError(f"generations are {tuple(gen.shape[1:])}, training images {tuple(train.shape[1:])}")
    gen_cpu, train_cpu = gen, train
    gen, train = gen.to(device), train.to(device)
    mask = None
    if exclude_self:
        mask = torch.eye(len(gen), len(train), dtype=torch.bool, device=gen.device)
    sim = pixel_similarity_mirrored(gen, train, flip)
    if mask is not None:
        sim = sim.masked_fill(mask, -2.0)
    best_sim, nearest = sim.max(1)
    out = {"pixel": _summary(best_sim, best_sim > pixel_threshold), "nearest": nearest.tolist(),
           "max_similarity": best_sim.tolist()}
    if len(train) >= 2:
        tl = tiled_l2(gen, train)
        d = l2(gen, train)
        if mask is not None:
            tl = tl.masked_fill(mask, float("inf"))
            d = d.masked_fill(mask, float("inf"))
        k = min(50, len(train) - (1 if exclude_self else 0))
        near = tl.topk(k, 1, largest=False).values
        ratio = 0.5 * near.mean(1) / near[:, 0].clamp_min(1e-12)
        out["carlini"] = _summary(ratio, ratio > 1)
        two = d.topk(2, 1, largest=False).values
        gu = two[:, 1] / two[:, 0].clamp_min(1e-12)
        out["gu"] = _summary(gu, gu > 3)
    if sscd is not None:
        s = sscd.similarity(gen_cpu, train_cpu).to(gen.device)
        if mask is not None:
            s = s.masked_fill(mask, -2.0)
        top = s.max(1).values
        out["sscd"] = _summary(top, top > 0.5)
    return out


class TorchScriptEmbedder:
    """A TorchScript image model (SSCD, Inception) loaded from a file the user gives.

    Inputs are resized to ``size`` and normalised with ImageNet statistics (what SSCD and
    torchvision's Inception expect); outputs are flattened descriptors.
    """

    def __init__(self, path: str | Path, size: int, what: str):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{what} file {path} does not exist")
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{path} is not a TorchScript model ({first}): give the TorchScript export of {what}") from None
        self.size, self.what, self.path = size, what, path

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        outs = []
        for i in range(0, len(x), batch):
            b = F.interpolate((x[i : i + batch] + 1) / 2, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
            try:
                y = self.model((b - mean) / std)
            except RuntimeError as e:
                raise ConfigError(f"{self.path} failed on {self.size}x{self.size} RGB images: is it {self.what}? "
                                  f"({str(e).strip().splitlines()[0][:100]})") from None
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.flatten(1).float())
        return torch.cat(outs)

    def similarity(self, gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(gen), dim=1) @ F.normalize(self.embed(train), dim=1).T


def background(train: torch.Tensor, *, limit: int = 512, seed: int = 0, pixel_threshold: float = 0.9, sscd=None,
               device: str | torch.device = "cpu", flip: bool = False) -> dict:
    """The replication statistics of (up to ``limit``) training images against the other training images."""
    idx = np.sort(np.random.default_rng(seed).choice(len(train), size=min(limit, len(train)), replace=False))
    sub = train[idx]
    rest_first = torch.cat([sub, train[np.setdiff1d(np.arange(len(train)), idx)]])
    res = replication(sub, rest_first, pixel_threshold=pixel_threshold, exclude_self=True, sscd=sscd, device=device,
                      flip=flip)
    return {k: v for k, v in res.items() if k not in ("nearest", "max_similarity")}


__all__ = ["TorchScriptEmbedder", "background", "calibrated_threshold", "check_threshold", "copy_rates", "l2",
           "pixel_similarity", "pixel_similarity_mirrored", "replication", "tiled_l2"]
