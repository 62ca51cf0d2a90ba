"""The private-inference methods as Python calls on your own model and data.

The shape users of pruning libraries know (torch-pruning, NNCF): a model and example data in,
a model out. Any ``nn.Module`` that torch.fx or torch.export can trace works, whatever form
its ReLUs take (:mod:`trustlab.pi.graph`); data is ``(images, labels)`` tensors, a torch
``Dataset`` or ``DataLoader``, or an ImageFolder tree (:mod:`trustlab.data.adapters`).

>>> import trustlab.pi as pi
>>> acc = pi.count(model, (3, 32, 32))                         # ReLUs, comparisons, MACs per layer
>>> small = pi.reduce(model, (x, y), budget=acc.relus // 2, method="senet", out="runs/mine-senet")
>>> flat = pi.shallow(model, "path/to/images", target_relu_reduction=1.5, out="runs/mine-shallow")
>>> cost = pi.secure_cost(small, (3, 32, 32), protocol="semi2k")   # SPU traffic, top-1 vs plaintext

Each reduction writes a run folder (resumable with ``resume=True``, with its report); the model
it returns is rebuilt from that folder and your model: :func:`load_reduced` does the same later.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn as nn

from trustlab.data.adapters import classification_data
from trustlab.errors import ConfigError
from trustlab.pi.accounting import Accounting
from trustlab.pi.accounting import count as _count
from trustlab.pi.config import ReductionConfig, ShallowConfig
from trustlab.pi.load import REDUCTION_KINDS, rebuild
from trustlab.pi.models import check_input
from trustlab.runs import Job, RunDir


def count(model: nn.Module, input_shape: tuple[int, ...]) -> Accounting:
    """ReLUs, secure comparisons, MACs and parameters of ``model``, per call site and in total."""
    return _count(model, tuple(input_shape))


def _config(cls, settings: dict, **fixed):
    known = {f.name for f in fields(cls)} - {"teacher", "model", "data"} - set(fixed)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}: choose from {', '.join(sorted(known))}")
    return cls(**fixed, **settings)


def _prepare(model: nn.Module, data, test, cfg) -> tuple:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}")
    d = classification_data(data, test)
    if cfg.train_limit:
        d = replace(d, x_train=d.x_train[: cfg.train_limit], y_train=d.y_train[: cfg.train_limit])
    check_input(model, d.shape)
    return d


def reduce(model: nn.Module, data, budget: int, *, method: str = "senet", test=None, out: str | Path | None = None,
           resume: bool = False, quiet: bool = True, **settings) -> nn.Module:
    """``model`` with at most ``budget`` ReLUs, by ``method`` (senet, snl, layerdrop), distilled from it.

    ``settings`` are those of :class:`~trustlab.pi.config.ReductionConfig` (``search_epochs``,
    ``finetune_epochs``, ``granularity``, ``seed``, ...). Returns the reduced model in eval mode;
    the run folder ``out`` (default ``runs/pi-METHOD-BUDGET``) holds its weights, masks and report.
    """
    from trustlab.pi.reductions import reduce_model

    cfg = _config(ReductionConfig, settings, method=method, budget=int(budget))
    job = Job(cfg, out or f"runs/pi-{method}-{budget}", resume)
    d = _prepare(model, data, test, job.config)
    run = reduce_model(job, model, d.shape, d, {}, resume=resume, quiet=quiet)
    return load_reduced(model, run.path)


def shallow(model: nn.Module, data, *, target_relu_reduction: float = ShallowConfig.target_relu_reduction, test=None,
            out: str | Path | None = None, resume: bool = False, quiet: bool = True, **settings) -> nn.Module:
    """``model`` made shallow: its least sensitive conv–BN–ReLU–conv–BN blocks (with an identity or
    1×1-projection skip) lose their inner ReLU and become one convolution, until the ReLU count falls
    by ``target_relu_reduction``. ``settings`` are those of :class:`~trustlab.pi.config.ShallowConfig`."""
    from trustlab.pi.shallow_models import shallow_model

    cfg = _config(ShallowConfig, settings, target_relu_reduction=float(target_relu_reduction))
    job = Job(cfg, out or "runs/pi-shallow", resume)
    d = _prepare(model, data, test, job.config)
    run = shallow_model(job, model, d.shape, d, {}, resume=resume, quiet=quiet)
    return load_reduced(model, run.path)


def load_reduced(model: nn.Module, run_dir: str | Path) -> nn.Module:
    """The reduced (or shallow) model of the run folder ``run_dir``, rebuilt on ``model`` — the
    architecture it started from, e.g. a fresh instance from your code: masks or merges replayed,
    then the run's weights (safetensors). ``model`` itself is not changed."""
    run = RunDir.open(run_dir, kind=(*REDUCTION_KINDS, ShallowConfig.kind))
    return rebuild(run, model, tuple(run.summary()["input_shape"]))


def secure_cost(model: nn.Module, input_shape: tuple[int, ...] | None = None, *, images: torch.Tensor | None = None,
                protocol: str = "semi2k", weights: str = "secret", relu_mode: str = "gather") -> dict:
    """Two-party secure inference of ``model`` on SPU's simulator: traffic (non-linear and linear
    bytes), rounds, time per image, and whether its top-1 equals the plaintext model's.

    ``images`` (N×C×H×W) default to two random images of ``input_shape`` (seed 0).
    """
    from trustlab.pi.secure import measure_secure

    if images is None:
        if input_shape is None:
            raise ConfigError("give input_shape (C, H, W) or images")
        images = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    images = torch.as_tensor(images).float()
    shape = tuple(input_shape or images.shape[1:])
    if tuple(images.shape[1:]) != shape:
        raise ConfigError(f"images are {tuple(images.shape[1:])}, input_shape is {shape}")
    return measure_secure(model, shape, images, protocol, weights, relu_mode)[0]


__all__ = ["count", "load_reduced", "reduce", "secure_cost", "shallow"]
