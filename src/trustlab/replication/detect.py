"""``detect``: which prompts does a model memorize? Scores from the model alone, into a run folder.

The model is a testbed run (its EMA weights, its text encoder) or a Stable Diffusion folder
(``--pretrained``); the prompts are a file, or by default a run's own distinct training captions,
labelled *memorized* when their image was duplicated in training (the testbed's known cause of
replication). Each prompt gets every detector's score (:mod:`trustlab.replication.memorization`);
the run folder holds ``scores.csv`` (prompts ranked by the first detector), a summary, and, when
labels are known, each detector's ROC curve, AUC and true-positive rate at 1% false positives.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from trustlab.replication.config import CaptionDataConfig, DetectConfig, DiffusionConfig
from trustlab.replication.memorization import Prompts, read_prompts, roc
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, atomic_write_text
from trustlab.train import resolve_device


def load_model(cfg: DetectConfig):
    """(denoiser, diffusion config, text encoder) of a testbed run or of a Stable Diffusion folder."""
    from trustlab.replication import pretrained
    from trustlab.replication.pipeline_folder import check_pipeline, vae_factor
    from trustlab.replication.training import build_unet, load_trained, text_encoder_for

    if cfg.run:
        unet, dcfg, encoder, _ = load_trained(cfg.run)
        return unet, dcfg, encoder
    parts = check_pipeline(cfg.pretrained)
    size = cfg.size or int(parts["unet"].get("sample_size", 64)) * vae_factor(parts["vae"])
    dcfg = DiffusionConfig(pretrained=cfg.pretrained, data=CaptionDataConfig(dataset="folder", size=size))
    pretrained.quiet_loading()
    return build_unet(dcfg, 0).eval(), dcfg, text_encoder_for(dcfg)


def run_prompts(dcfg: DiffusionConfig) -> Prompts:
    """A run's distinct training captions, labelled memorized when their image was duplicated in training."""
    from trustlab.replication.data import load_captioned

    data = load_captioned(dcfg.data)
    distinct = data.distinct
    return Prompts(list(data.captions[:distinct]), data.duplicated().numpy() if data.origin is not None else None)


def detect(cfg: DetectConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Score ``cfg``'s prompts with every chosen detector into the run folder ``out``."""
    from trustlab.replication.sampling import score_prompts

    job = Job(cfg, out, resume)
    cfg = job.config
    detectors = cfg.detector_names()
    device = resolve_device(cfg.device)
    prompts = read_prompts(cfg.prompts) if cfg.prompts else None  # a bad file is refused before the model loads
    unet, dcfg, encoder = load_model(cfg)
    prompts = prompts or run_prompts(dcfg)
    run = job.start()
    t0 = time.perf_counter()
    scores = score_prompts(unet, dcfg, encoder, prompts.texts, seeds=cfg.seeds, first_steps=cfg.first_steps,
                           steps=cfg.steps, guidance=cfg.guidance, detectors=detectors, batch_size=cfg.batch_size,
                           device=str(device), quiet=quiet)
    seconds = time.perf_counter() - t0
    order = np.argsort(-scores[detectors[0]], kind="stable")
    _write_scores(run, prompts, scores, order)
    summary = {"prompts": len(prompts.texts), "detectors": list(detectors), "seeds": cfg.seeds,
               "first_steps": cfg.first_steps, "model": cfg.run or cfg.pretrained, "device": str(device),
               "seconds": seconds, "prompts_per_second": len(prompts.texts) * cfg.seeds / seconds,
               "source": "prompts file" if cfg.prompts else "the run's distinct training captions (memorized: duplicated)"}
    if prompts.labels is not None and 0 < prompts.labels.sum() < len(prompts.labels):
        curves = {d: roc(scores[d], prompts.labels) for d in detectors}
        summary["memorized"] = int(prompts.labels.sum())
        summary["roc"] = {d: {k: c[k] for k in ("auc", "tpr_at_1pct_fpr")} for d, c in curves.items()}
        run.write_table("detection", [{"detector": d, "ROC AUC": c["auc"], "TPR at 1% FPR": c["tpr_at_1pct_fpr"]}
                                      for d, c in curves.items()],
                        title=f"Memorized ({int(prompts.labels.sum())}) against other prompts "
                              f"({int((~prompts.labels).sum())}), {cfg.seeds} seeds, first {cfg.first_steps} step(s)")
        _plot(run, curves, scores, prompts.labels)
    run.write_table("ranking", [{"rank": r + 1, "prompt": prompts.texts[i], **{d: float(scores[d][i]) for d in detectors},
                                 **({} if prompts.labels is None else {"memorized": bool(prompts.labels[i])})}
                                for r, i in enumerate(order[:30])],
                    title=f"The prompts most likely memorized (by {detectors[0]})")
    run.write_summary(summary)
    render_report(run.path)
    return run


def _write_scores(run: RunDir, prompts: Prompts, scores: dict[str, np.ndarray], order: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", *scores] + ([] if prompts.labels is None else ["memorized"]))
    for i in order:
        w.writerow([prompts.texts[i], *(f"{v[i]:.6g}" for v in scores.values())]
                   + ([] if prompts.labels is None else [int(prompts.labels[i])]))
    atomic_write_text(run.path / "scores.csv", buf.getvalue())


def _plot(run: RunDir, curves: dict, scores: dict[str, np.ndarray], labels: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(scores), figsize=(4.2 * (1 + len(scores)), 3.6))
    for d, c in curves.items():
        axes[0].plot(c["fpr"], c["tpr"], label=f"{d} (AUC {c['auc']:.3f})")
    axes[0].plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    axes[0].set_xlabel("false-positive rate")
    axes[0].set_ylabel("true-positive rate")
    axes[0].legend(fontsize=8)
    for ax, (d, v) in zip(axes[1:], scores.items()):
        ax.hist([v[~labels], v[labels]], bins=30, label=["other prompts", "memorized"], histtype="stepfilled", alpha=0.6)
        ax.set_xlabel(d)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.plot_path("roc"), dpi=110)
    plt.close(fig)


__all__ = ["detect", "load_model", "run_prompts"]
