"""The settings of the shared training loop (:func:`trustlab.train.fit`), in a module without torch,
so that the command line can show them as its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from trustlab.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    augment: bool = False  # random shift by up to 2 pixels (zero padding)
    seed: int = 0
    checkpoint_every: int = 200  # steps; a checkpoint is also written at each epoch end
    eval_batch_size: int = 1000
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs, batch size and learning rate must be positive")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"unknown optimizer '{self.optimizer}': use sgd or adamw")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"unknown schedule '{self.schedule}': use cosine or constant")
