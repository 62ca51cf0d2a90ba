"""``audit``: the replication metrics of ``measure`` for any model, on two folders of images.

A user with their own diffusion model has a folder of generations and a folder of training
images, of any size and format. The audit reads both in batches, resizes every image to
``size``×``size`` RGB (on white, as the testbed reads folders) and keeps them as float16 rows in a
cache on disk (``OUT/cache``), so a repeated audit against the same training folder decodes
nothing again. Nearest neighbours come from blocked matrix products, a block of generations
against a block of training images at a time, merged into running top-k lists, so memory stays
at one block pair whatever the folder sizes:

* pixel similarity (cosine of mean-centred pixels; mirrored too with ``flip``): the copy rate
  (share above the copy threshold), the 95th percentile and the share above ``pixel_threshold``;
* Carlini's tiled ℓ2 (largest per-tile distance on a 4×4 grid; extracted when the nearest is
  below half the mean of the 50 nearest) and Gu's ℓ2 ratio (second-nearest over nearest; above 3);
* SSCD cosine with a TorchScript copy detector (``sscd``), computed from the decoded images at
  the detector's own resolution.

The copy threshold is calibrated as in ``measure``: the 99th percentile, over a sample of
training images, of each one's similarity to its nearest *other* training image. The background
is the same statistics for a sample of training images against the rest. ``nearest.csv`` lists
every generation with its nearest training image, similarity and copy flag. ``measure`` computes
the same figures in memory for the testbed's own runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.errors import ConfigError, DataError
from trustlab.files import read_image_rgba, read_text
from trustlab.progress import progress_bar
from trustlab.replication.config import AuditConfig
from trustlab.replication.measure import copy_grid
from trustlab.replication.metrics import TorchScriptEmbedder
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, atomic_write_bytes, atomic_write_text
from trustlab.train import resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
GRID = 4  # Carlini's tiles per side
CARLINI_K = 50  # Carlini's ratio compares the nearest with the mean of this many nearest


def image_files(folder: str | Path, what: str) -> list[Path]:
    """The image files below ``folder``, sorted; a one-line error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"the {what} folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): give the folder of {what} images")
    return files


@dataclass
class Encoded:
    """A folder's images as float16 rows in [-1, 1] (``[N, 3*size*size]``), the files they came from,
    SSCD descriptors when a detector was given, and the files that could not be decoded."""

    rows: np.ndarray
    files: list[str]
    sscd: np.ndarray | None
    skipped: list[str]


