"""``audit``: the replication metrics of ``measure`` for any model, on two folders of images.

A user with their own diffusion model has a folder of generations and a folder of training
images, of any size and format. The audit reads both in batches, resizes every image to
``size``×``size`` RGB (on white, as the testbed reads folders) and keeps them as float16 rows in a
cache on disk (``OUT/cache``), so a repeated audit against the same training folder decodes
nothing again. Nearest neighbours come from blocked matrix products, a block of generations
against a block of training images at a time, merged into running top-k lists, so memory stays
at one block pair whatever the folder sizes:

* the copies: each generation's nearest training image by the copy metric, ``aligned`` by default
  (crops, shifts, small rotations, mirroring and grey conversion undone by registration, see
  :mod:`trustlab.replication.registration`) or ``pixel``; a copy lies above the copy threshold;
* pixel similarity (cosine of mean-centred pixels): the 95th percentile and the share above
  ``pixel_threshold``;
* Carlini's tiled ℓ2 (largest per-tile distance on a 4×4 grid; extracted when the nearest is
  below half the mean of the 50 nearest) and Gu's ℓ2 ratio (second-nearest over nearest; above 3);
* SSCD cosine with a TorchScript copy detector (``sscd``), computed from the decoded images at
  the detector's own resolution.

The comparison is :func:`trustlab.replication.metrics.compare`, the one ``measure`` uses too. It
first finds the near-duplicate groups of the training folder (reported, with a grid), then
calibrates the copy threshold on one image per group: the 99th percentile, over a sample of them,
of each one's similarity to its nearest training image outside its group. The background is the
same statistics for a sample of them against the rest. ``nearest.csv`` lists every generation with
its nearest training image, both similarities and the copy flag.
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

from trustlab.errors import ConfigError, DataError
from trustlab.files import on_white, read_image_rgba
from trustlab.progress import progress_bar
from trustlab.replication.config import AuditConfig
from trustlab.replication.duplicates import Duplicates
from trustlab.replication.measure import copy_grid, duplicate_grid
from trustlab.replication.data import caption_records
from trustlab.replication.metrics import TorchScriptEmbedder, compare, metric_version
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, atomic_write_bytes, atomic_write_text
from trustlab.train import resolve_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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
    stats = [[str(f), st.st_size, st.st_mtime_ns] for f, st in ((f, f.stat()) for f in files)]
    doc = json.dumps([size, str(sscd.path) if sscd else None, stats])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def encode_folder(files: list[Path], cfg: AuditConfig, cache: Path, what: str, sscd: TorchScriptEmbedder | None,
                  quiet: bool) -> tuple[Encoded, Path]:
    """The images of ``files`` as rows (read from the cache when the same files at the same size were
    encoded) and the cache file they belong in; :func:`save_encoded` writes it once the run folder exists."""
    from PIL import Image

    path = cache / f"{what}-{cfg.size}-{_listing_key(files, cfg.size, sscd)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return Encoded(z["rows"], [str(f) for f in z["files"]], z["sscd"] if "sscd" in z else None,
                           [str(f) for f in z["skipped"]]), path
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
                rgb = on_white(rgba)
                small.append(np.asarray(rgb.resize((cfg.size, cfg.size), Image.BICUBIC)).transpose(2, 0, 1))
                if sscd is not None:
                    large.append(np.asarray(rgb.resize((sscd.size, sscd.size), Image.BICUBIC)).transpose(2, 0, 1))
                kept.append(str(f))
            if small:
                rows.append((np.stack(small).reshape(len(small), -1).astype(np.float32) / 127.5 - 1).astype(np.float16))
            if large:
                descriptors.append(sscd.descriptors(torch.from_numpy(np.stack(large)).float() / 127.5 - 1).astype(np.float16))
            bar.update(task, advance=min(cfg.batch, len(files) - start))
    if not kept:
        raise DataError(f"none of the {len(files)} {what} images could be decoded")
    return Encoded(np.concatenate(rows), kept, np.concatenate(descriptors) if descriptors else None, skipped), path


def save_encoded(enc: Encoded, path: Path) -> None:
    """Cache ``enc`` at ``path`` (unless it came from there), so a resumed audit reads no image again."""
    if path.exists():
        return
    buf = io.BytesIO()
    extra = {"sscd": enc.sscd} if enc.sscd is not None else {}
    np.savez(buf, rows=enc.rows, files=np.array(enc.files), skipped=np.array(enc.skipped, dtype=str), **extra)
    atomic_write_bytes(path, buf.getvalue())


def _captions(path: Path, folder: Path) -> dict[str, str]:
    """``{"file", "caption"}`` JSON lines as absolute file path -> caption."""
    return {str((folder / file).resolve()): caption for _, file, caption in caption_records(path)}


def own_prompt_nearest(cfg: AuditConfig, gen: Encoded, train: Encoded, match: torch.Tensor) -> float | None:
    """Share of captioned generations whose nearest training image carries the generation's own prompt."""
    if cfg.captions is None:
        return None
    index = Path(cfg.train) / "captions.jsonl"
    if not index.is_file():
        raise ConfigError(f"--captions compares prompts with training captions: {index} is missing")
    prompts = _captions(Path(cfg.captions), Path(cfg.generated))
    train_caps = _captions(index, Path(cfg.train))
    pairs = [(prompts.get(str(Path(f).resolve())), train_caps.get(str(Path(train.files[int(n)]).resolve())))
             for f, n in zip(gen.files, match)]
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
    cache = job.path / "cache"
    train, train_cache = encode_folder(train_files, cfg, cache, "train", detector, quiet)
    gen, gen_cache = encode_folder(gen_files, cfg, cache, "generated", detector, quiet)
    if len(train.files) < 2:
        raise DataError(f"{cfg.train}: an audit needs at least two training images")
    run = job.start()  # only once every image has been read: an image that cannot be decoded leaves no run folder
    save_encoded(train, train_cache)
    save_encoded(gen, gen_cache)
    result = compare(gen.rows, train.rows, cfg.size, calibration=cfg.calibration, background=cfg.background,
                     seed=cfg.seed, copy_threshold=cfg.copy_threshold,
                     descriptors=None if detector is None else (gen.sscd, train.sscd), pixel_threshold=cfg.pixel_threshold,
                     metric=cfg.copy_metric, duplicate_level=cfg.duplicate_level, flip=cfg.flip, batch=cfg.batch,
                     device=device, quiet=quiet)
    nb, threshold, replication, background = result.neighbours, result.threshold, result.replication, result.background
    copied = result.copied()
    duplicates = result.duplicates.summary(train.files)
    summary = {"copy_rate": float(copied.double().mean()), "copies": int(copied.sum()), "copy_threshold": threshold,
               "copy_metric": cfg.copy_metric, "copy_metric_version": metric_version(cfg.copy_metric),
               "threshold_source": result.threshold_source,
               "generations": len(gen.files), "train_images": len(train.files), "duplicates": duplicates,
               "skipped_generations": len(gen.skipped), "skipped_train_images": len(train.skipped),
               "size": cfg.size, "flip_invariant": cfg.flip or cfg.copy_metric == "aligned", "device": str(device),
               "own_prompt_nearest": own_prompt_nearest(cfg, gen, train, result.match),
               "replication": replication, "background": background, "seconds": time.perf_counter() - t}
    run.write_table("replication", [{"embedding": k, "replication score (p95)": v["score"], "share flagged": v["share"],
                                     "background score": background[k]["score"]} for k, v in replication.items()],
                    title=f"Replication of {len(gen.files):,} generations against {len(train.files):,} training images")
    _report_duplicates(run, result.duplicates, train, cfg.size)
    order = result.similarity.argsort(descending=True)[:24]
    near = result.match[order]
    grid_rep = {"max_similarity": result.similarity[order].tolist(), "nearest": list(range(len(order)))}
    copy_grid(_images(gen.rows[order.numpy()], cfg.size), _images(train.rows[near.numpy()], cfg.size), grid_rep,
              run.plot_path("copies"), metric=cfg.copy_metric)
    run.write_table("closest", [{"generation": gen.files[int(i)], "nearest training image": train.files[int(n)],
                                 f"{cfg.copy_metric} similarity": float(result.similarity[i]),
                                 "copy": bool(result.similarity[i] > threshold)}
                                for i, n in zip(order, near)], title="The generations closest to a training image")
    lines = [f"{gen.files[i]},{train.files[int(n)]},{float(s):.6f},{float(p):.6f},{int(s > threshold)}"
             for i, (n, s, p) in enumerate(zip(result.match, result.similarity, nb.pixel))]
    atomic_write_text(run.path / "nearest.csv", f"generation,nearest_training_image,{cfg.copy_metric}_similarity,"
                      "pixel_similarity,copy\n" + "\n".join(lines) + "\n")
    run.write_summary(summary)
    render_report(run.path)
    return run


def _report_duplicates(run: RunDir, duplicates: Duplicates, train: Encoded, size: int) -> None:
    """The duplicate groups as a table and a grid (each row a group, at most 8 images): a finding in itself."""
    groups = duplicates.groups()
    run.write_table("duplicates", [{"group": g + 1, "images": len(members), "first": train.files[members[0]],
                                    "others": ", ".join(Path(train.files[i]).name for i in members[1:6])
                                    + (" ..." if len(members) > 6 else "")} for g, members in enumerate(groups[:20])],
                    title=f"Near-duplicate groups in the training images: {len(groups):,} groups of "
                          f"{sum(map(len, groups)):,} images (similarity >= {duplicates.level:g}); the copy threshold "
                          "is calibrated on one image per group")
    if groups:
        duplicate_grid([_images(train.rows[g[:8]], size) for g in groups[:12]], run.plot_path("duplicates"))


def _images(rows: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(rows.astype(np.float32)).view(-1, 3, size, size)


__all__ = ["IMAGE_SUFFIXES", "audit", "encode_folder", "image_files"]
