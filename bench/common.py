"""What every benchmark writes: ``bench/results/<name>.json`` with headline, settings, machine, date."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from dataclasses import replace
from pathlib import Path

from trustlab.runs import atomic_write_json, finished

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python": platform.python_version()}


def mean_sd(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and count: how every benchmark reports seeds."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def accuracy_gap(rows: list[dict], a: str, b: str, fraction: str) -> dict:
    """Method ``a``'s test accuracy minus method ``b``'s in points at one budget (``fraction``): mean and sd
    over the seeds both ran (rows carry ``method``, ``seed``, ``fraction``, ``test_acc``)."""
    acc = {(r["method"], r["seed"]): r["test_acc"] for r in rows if r["fraction"] == fraction}
    return mean_sd([100 * (acc[(a, s)] - acc[(b, s)]) for (m, s) in acc if m == a and (b, s) in acc])


def seeded(runs: Path, name: str, seed: int, first: int) -> Path:
    """A run's folder for ``seed``; the first seed keeps the unsuffixed name that one-seed versions of a
    benchmark wrote, so their finished runs are reused."""
    return runs / (name if seed == first else f"{name}-s{seed}")


def ll_against_parameters(ax, title: str, xlabel: str = "parameters") -> None:
    """Finish an axis of validation log-likelihood against a parameter count on a log scale (the tSPN plots)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation log-likelihood")
    ax.set_title(title)
    ax.legend(fontsize=7)


def write_result(name: str, headline: dict, settings: dict, **detail) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {"headline": headline, "settings": settings, "machine": machine(),
                             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **detail})
    return path


def ensure_teacher(path: Path, epochs: int = 4, limit: int | None = None, seed: int = 0, model: str | None = None) -> dict:
    """The PI benchmarks' all-ReLU teacher (ResNet18 width 16 on Fashion-MNIST, or ``model``, a
    FILE.py:FACTORY spec): trained (or resumed) into ``path`` unless complete there; returns its summary."""
    from trustlab.pi.config import ClassifierConfig, DataConfig
    from trustlab.pi.training import train_classifier
    from trustlab.runs import RunDir

    path = Path(path)
    if not finished(path):
        default = ClassifierConfig()  # ResNet18 width 16 on Fashion-MNIST, augmented
        cfg = replace(default, model=model or default.model, data=DataConfig(limit=limit),
                      train=replace(default.train, epochs=epochs, seed=seed))
        train_classifier(cfg, path, resume=(path / "config.yaml").exists())
    return RunDir(path).summary()