def _listing_key(files: list[Path], size: int, sscd: TorchScriptEmbedder | None) -> str:
    stats = [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    doc = json.dumps([size, str(sscd.path) if sscd else None, stats])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def encode_folder(files: list[Path], cfg: AuditConfig, cache: Path, what: str, sscd: TorchScriptEmbedder | None,
                  quiet: bool) -> Encoded:
    """The images of ``files`` as rows (read from the cache when the same files at the same size were encoded)."""
    from PIL import Image

    path = cache / f"{what}-{cfg.size}-{_listing_key(files, cfg.size, sscd)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return Encoded(z["rows"], [str(f) for f in z["files"]], z["sscd"] if "sscd" in z else None,
                           [str(f) for f in z["skipped"]])
    rows, kept, skipped, descriptors = [], [], [], []
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"reading {what} images", total=len(files))
        for start in range(0, len(files), cfg.batch):
            small, large = [], []
            for f in files[start : start + cfg.batch]:
                try:
                    rgba = read_image_rgba(f, DataError)
                except DataError:
                    if cfg.bad_images == "stop":
                        raise DataError(f"{f} cannot be decoded: remove it, or pass --bad-images skip to leave it out") from None
                    skipped.append(str(f))
                    continue
                rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
                small.append(np.asarray(rgb.resize((cfg.size, cfg.size), Image.BICUBIC)).transpose(2, 0, 1))
                if sscd is not None:
                    large.append(np.asarray(rgb.resize((sscd.size, sscd.size), Image.BICUBIC)).transpose(2, 0, 1))
                kept.append(str(f))
            if small:
                rows.append((np.stack(small).reshape(len(small), -1).astype(np.float32) / 127.5 - 1).astype(np.float16))
            if large:
                x = torch.from_numpy(np.stack(large)).float() / 127.5 - 1
                descriptors.append(F.normalize(sscd.embed(x), dim=1).numpy().astype(np.float16))
            bar.update(task, advance=min(cfg.batch, len(files) - start))
    if not kept:
        raise DataError(f"none of the {len(files)} {what} images could be decoded")
    enc = Encoded(np.concatenate(rows), kept, np.concatenate(descriptors) if descriptors else None, skipped)
    buf = io.BytesIO()
    extra = {"sscd": enc.sscd} if enc.sscd is not None else {}
    np.savez(buf, rows=enc.rows, files=np.array(enc.files), skipped=np.array(enc.skipped, dtype=str), **extra)
    atomic_write_bytes(path, buf.getvalue())
    return enc


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
    return {"unit": F.normalize(x - x.mean(1, keepdim=True), dim=1), "x": x, "sq": (x * x).sum(1),
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


def nearest(queries: np.ndarray, train: np.ndarray, cfg: AuditConfig, device: torch.device, *,
            exclude: np.ndarray | None = None, sscd: tuple[np.ndarray, np.ndarray] | None = None,
            quiet: bool = True, what: str = "search") -> Neighbours:
    """Each query row's neighbours among the training rows, block by block (``exclude[i]``: a training
    index query ``i`` may not match, its own, when training images are measured against the rest)."""
    size, b = cfg.size, cfg.batch
    out = {k: [] for k in ("pixel", "nearest", "l2", "tiled", "sscd")}
    blocks = [(i, min(i + b, len(train))) for i in range(0, len(train), b)]
    with progress_bar(quiet) as bar:
        task = bar.add_task(what, total=len(queries))
        for q0 in range(0, len(queries), b):
            xq = torch.from_numpy(queries[q0 : q0 + b].astype(np.float32)).to(device)
            vq = _views(xq, size)
            mirrored = _views(xq.view(-1, 3, size, size).flip(-1).reshape(len(xq), -1), size) if cfg.flip else None
            own = None if exclude is None else torch.from_numpy(exclude[q0 : q0 + b]).to(device)
            best = {"pixel": None, "l2": None, "tiled": None, "sscd": None}
            sq = None if sscd is None else torch.from_numpy(sscd[0][q0 : q0 + b].astype(np.float32)).to(device)
            for t0, t1 in blocks:
                vt = _views(torch.from_numpy(train[t0:t1].astype(np.float32)).to(device), size)
                index = torch.arange(t0, t1, device=device).expand(len(xq), -1)
                mask = None if own is None else index == own[:, None]
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


def _sample(n: int, limit: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))


def _captions(path: Path, folder: Path, what: str) -> dict[str, str]:
    """``{"file", "caption"}`` JSON lines as absolute file path -> caption."""
    out = {}
    for no, line in enumerate(read_text(path, f"{what} captions", DataError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str((folder / str(rec["file"])).resolve())] = str(rec["caption"]).strip()
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{no}: expected a JSON object with \"file\" and \"caption\"") from None
    return out


def own_prompt_nearest(cfg: AuditConfig, gen: Encoded, train: Encoded, nb: Neighbours) -> float | None:
    """Share of captioned generations whose nearest training image carries the generation's own prompt."""
    if cfg.captions is None:
        return None
    index = Path(cfg.train) / "captions.jsonl"
    if not index.is_file():
        raise ConfigError(f"--captions compares prompts with training captions: {index} is missing")
    prompts = _captions(Path(cfg.captions), Path(cfg.generated), "generation")
    train_caps = _captions(index, Path(cfg.train), "training")
    pairs = [(prompts.get(str(Path(f).resolve())), train_caps.get(str(Path(train.files[int(n)]).resolve())))
             for f, n in zip(gen.files, nb.nearest)]
    pairs = [(p, t) for p, t in pairs if p is not None]
    if not pairs:
        raise ConfigError(f"{cfg.captions} names none of the generated files: give paths relative to {cfg.generated}")
    return sum(p == t for p, t in pairs) / len(pairs)


