"""Every setting of the PI jobs and its default, in one torch-free module.

The command line (``trustlab pi ...``) shows these defaults as its own, and benchmarks build
their runs from these classes, so a default changed here changes everywhere. Each config is
written resolved into its run folder, and ``validate()`` checks it at the edge, before any
data is read or model built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from trustlab.errors import ConfigError
from trustlab.pi.methods import DEFAULT_GRANULARITY, METHODS, MethodInfo
from trustlab.train_config import TrainConfig

if TYPE_CHECKING:  # the CLI reads this module at start-up; the data readers (numpy) load when data does
    from trustlab.data import ClassificationData


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    limit: int | None = None  # first N training images (None: all)
    test_limit: int | None = None
    size: int | None = None  # resize to size x size (None: native)

    def validate(self) -> None:
        for name in ("limit", "test_limit", "size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, not {value}")

    def load(self) -> ClassificationData:
        from trustlab.data import load_classification

        self.validate()
        return load_classification(self.dataset, data_dir=self.data_dir, limit=self.limit,
                                   test_limit=self.test_limit, size=self.size)


@dataclass(frozen=True)
class ClassifierConfig:
    model: str = "resnet18"  # resnet18 | wrn22-8
    width: float = 0.25  # 0.25 -> stage widths 16/32/64/128 ("width 16")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, augment=True))

    kind: ClassVar[str] = "pi-train"  # the run kind of its folders

    def validate(self) -> None:
        if self.width <= 0:
            raise ConfigError(f"--width must be positive, not {self.width:g}")
        self.data.validate()
        self.train.validate()


def check_source(teacher: str, model: str | None) -> None:
    """A chained job starts from exactly one teacher: a run folder, or your own trained model."""
    if bool(teacher) == bool(model):
        raise ConfigError("give the teacher as --teacher RUN (a trustlab run folder) or as --model FILE.py:FACTORY "
                          "(your trained model, with --dataset), not " + ("both" if teacher else "neither"))


SNL_SCHEDULES = ("ramp", "until-budget")  # see trustlab.pi.reductions.SNL


@dataclass(frozen=True)
class ReductionConfig:
    method: str = "senet"
    teacher: str = ""  # a run folder; or ``model``: FILE.py:FACTORY returning your trained model, with ``data``
    model: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    budget: int = 0
    granularity: str = DEFAULT_GRANULARITY
    search_epochs: int = 2  # with 2 fine-tuning epochs: the best SENet recipe of bench/pi_senet_ablation.py; SNL until-budget: the cap
    finetune_epochs: int = 2
    batch_size: int = 128
    lr: float = 0.01  # fine-tuning (SGD, cosine)
    search_lr: float = 0.01  # mask scores / α (AdamW, constant)
    temperature: float = 4.0
    beta: float = 1.0  # PRAM weight (SENet only)
    proxy_density: float = 0.1
    snl_lambda: float = 1e-4  # SNL's initial penalty weight on the alphas
    snl_schedule: str = "ramp"  # ramp: lambda x1.1 every 1% of search steps; until-budget: SNL's public-code rule
    snl_threshold: float = 1e-2  # until-budget: an alpha above it counts as a kept ReLU
    probe_images: int = 1000  # images used for sensitivity and score initialisation
    train_limit: int | None = None  # train on the teacher's first N training images only (shorter schedule)
    seed: int = 0
    device: str = "auto"

    @property
    def info(self) -> MethodInfo:
        """The method's entry in :data:`~trustlab.pi.methods.METHODS` (an unknown method is a ConfigError)."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown method '{self.method}': choose one of {', '.join(METHODS)}")
        return METHODS[self.method]

    @property
    def kind(self) -> str:
        """The run kind of its folders: the method's (``pi-senet``, ...)."""
        return self.info.kind

    def validate(self) -> None:
        self.data.validate()
        if self.granularity not in self.info.granularities:
            able = [m.name for m in METHODS.values() if self.granularity in m.granularities]
            raise ConfigError(f"{self.granularity} granularity is available for {', '.join(able) or 'no method'} only")
        if self.snl_schedule not in SNL_SCHEDULES:
            raise ConfigError(f"unknown SNL schedule '{self.snl_schedule}': choose one of {', '.join(SNL_SCHEDULES)}")
        if self.snl_schedule != "ramp" and self.method != "snl":
            raise ConfigError(f"--snl-schedule {self.snl_schedule} is SNL's search rule: use it with pi snl only")
        if self.snl_lambda <= 0 or self.snl_threshold <= 0:
            raise ConfigError("the SNL penalty weight and threshold must be positive")
        if self.search_epochs < 0 or self.finetune_epochs < 1:
            raise ConfigError("search epochs must be >= 0 and fine-tuning epochs >= 1")
        if self.budget < 0 or self.batch_size < 1 or min(self.lr, self.search_lr, self.temperature) <= 0:
            raise ConfigError("--budget must be >= 0, --batch-size >= 1, and learning rates and temperature positive")


@dataclass(frozen=True)
class ShallowConfig:
    teacher: str = ""  # as in ReductionConfig
    model: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    target_relu_reduction: float = 1.7
    kernel: int = 3  # 0: exact merge (5x5 / 7x7 kernels); 3: 3x3 merged kernels (fewer MACs)
    anneal_epochs: int = 1  # inner-ReLU slope 0 -> 1 before the merge
    ring_epochs: int | None = None  # outer taps scaled 1 -> 0 before the cut to 3x3; None: 1 with kernel 3, else 0
    finetune_epochs: int = 2
    beta: float = 0.0  # weight of block-wise (post-ReLU block output) alignment with the teacher
    batch_size: int = 128
    lr: float = 0.01
    temperature: float = 4.0
    probe_images: int = 1000
    train_limit: int | None = None  # fine-tune on the teacher's first N training images only
    seed: int = 0
    device: str = "auto"

    kind: ClassVar[str] = "pi-shallow"

    @property
    def ring_stage_epochs(self) -> int:
        if self.ring_epochs is None:
            return 1 if self.kernel else 0
        return self.ring_epochs

    def validate(self) -> None:
        self.data.validate()
        if self.kernel not in (0, 3):
            raise ConfigError(f"--kernel must be 0 (exact merge) or 3, not {self.kernel}")
        if min(self.anneal_epochs, self.ring_stage_epochs) < 0 or self.beta < 0:
            raise ConfigError("--anneal-epochs, --ring-epochs and --beta cannot be negative")
        if self.finetune_epochs < 1:
            raise ConfigError("--finetune-epochs must be at least 1: the fine-tuning stage saves the shallow model")
        if self.ring_stage_epochs and not self.kernel:
            raise ConfigError("--ring-epochs shrinks merged kernels to 3x3: use it with --kernel 3")
        if self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--batch-size must be >= 1 and --lr positive")
