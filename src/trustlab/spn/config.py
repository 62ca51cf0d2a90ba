"""Every setting of the SPN jobs and its default, in one torch-free module.

``trustlab spn fit`` and ``spn compress`` show these defaults as their own, and ``bench/spn.py``
builds its runs from these classes. Each config is written resolved into its run folder and
checked by ``validate()`` before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trustlab.errors import ConfigError

STRUCTURES = ("learnspn", "rat")
INITS = ("auto", "exact", "random")
ORDERS = ("spn", "mi")  # the SPN's depth-first walk, or dependent variables side by side
NMF_LOSSES = {"kl": {"beta_loss": "kullback-leibler", "solver": "mu"},  # scikit-learn NMF settings per rounding
              "als": {"beta_loss": "frobenius", "solver": "cd"}}
FITS = ("adam", "em")  # how a train is fitted: gradient steps on the log cores, or expectation-maximisation
ROUNDINGS = tuple(NMF_LOSSES)  # truncation of the exact train: KL-divergence NMF or nonnegative least squares


@dataclass(frozen=True)
class SPNDataConfig:
    dataset: str = "digits"  # a registry dataset, "csv" with csv=PATH, or "debd" with name and data_dir
    csv: str | None = None
    name: str | None = None  # debd: the set's name (nltcs, plants, ...)
    data_dir: str | None = None  # debd: the folder holding NAME.{train,valid,test}.data
    size: int | None = None  # down-sample images to size x size before binarising
    threshold: float = 0.5
    with_class: bool = True  # the class as variable 0 (generative classifier)
    limit: int | None = None
    test_limit: int | None = None
    valid_share: float = 0.1  # training rows held out for validation where the data set has no fixed split

    LEGACY: ClassVar[dict] = {"valid_share": 0.0}  # runs written before the split trained on every row

    def validate(self) -> None:
        if self.dataset == "csv" and not self.csv:
            raise ConfigError("--dataset csv needs --csv PATH")
        if self.dataset == "debd" and (not self.name or not self.data_dir):
            raise ConfigError("--dataset debd needs --name NAME and --data-dir DIR")
        if not 0 <= self.valid_share < 1:
            raise ConfigError(f"--valid-share {self.valid_share:g}: a share of the training rows lies in [0, 1)")


@dataclass(frozen=True)
class FitConfig:
    data: SPNDataConfig = field(default_factory=SPNDataConfig)
    structure: str = "learnspn"
    min_instances: int = 30  # LearnSPN: fewer rows end in a factorised product
    alpha: float = 0.001  # LearnSPN: p-value below which two variables count as dependent
    clusters: int = 2
    depth: int = 2  # random region graph
    repetitions: int = 4
    sums: int = 4
    leaves: int = 4
    em_iterations: int = 0  # EM after structure learning (random region graphs need it)
    seed: int = 0

    kind: ClassVar[str] = "spn-fit"

    def validate(self) -> None:
        self.data.validate()
        if self.structure not in STRUCTURES:
            raise ConfigError(f"unknown structure '{self.structure}': use {' or '.join(STRUCTURES)}")
        if self.em_iterations < 0:
            raise ConfigError("--em-iterations must be >= 0")


@dataclass(frozen=True)
class CompressConfig:
    source: str = ""  # the spn-fit run folder
    ranks: tuple[int, ...] = (32,)
    init: str = "auto"  # exact: truncate the exact map; random: fit a random train; auto: exact when it fits max_rank
    distill_samples: int = 20000  # rows sampled from the SPN added to the training rows (0: the data alone)
    epochs: int = 10  # at most (EM: iterations): the epoch with the best validation likelihood is kept
    fit: str = "adam"  # FITS
    lr: float = 0.02
    batch_size: int = 256
    discriminative: float = 0.0  # weight of log p(class | x) in the fine-tuning objective
    nmf_iterations: int = 1500
    rounding: str = "kl"  # how the exact train is truncated (ROUNDINGS)
    order: str = "spn"  # the variable order of the train (ORDERS)
    max_rank: int = 4096  # the largest exact train that is built
    seed: int = 0

    kind: ClassVar[str] = "spn-compress"

    def validate(self) -> None:
        if not self.ranks or min(self.ranks) < 1:
            raise ConfigError(f"ranks {list(self.ranks)}: every rank must be at least 1")
        if self.init not in INITS:
            raise ConfigError(f"--init {self.init}: use {', '.join(INITS)}")
        if self.distill_samples < 0:
            raise ConfigError("--distill-samples must be >= 0")
        if self.order not in ORDERS:
            raise ConfigError(f"--order {self.order}: use {', '.join(ORDERS)}")
        if self.fit not in FITS:
            raise ConfigError(f"--fit {self.fit}: use {', '.join(FITS)}")
        if self.fit == "em" and self.discriminative:
            raise ConfigError("--fit em maximises the likelihood alone: use --fit adam with --discriminative")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"--rounding {self.rounding}: use {', '.join(ROUNDINGS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--epochs and --batch-size must be at least 1 and --lr positive")
