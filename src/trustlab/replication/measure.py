"""``measure``: replication and quality of a run's generations, written into the run folder.

The comparison with the training images is :func:`trustlab.replication.metrics.compare`, the
one ``audit`` runs on folders; ``measure`` adds what a testbed run knows and a folder does not:
each generation's prompt image (copy rates of duplicated and unique images) and quality.

Adds ``measure-<samples>.json``, a table for the report, and the copy grid (generations beside
their nearest training images, most similar first), then re-renders the run's report.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trustlab.replication.config import DUPLICATE_LEVEL, DiffusionConfig, check_copy_settings
from trustlab.replication.data import load_captioned
from trustlab.replication.metrics import (TorchScriptEmbedder, check_same_size, check_threshold, compare, copy_rates,
                                          image_rows, metric_version)
from trustlab.replication.quality import quality
from trustlab.replication.sampling import latest_samples, load_samples
from trustlab.report import render_report
from trustlab.runs import RunDir, atomic_save_figure, atomic_write_json, config_from_dict, finished
from trustlab.train import resolve_device


def measure_run(run_dir: str | Path, *, samples: str | Path | None = None, sscd: str | None = None,
                inception: str | None = None, pixel_threshold: float = 0.9, device: str = "auto",
                flip: bool = False, copy_threshold: float | None = None, copy_metric: str = "aligned",
                duplicate_level: float = DUPLICATE_LEVEL) -> dict:
    """Replication, copies and quality of a run's generations.

    Generations are compared with the *distinct* training images, and the background and the
    calibrated copy threshold are computed among them: duplicates of one image would otherwise
    read as look-alikes of each other, and would sit nearest and second-nearest to a copy of
    that image, so that Gu's ratio (nearest over second-nearest) could never flag it. Copies are
    called by ``copy_metric`` (``aligned`` undoes crops, shifts, rotations, mirroring and grey
    conversion; ``pixel`` with ``flip`` counts mirrored copies too), above the threshold calibrated on
    one distinct image per near-duplicate group, or above ``copy_threshold`` when given.
    """
    check_threshold(pixel_threshold)
    check_copy_settings(copy_metric, duplicate_level)
    if copy_threshold is not None:
        check_threshold(copy_threshold, "--copy-threshold")
    dev = resolve_device(device)
    run = RunDir.open(run_dir, kind=DiffusionConfig.kind)
    cfg = config_from_dict(DiffusionConfig, run.config)
    sscd_model = TorchScriptEmbedder(sscd, 288, "an SSCD model") if sscd else None
    inc_model = TorchScriptEmbedder(inception, 299, "Inception-v3") if inception else None
    path = Path(samples) if samples else latest_samples(run)
    gen, meta = load_samples(path)
    data = load_captioned(cfg.data)
    captions = data.captions_for(meta.get("prompt_captions", "training"))
    distinct = data.images[: data.distinct]
    check_same_size(gen, distinct)
    descriptors = None if sscd_model is None else (sscd_model.descriptors(gen), sscd_model.descriptors(distinct))
    n = len(distinct)
    result = compare(image_rows(gen), image_rows(distinct), gen.shape[-1], calibration=n, background=512,
                     copy_threshold=copy_threshold, descriptors=descriptors, pixel_threshold=pixel_threshold,
                     metric=copy_metric, duplicate_level=duplicate_level, flip=flip, device=dev)
    threshold = result.threshold
    rep = {"nearest": result.match.tolist(), "max_similarity": result.similarity.tolist()}
    copies = None
    if meta.get("train_index") is not None:
        copies = copy_rates(result.similarity, result.match, torch.tensor(meta["train_index"]), data.origins(),
                            data.duplicated(), threshold)
        copies.update(threshold_source=result.threshold_source, copy_metric=copy_metric,
                      copy_metric_version=metric_version(copy_metric), copied=result.copied().tolist())
    result = {"samples": str(path), "generations": len(gen), "train_images": len(data), "data": data.source,
              "compared_with": "distinct training images",
              "pixel_threshold": pixel_threshold, "device": str(dev), "flip_invariant": flip,
              "distinct_train_images": data.distinct, "copies": copies,
              "duplicates": result.duplicates.summary(),
              "replication": result.replication, "background": result.background,
              "own_prompt_nearest": _own_prompt_share(rep["nearest"], meta.get("train_index"), captions),
              "prompt_captions": meta.get("prompt_captions", "training"),
              "quality": quality(gen, data.images, meta["prompts"], captions, dataset=cfg.data.proxy_dataset,
                                 inception=inc_model, device=dev),
              "training_minutes": run.summary().get("minutes") if finished(run.path) else None}
    atomic_write_json(run.path / f"measure-{path.stem}.json", result)
    rows = [{"embedding": k, "replication score (p95)": v["score"], "share flagged": v["share"],
             "background score": result["background"][k]["score"]} for k, v in result["replication"].items()]
    run.write_table("replication", rows, title=f"Replication of {len(gen)} generations against {len(data)} training images")
    if copies is not None:
        run.write_table("copies", [{"prompts": group, "generations": copies[f"prompts_{key}"] if key else len(gen),
                                    "copy rate": copies["copy_rate" + (f"_{key}" if key else "")],
                                    "copies its own prompt's image": copies["own_prompt_copy_rate" + (f"_{key}" if key else "")]}
                                   for group, key in (("all", ""), ("of duplicated images", "dup"), ("of unique images", "unique"))],
                        title=f"Copies: nearest training image above {threshold:.3f} ({copies['threshold_source']})")
    run.write_table("quality", [result["quality"]], title="Quality (proxy FID: a trustlab-trained encoder, not Inception)")
    copy_grid(gen, distinct, rep, run.plot_path("copies"), metric=copy_metric)

    render_report(run.path)
    return result


def _own_prompt_share(nearest: list[int], train_index, captions: list[str]) -> float | None:
    """Share of generations whose nearest training image carries their own prompt's caption."""
    if train_index is None:
        return None
    return sum(captions[n] == captions[i] for n, i in zip(nearest, train_index)) / len(nearest)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def copy_grid(gen: torch.Tensor, train: torch.Tensor, rep: dict, path: Path, pairs: int = 24, metric: str = "pixel") -> None:
    """Generations (left) beside their nearest training image (right), sorted by ``metric`` similarity."""
    plt = _pyplot()

    sim = torch.tensor(rep["max_similarity"])
    order = sim.argsort(descending=True)[:pairs].tolist()
    cols = 6
    rows = (len(order) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 0.95), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        pair = torch.cat([gen[i], train[rep["nearest"][i]]], 2)
        ax.imshow(((pair.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
        ax.set_title(f"{float(sim[i]):.3f}", fontsize=7)
    fig.suptitle(f"generation | nearest training image ({metric} similarity)", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def duplicate_grid(groups: list[torch.Tensor], path: Path) -> None:
    """One row per near-duplicate group of training images ([K, 3, S, S] in [-1, 1] each), largest first."""
    plt = _pyplot()
    cols = max(len(g) for g in groups)
    fig, axes = plt.subplots(len(groups), cols, figsize=(cols * 0.9, len(groups) * 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, group in zip(axes, groups):
        for ax, img in zip(row, group):
            ax.imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    fig.suptitle("near-duplicate groups in the training images (one row each)", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


__all__ = ["copy_grid", "duplicate_grid", "measure_run"]
