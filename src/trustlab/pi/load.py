"""Load the model of any private-inference run folder, whatever produced it.

Run kinds chain: ``pi-train`` (all-ReLU) → ``pi-shallow`` (merged blocks) → ``pi-senet`` /
``pi-snl`` / ``pi-layerdrop`` (partial ReLUs), each naming its teacher run; a model is rebuilt
by replaying that chain (architecture, merges, masks) and loading the run's own weights.

A chained run records its teacher twice (:func:`teacher_link`): as given, and relative to the
run folder itself. The second one lets a chain of run folders move together (another
directory, another machine); the first keeps run folders written before it loadable.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch.nn as nn

from trustlab.errors import RunError
from trustlab.pi.config import ClassifierConfig, DataConfig, ShallowConfig, check_source
from trustlab.pi.graph import split_sites
from trustlab.pi.masks import install_partial_relus
from trustlab.pi.merge import apply_merges
from trustlab.pi.methods import DEFAULT_GRANULARITY, METHODS
from trustlab.pi.models import build_model, check_input
from trustlab.pi.training import load_classifier
from trustlab.runs import Job, RunDir, config_from_dict
from trustlab.train import load_weights

REDUCTION_KINDS = tuple(m.kind for m in METHODS.values())
KINDS = (ClassifierConfig.kind, ShallowConfig.kind, *REDUCTION_KINDS)


def load_pi_model(run_dir: str | Path) -> tuple[nn.Module, tuple[int, int, int], DataConfig]:
    """(model in eval mode, input shape, the data configuration of the root training run)."""
    run = RunDir.open(run_dir, kind=KINDS)
    if run.kind == ClassifierConfig.kind:
        model, cfg, shape = load_classifier(run.path)
        return model, shape, cfg.data
    base, shape, data = _teacher_of(run)
    return rebuild(run, base, shape), shape, data


def rebuild(run: RunDir, base: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """The model of the chained run ``run`` from the model it started from: its merges or masks
    replayed on ``base`` (which is not changed), then its own weights."""
    if run.kind == ShallowConfig.kind:
        model = apply_merges(split_sites(base, shape)[0], run.summary()["merged_blocks"], run.config["kernel"] or None)
    else:
        model, _ = install_partial_relus(base, shape, run.config.get("granularity", DEFAULT_GRANULARITY))
    return load_weights(model, run, "finetune")


def _teacher_of(run: RunDir) -> tuple[nn.Module, tuple[int, int, int], DataConfig]:
    """The model a chained run started from: its teacher run's, or the user's factory's."""
    spec = run.config.get("model")
    if spec:
        summary = run.summary()
        shape = tuple(summary["input_shape"])
        data = config_from_dict(DataConfig, run.config.get("data") or {})
        return build_model(spec, int(summary["classes"]), shape[0]).eval(), shape, data
    if not run.config.get("teacher"):
        raise RunError(f"{run.path} was made in Python from a model object, which a run folder cannot rebuild: "
                       f"use trustlab.pi.load_reduced(model, '{run.path}') with that model")
    return load_pi_model(teacher_path(run))


def start_model(teacher: str, spec: str | None, data: DataConfig, out: str | Path
                ) -> tuple[nn.Module, tuple[int, int, int], DataConfig, dict]:
    """What a chained job starts from, and the summary fields that name it: a teacher run folder,
    or the trained model that ``FILE.py:FACTORY`` returns, with ``data`` (checked, before any work)."""
    check_source(teacher, spec)
    if spec:
        loaded = data.load()
        model = build_model(spec, len(loaded.classes), loaded.shape[0]).eval()
        check_input(model, loaded.shape)
        return model, loaded.shape, data, {"model": spec}
    model, shape, data_cfg = load_pi_model(teacher)
    return model, shape, data_cfg, teacher_link(teacher, out)


def chained_job(cfg, out: str | Path, resume: bool) -> tuple:
    """What a reduction or shallow job runs on: its :class:`~trustlab.runs.Job`, the model it starts
    from, that model's input shape, the data (first ``cfg.train_limit`` training images) and the
    summary fields naming its source, in the order ``reduce_model`` and ``shallow_model`` take them."""
    job = Job(cfg, out, resume)
    cfg = job.config
    teacher, shape, data_cfg, link = start_model(cfg.teacher, cfg.model, cfg.data, out)
    data = replace(data_cfg, limit=cfg.train_limit or data_cfg.limit).load()
    return job, teacher, shape, data, link


def teacher_link(teacher: str | Path, out: str | Path) -> dict[str, str]:
    """The summary fields naming a chained run's teacher: as given, and from the run folder ``out``."""
    return {"teacher": str(teacher), "teacher_from_run": os.path.relpath(Path(teacher).resolve(), Path(out).resolve())}


def teacher_path(run: RunDir) -> Path:
    """The teacher folder of a chained run: where the run folder says it is relative to itself when
    it is there (the folders moved together), else the path as given."""
    linked = run.summary().get("teacher_from_run")
    if linked and (run.path / linked / "config.yaml").exists():
        return run.path / linked
    return Path(run.config["teacher"])
