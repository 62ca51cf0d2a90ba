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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.progress import progress_bar
from trustlab.replication.config import DUPLICATE_LEVEL, check_copy_settings
from trustlab.replication.duplicates import Duplicates, find_duplicates
from trustlab.replication.registration import VERSION as ALIGNED_VERSION
from trustlab.replication.registration import AlignedIndex, aligned_index, aligned_nearest, centred_unit

GRID = 4  # Carlini's tiles per side
CARLINI_K = 50  # Carlini's ratio compares the nearest with the mean of this many nearest


def pixel_similarity(gen: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """[G, N] cosine similarity of mean-centred pixels."""
    return centred_unit(gen.double()) @ centred_unit(train.double()).T


def check_threshold(threshold: float, option: str = "--pixel-threshold") -> None:
    """A cosine-similarity threshold must lie in (-1, 1]; the error names the ``option`` that gave it."""
    if not -1 < threshold <= 1:
        raise ConfigError(f"{option} {threshold:g}: a cosine similarity threshold lies in (-1, 1]")


def pixel_similarity_mirrored(gen: torch.Tensor, train: torch.Tensor, flip: bool) -> torch.Tensor:
    """[G, N] pixel similarity; with ``flip`` the larger of the generation's and its mirror image's."""
    sim = pixel_similarity(gen, train)
    return torch.maximum(sim, pixel_similarity(gen.flip(-1), train)) if flip else sim


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


@dataclass
class Neighbours:
    """For each query: its highest pixel similarity and that training image, the two smallest ℓ2
    distances, the ``CARLINI_K`` smallest tiled ℓ2 distances, and the highest SSCD cosine."""

    pixel: torch.Tensor
    nearest: torch.Tensor
    l2: torch.Tensor
    tiled: torch.Tensor
    sscd: torch.Tensor | None


def _views(x: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """What the metrics compare, from float rows: centred unit vectors, squared norms, tiles and theirs."""
    b = len(x)
    s = size // GRID
    tiles = x.view(b, 3, GRID, s, GRID, s).permute(2, 4, 0, 1, 3, 5).reshape(GRID * GRID, b, -1)
    return {"unit": centred_unit(x), "x": x, "sq": (x * x).sum(1),
            "tiles": tiles, "tiles_sq": (tiles * tiles).sum(2)}


def _distance(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    return (a_sq[..., :, None] + b_sq[..., None, :] - 2 * a @ b.transpose(-1, -2)).clamp_min(0).sqrt()


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, values: torch.Tensor, index: torch.Tensor, k: int,
           largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k`` (values, training indices) merged with a new block's."""
    if best is not None:
        values, index = torch.cat([best[0], values], 1), torch.cat([best[1], index], 1)
    top = values.topk(min(k, values.shape[1]), 1, largest=largest)
    return top.values, index.gather(1, top.indices)


def _refine(queries: np.ndarray, train: np.ndarray, values: torch.Tensor, index: torch.Tensor, size: int,
            tiled: bool, chunk: int = 64) -> torch.Tensor:
    """The distances of the chosen neighbours computed again directly in float64, sorted: the block search
    ranks by ``|a|² + |b|² − 2ab`` in float32, which cannot resolve the distance of an exact copy (0)
    from rounding; excluded pairs (infinite) stay infinite."""
    out = torch.empty(values.shape, dtype=torch.float64)
    s = size // GRID
    for i in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[i : i + chunk].astype(np.float64))
        idx = index[i : i + chunk].cpu()
        t = torch.from_numpy(train[idx.numpy().ravel()].astype(np.float64)).view(*idx.shape, -1)
        diff = t - q[:, None, :]
        if tiled:
            diff = diff.view(*idx.shape, 3, GRID, s, GRID, s).permute(0, 1, 3, 5, 2, 4, 6).reshape(*idx.shape, GRID * GRID, -1)
            d = diff.norm(dim=-1).amax(-1)
        else:
            d = diff.norm(dim=-1)
        out[i : i + chunk] = torch.where(torch.isinf(values[i : i + chunk].cpu()), torch.inf, d)
    return out.sort(1).values


def nearest(queries: np.ndarray, train: np.ndarray, size: int, *, flip: bool = False, batch: int = 1024,
            device: str | torch.device = "cpu", exclude: tuple[np.ndarray, np.ndarray] | None = None,
            sscd: tuple[np.ndarray, np.ndarray] | None = None, quiet: bool = True, what: str = "search") -> Neighbours:
    """Each query row's neighbours among the training rows, block by block. ``exclude``: (group of each
    query, group of each training row): a query never matches a training row of its own group (its own
    image and its duplicates, when training images are measured against the rest)."""
    b, device = batch, torch.device(device)
    out = {k: [] for k in ("pixel", "nearest", "l2", "tiled", "sscd")}
    blocks = [(i, min(i + b, len(train))) for i in range(0, len(train), b)]
    with progress_bar(quiet) as bar:
        task = bar.add_task(what, total=len(queries))
        for q0 in range(0, len(queries), b):
            xq = torch.from_numpy(queries[q0 : q0 + b].astype(np.float32)).to(device)
            vq = _views(xq, size)
            mirrored = _views(xq.view(-1, 3, size, size).flip(-1).reshape(len(xq), -1), size) if flip else None
            own = None if exclude is None else torch.as_tensor(exclude[0][q0 : q0 + b]).to(device)
            train_group = None if exclude is None else torch.as_tensor(exclude[1]).to(device)
            best = {"pixel": None, "l2": None, "tiled": None, "sscd": None}
            sq = None if sscd is None else torch.from_numpy(sscd[0][q0 : q0 + b].astype(np.float32)).to(device)
            for t0, t1 in blocks:
                vt = _views(torch.from_numpy(train[t0:t1].astype(np.float32)).to(device), size)
                index = torch.arange(t0, t1, device=device).expand(len(xq), -1)
                mask = None if own is None else train_group[t0:t1][None, :] == own[:, None]
                sim = vq["unit"] @ vt["unit"].T
                if mirrored is not None:
                    sim = torch.maximum(sim, mirrored["unit"] @ vt["unit"].T)
                d = _distance(vq["x"], vq["sq"], vt["x"], vt["sq"])
                tiled = _distance(vq["tiles"], vq["tiles_sq"], vt["tiles"], vt["tiles_sq"]).amax(0)
                if mask is not None:
                    sim, d, tiled = sim.masked_fill(mask, -2.0), d.masked_fill(mask, float("inf")), tiled.masked_fill(mask, float("inf"))
                best["pixel"] = _merge(best["pixel"], sim, index, 1, True)
                best["l2"] = _merge(best["l2"], d, index, 2, False)
                best["tiled"] = _merge(best["tiled"], tiled, index, CARLINI_K, False)
                if sq is not None:
                    s = sq @ torch.from_numpy(sscd[1][t0:t1].astype(np.float32)).to(device).T
                    best["sscd"] = _merge(best["sscd"], s if mask is None else s.masked_fill(mask, -2.0), index, 1, True)
            out["pixel"].append(best["pixel"][0][:, 0].cpu())
            out["nearest"].append(best["pixel"][1][:, 0].cpu())
            block = queries[q0 : q0 + b]
            out["l2"].append(_refine(block, train, *best["l2"], size, tiled=False))
            out["tiled"].append(_refine(block, train, *best["tiled"], size, tiled=True))
            if best["sscd"] is not None:
                out["sscd"].append(best["sscd"][0][:, 0].cpu())
            bar.update(task, advance=len(xq))
    cat = {k: torch.cat(v) if v else None for k, v in out.items()}
    return Neighbours(cat["pixel"], cat["nearest"], cat["l2"], cat["tiled"], cat["sscd"])


def against_the_rest(rows: np.ndarray, size: int, idx: np.ndarray, *, descriptors: np.ndarray | None = None,
                     group: np.ndarray | None = None, **search) -> Neighbours:
    """Training rows ``idx`` against every training row, none matching itself or its duplicates (``group``):
    what a look-alike reaches without copying (the copy threshold's calibration and the background level)."""
    sscd = None if descriptors is None else (descriptors[idx], descriptors)
    group = np.arange(len(rows)) if group is None else group
    return nearest(rows[idx], rows, size, exclude=(group[idx], group), sscd=sscd, **search)


def _summary(values: torch.Tensor, flagged: torch.Tensor) -> dict:
    v = values.double()
    return {"score": float(torch.quantile(v, 0.95)), "share": float(flagged.double().mean()), "median": float(v.median())}


def statistics(nb: Neighbours, pixel_threshold: float) -> dict:
    """The replication statistics of ``measure`` from the neighbours: pixel, Carlini, Gu, SSCD."""
    out = {"pixel": _summary(nb.pixel, nb.pixel > pixel_threshold)}
    if nb.l2.shape[1] >= 2:
        finite = torch.isfinite(nb.tiled)  # a query's own image, excluded, stays at infinity in a small set
        mean = torch.where(finite, nb.tiled, 0).sum(1) / finite.sum(1).clamp_min(1)
        ratio = 0.5 * mean / nb.tiled[:, 0].clamp_min(1e-12)
        out["carlini"] = _summary(ratio, ratio > 1)
        gu = nb.l2[:, 1] / nb.l2[:, 0].clamp_min(1e-12)
        out["gu"] = _summary(gu, gu > 3)
    if nb.sscd is not None:
        out["sscd"] = _summary(nb.sscd, nb.sscd > 0.5)
    return out


@dataclass
class Comparison:
    """Generations against training images: the neighbours, the copies by the copy metric and their threshold,
    the training set's duplicate groups, replication and background."""

    neighbours: Neighbours
    similarity: torch.Tensor  # each generation's highest similarity to a training image, by the copy metric
    match: torch.Tensor  # that training image
    metric: str
    threshold: float
    threshold_source: str
    duplicates: Duplicates
    replication: dict
    background: dict

    def copied(self) -> torch.Tensor:
        return self.similarity > self.threshold


def copy_similarity(queries: np.ndarray, train: np.ndarray, size: int, metric: str, *, flip: bool = False,
                    exclude: tuple[np.ndarray, np.ndarray] | None = None, neighbours: Neighbours | None = None,
                    index: AlignedIndex | None = None, quiet: bool = True, what: str = "copies",
                    **search) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's highest similarity to a training row by the copy ``metric`` and that row.

    ``aligned``: after undoing crops, shifts, rotations, mirroring and grey conversion
    (:mod:`trustlab.replication.registration`); ``learned``: the cosine of descriptors trained on the
    training rows (:mod:`trustlab.replication.descriptor`); ``pixel``: mean-centred cosine (mirrored
    too with ``flip``), taken from ``neighbours`` when the pixel search already ran; ``index``: the aligned
    metric's index of ``train`` when it is already built.
    """
    if metric == "aligned":
        score, match, _ = aligned_nearest(queries, train, size, exclude=exclude, index=index, quiet=quiet, what=what)
        return score.double(), match
    if metric == "learned":
        from trustlab.replication.descriptor import learned_nearest

        return learned_nearest(queries, train, size, exclude=exclude, quiet=quiet)
    nb = neighbours if neighbours is not None else nearest(queries, train, size, flip=flip, exclude=exclude,
                                                           quiet=quiet, what=what, **search)
    return nb.pixel.double(), nb.nearest


def calibrate(train: np.ndarray, size: int, metric: str, duplicates: Duplicates, limit: int, seed: int,
              index: AlignedIndex | None = None, **search) -> tuple[float, str]:
    """The copy threshold: the 99th percentile of how close one image per duplicate group comes to its nearest
    training image outside its group (by the copy ``metric``), so that about 1% of images that are not copies
    count as copies, however many duplicates the folder holds."""
    reps = duplicates.representatives()
    if len(reps) < 2:
        raise ConfigError(f"the {len(train):,} training images are all duplicates of one another (pixel similarity "
                          f">= {duplicates.level:g}): no look-alike is left to calibrate a copy threshold; give "
                          "--copy-threshold or a folder of distinct images")
    idx = reps[sample(len(reps), limit, seed)]
    sim, _ = copy_similarity(train[idx], train, size, metric, exclude=(duplicates.group[idx], duplicates.group),
                             index=index, what="calibration", **search)
    source = (f"p99 of {len(idx):,} training images' nearest other outside their duplicate group "
              f"({metric} similarity, one image per group)")
    return float(torch.quantile(sim, 0.99)), source


def metric_version(metric: str) -> int | None:
    """The version of a copy ``metric``, stored with its measurements so that a result of an older one is not
    mistaken for a current one (``pixel`` has none: it does not change)."""
    if metric == "aligned":
        return ALIGNED_VERSION
    if metric == "learned":
        from trustlab.replication.descriptor import VERSION

        return VERSION
    return None


def compare(gen: np.ndarray, train: np.ndarray, size: int, *, calibration: int, background: int, seed: int = 0,
            copy_threshold: float | None = None, descriptors: tuple[np.ndarray, np.ndarray] | None = None,
            pixel_threshold: float = 0.9, metric: str = "aligned", duplicate_level: float = DUPLICATE_LEVEL,
            quiet: bool = True, **search) -> Comparison:
    """What ``measure`` and ``audit`` both report, from image rows ([N, 3*size*size]).

    The training set's duplicate groups come first (:func:`trustlab.replication.duplicates.find_duplicates`).
    The copy threshold is ``copy_threshold`` when given, else calibrated on up to ``calibration``
    images, one per group (:func:`calibrate`); the background is the statistics of up to ``background``
    of them against the rest. ``descriptors``: SSCD descriptors of the generations and of the training
    images. ``search``: options of :func:`nearest`.
    """
    check_threshold(pixel_threshold)
    check_copy_settings(metric, duplicate_level, size)
    if len(train) < 2:
        raise ConfigError("a comparison needs at least two training images (the copy threshold and the background "
                          "compare each with the others)")
    duplicates = find_duplicates(train, size, duplicate_level, quiet=quiet)
    nb = nearest(gen, train, size, sscd=descriptors, what="generations vs training", quiet=quiet, **search)
    index = aligned_index(train, size) if metric == "aligned" else None  # one for the generations and the calibration
    similarity, match = copy_similarity(gen, train, size, metric, neighbours=nb, index=index, quiet=quiet, what="copies",
                                        **search)
    if copy_threshold is None:
        threshold, source = calibrate(train, size, metric, duplicates, calibration, seed, index=index, quiet=quiet, **search)
    else:
        check_threshold(copy_threshold, "--copy-threshold")
        threshold, source = copy_threshold, "given"
    reps = duplicates.representatives()
    back = against_the_rest(train, size, reps[sample(len(reps), background, seed + 1)], group=duplicates.group,
                            descriptors=None if descriptors is None else descriptors[1], what="background",
                            quiet=quiet, **search)
    return Comparison(nb, similarity, match, metric, threshold, source, duplicates, statistics(nb, pixel_threshold),
                      statistics(back, pixel_threshold))


def check_same_size(gen: torch.Tensor, train: torch.Tensor) -> None:
    """Generations and training images compared pixel by pixel must have the same channels and side."""
    if gen.shape[1:] != train.shape[1:]:
        raise ConfigError(f"generations are {tuple(gen.shape[1:])}, training images {tuple(train.shape[1:])}")


def image_rows(images: torch.Tensor) -> np.ndarray:
    """Images [N, 3, S, S] as the float32 rows the search takes."""
    return images.detach().flatten(1).float().cpu().numpy()


def replication(gen: torch.Tensor, train: torch.Tensor, *, pixel_threshold: float = 0.9,
                exclude_self: bool = False, sscd=None, device: str | torch.device = "cpu", flip: bool = False) -> dict:
    """Replication statistics of ``gen`` against ``train`` (both [B, 3, S, S] in [-1, 1]), computed on ``device``
    by :func:`nearest`; ``exclude_self``: generation ``i`` is not compared with training image ``i``.

    ``flip``: the pixel similarity is the larger of the generation's and its mirror image's, so a
    mirrored copy counts as a copy.
    """
    check_threshold(pixel_threshold)
    check_same_size(gen, train)
    descriptors = None if sscd is None else (sscd.descriptors(gen), sscd.descriptors(train))
    nb = nearest(image_rows(gen), image_rows(train), gen.shape[-1], flip=flip, device=device, sscd=descriptors,
                 exclude=(np.arange(len(gen)), np.arange(len(train))) if exclude_self else None)
    return {**statistics(nb, pixel_threshold), "nearest": nb.nearest.tolist(), "max_similarity": nb.pixel.tolist()}


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

    def descriptors(self, x: torch.Tensor) -> np.ndarray:
        """Unit-length descriptors (float32): their dot products are the cosine similarities :func:`nearest` ranks."""
        return F.normalize(self.embed(x), dim=1).numpy()


def sample(n: int, limit: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of ``min(limit, n)`` of ``n`` indices."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))


__all__ = ["CARLINI_K", "GRID", "Comparison", "calibrate", "copy_similarity", "Neighbours", "TorchScriptEmbedder", "against_the_rest", "check_same_size",
           "check_threshold",
           "compare", "copy_rates", "metric_version", "nearest", "pixel_similarity", "pixel_similarity_mirrored", "replication", "image_rows",
           "sample", "statistics"]