def audit(cfg: AuditConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Audit ``cfg.generated`` against ``cfg.train`` into the run folder ``out`` (summary, tables, copy grid, report)."""
    job = Job(cfg, out, resume)
    cfg = job.config
    t = time.perf_counter()
    gen_files, train_files = image_files(cfg.generated, "generated"), image_files(cfg.train, "training")
    device = resolve_device(cfg.device)
    detector = TorchScriptEmbedder(cfg.sscd, 288, "an SSCD model") if cfg.sscd else None
    run = job.start()
    cache = run.path / "cache"
    train = encode_folder(train_files, cfg, cache, "train", detector, quiet)
    gen = encode_folder(gen_files, cfg, cache, "generated", detector, quiet)
    if len(train.files) < 2:
        raise DataError(f"{cfg.train}: an audit needs at least two training images")
    nb = nearest(gen.rows, train.rows, cfg, device, quiet=quiet, what="generations vs training",
                 sscd=None if detector is None else (gen.sscd, train.sscd))
    if cfg.copy_threshold is None:
        calib = _sample(len(train.rows), cfg.calibration, cfg.seed)
        within = nearest(train.rows[calib], train.rows, cfg, device, exclude=calib, quiet=quiet, what="calibration")
        threshold, source = float(torch.quantile(within.pixel.double(), 0.99)), (
            f"p99 of {len(calib):,} training images' nearest other")
    else:
        threshold, source = cfg.copy_threshold, "given"
    back = _sample(len(train.rows), cfg.background, cfg.seed + 1)
    background = statistics(nearest(train.rows[back], train.rows, cfg, device, exclude=back, quiet=quiet,
                                    what="background", sscd=None if detector is None else (train.sscd[back], train.sscd)),
                            cfg.pixel_threshold)
    replication = statistics(nb, cfg.pixel_threshold)
    copied = nb.pixel > threshold
    summary = {"copy_rate": float(copied.double().mean()), "copies": int(copied.sum()), "copy_threshold": threshold,
               "threshold_source": source, "generations": len(gen.files), "train_images": len(train.files),
               "skipped_generations": len(gen.skipped), "skipped_train_images": len(train.skipped),
               "size": cfg.size, "flip_invariant": cfg.flip, "device": str(device),
               "own_prompt_nearest": own_prompt_nearest(cfg, gen, train, nb),
               "replication": replication, "background": background, "seconds": time.perf_counter() - t}
    run.write_table("replication", [{"embedding": k, "replication score (p95)": v["score"], "share flagged": v["share"],
                                     "background score": background[k]["score"]} for k, v in replication.items()],
                    title=f"Replication of {len(gen.files):,} generations against {len(train.files):,} training images")
    order = nb.pixel.argsort(descending=True)[:24]
    near = nb.nearest[order]
    grid_rep = {"max_similarity": nb.pixel[order].tolist(), "nearest": list(range(len(order)))}
    copy_grid(_images(gen.rows[order.numpy()], cfg.size), _images(train.rows[near.numpy()], cfg.size), grid_rep,
              run.plot_path("copies"))
    run.write_table("closest", [{"generation": gen.files[int(i)], "nearest training image": train.files[int(n)],
                                 "pixel similarity": float(nb.pixel[i]), "copy": bool(nb.pixel[i] > threshold)}
                                for i, n in zip(order, near)], title="The generations closest to a training image")
    lines = [f"{gen.files[i]},{train.files[int(n)]},{float(s):.6f},{int(s > threshold)}"
             for i, (n, s) in enumerate(zip(nb.nearest, nb.pixel))]
    atomic_write_text(run.path / "nearest.csv", "generation,nearest_training_image,pixel_similarity,copy\n"
                      + "\n".join(lines) + "\n")
    run.write_summary(summary)
    render_report(run.path)
    return run


def _images(rows: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(rows.astype(np.float32)).view(-1, 3, size, size)


__all__ = ["IMAGE_SUFFIXES", "audit", "encode_folder", "image_files", "nearest", "statistics"]
