"""Training an all-ReLU classifier: the teacher every ReLU-reduction method starts from."""

from __future__ import annotations

from pathlib import Path

from trustlab.data import ClassificationData
from trustlab.pi.accounting import count
from trustlab.pi.config import ClassifierConfig
from trustlab.pi.models import build_model, check_input
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, config_from_dict
from trustlab.train import fit, load_weights, world


def build_for(cfg: ClassifierConfig, data: ClassificationData):
    """The model of ``cfg`` for ``data``, initialised from ``cfg.train.seed``."""
    import torch

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(data.classes), data.shape[0], cfg.width)
    check_input(model, data.shape)
    return model


def load_classifier(run_dir: str | Path):
    """The trained model of a ``pi-train`` run folder, its config and its input shape."""

    run = RunDir.open(run_dir, kind=ClassifierConfig.kind)
    cfg = config_from_dict(ClassifierConfig, run.config)
    meta = run.summary()
    shape = tuple(meta["input_shape"])
    model = build_model(cfg.model, int(meta["classes"]), shape[0], cfg.width)
    return load_weights(model, run), cfg, shape


def train_classifier(cfg: ClassifierConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Train the all-ReLU model described by ``cfg`` into the run folder ``out``."""
    job = Job(cfg, out, resume)
    cfg = job.config
    data = cfg.data.load()
    model = build_for(cfg, data)
    run = job.start()
    result = fit(model, data.x_train, data.y_train, cfg.train, run, x_test=data.x_test, y_test=data.y_test,
                 resume=resume, quiet=quiet)
    if world()[0] != 0:  # under torchrun, rank 0 writes the results
        return run
    acc = count(model, data.shape)
    run.write_table("layers", [{"layer": r.name, "kind": r.kind + (" (not covered)" if r.note else ""),
                                "output": "x".join(map(str, r.output)), "relus": r.relus, "comparisons": r.comparisons,
                                "macs": r.macs, "params": r.params} for r in acc.layers],
                    title="Per-layer ReLUs, secure comparisons, MACs and parameters")
    run.write_summary({"test_acc": result.get("test_acc"), "test_loss": result.get("test_loss"), "relus": acc.relus,
                       "macs": acc.macs, "params": acc.params, "input_shape": list(data.shape),
                       "classes": len(data.classes), "train_examples": len(data.x_train), "steps": result["steps"]})
    render_report(run.path)
    return run


__all__ = ["build_for", "load_classifier", "train_classifier"]
