"""Training an all-ReLU classifier: the teacher every ReLU-reduction method starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trustlab.data import ClassificationData, load_classification
from trustlab.pi.accounting import count
from trustlab.pi.models import build_model, check_input
from trustlab.runs import RunDir, config_from_dict, load_checkpoint_file, resumed_config
from trustlab.train import TrainConfig, fit, load_state_tensors, world


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    limit: int | None = None  # first N training images (None: all)
    test_limit: int | None = None
    size: int | None = None  # resize to size x size (None: native)

    def load(self) -> ClassificationData:
        return load_classification(self.dataset, data_dir=self.data_dir, limit=self.limit,
                                   test_limit=self.test_limit, size=self.size)


@dataclass(frozen=True)
class ClassifierConfig:
    model: str = "resnet18"
    width: float = 0.25  # 0.25 -> stage widths 16/32/64/128 ("width 16")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, augment=True))


def build_for(cfg: ClassifierConfig, data: ClassificationData):
    """The model of ``cfg`` for ``data``, initialised from ``cfg.train.seed``."""
    import torch

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(data.classes), data.shape[0], cfg.width)
    check_input(model, data.shape)
    return model


def load_classifier(run_dir: str | Path):
    """The trained model of a ``pi-train`` run folder, its config and its input shape."""

    run = RunDir.open(run_dir, kind="pi-train")
    cfg = config_from_dict(ClassifierConfig, run.config)
    meta = run.summary()
    shape = tuple(meta["input_shape"])
    model = build_model(cfg.model, int(meta["classes"]), shape[0], cfg.width)
    tensors, _ = load_checkpoint_file(run.checkpoint_path("last"))
    load_state_tensors(model, tensors)
    return model.eval(), cfg, shape


def train_classifier(cfg: ClassifierConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Train the all-ReLU model described by ``cfg`` into the run folder ``out``."""
    cfg = resumed_config(ClassifierConfig, out, "pi-train", cfg, resume)
    data = cfg.data.load()
    model = build_for(cfg, data)
    run = RunDir.start(out, cfg, "pi-train", resume)
    result = fit(model, data.x_train, data.y_train, cfg.train, run, x_test=data.x_test, y_test=data.y_test,
                 resume=resume, quiet=quiet)
    if world()[0] != 0:  # under torchrun, rank 0 writes the results
        return run
    acc = count(model, data.shape)
    run.write_table("layers", [{"layer": r.name, "kind": r.kind, "output": "x".join(map(str, r.output)),
                                "relus": r.relus, "macs": r.macs, "params": r.params} for r in acc.layers],
                    title="Per-layer ReLUs, MACs and parameters")
    run.write_summary({"test_acc": result.get("test_acc"), "test_loss": result.get("test_loss"), "relus": acc.relus,
                       "macs": acc.macs, "params": acc.params, "input_shape": list(data.shape),
                       "classes": len(data.classes), "train_examples": len(data.x_train), "steps": result["steps"]})
    return run


__all__ = ["ClassifierConfig", "DataConfig", "TrainConfig", "build_for", "load_classifier", "train_classifier"]
