"""Every setting of the replication testbed and its default, in one torch-free module.

``trustlab replication train`` shows these defaults as its own and ``bench/replication.py``
builds its runs from these classes. Each config is written resolved into its run folder
(``config.yaml``) and checked by ``validate()`` before any data is read or model built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from trustlab.errors import ConfigError
from trustlab.replication.mitigations import TRAIN, parse
from trustlab.replication.pipeline_folder import check_pipeline, vae_factor
from trustlab.replication.skips import Skip, check_skips, itb_kinds, skips_of

if TYPE_CHECKING:  # the CLI reads this module at start-up: HTTP and the data registry load when used
    from trustlab.replication.llm import ChatClient


DETECTORS = ("magnitude", "attention-entropy")  # memorization detectors from the model alone (memorization.py)


def check_detector(name: str, option: str = "--gate-detector") -> str:
    """``name`` if it is a memorization detector, else a one-line error naming ``option``."""
    if name not in DETECTORS:
        raise ConfigError(f"{option} {name}: use {' or '.join(DETECTORS)}")
    return name
COPY_METRICS = ("aligned", "pixel", "learned")  # how a generation is compared with a training image to call it a copy
DUPLICATE_LEVEL = 0.98  # two training images at least this similar are one image (calibration takes one per group)
ALIGN_MIN_SIZE = 16  # the aligned metric blurs and halves images: below this side nothing is left to align


def check_copy_settings(metric: str, duplicate_level: float, size: int | None = None) -> None:
    """The copy metric exists, the duplicate level is a similarity, and images compared at ``size`` can be aligned."""
    if metric not in COPY_METRICS:
        raise ConfigError(f"--copy-metric {metric}: use {' or '.join(COPY_METRICS)}")
    if not 0 < duplicate_level <= 1:
        raise ConfigError(f"--duplicate-level {duplicate_level:g}: a similarity level lies in (0, 1]")
    if metric == "aligned" and size is not None and size < ALIGN_MIN_SIZE:
        raise ConfigError(f"images compared at {size}x{size} are too small to align (at least {ALIGN_MIN_SIZE}x"
                          f"{ALIGN_MIN_SIZE}): compare at --size {ALIGN_MIN_SIZE} or more, or use --copy-metric pixel")


@dataclass(frozen=True)
class CaptionDataConfig:
    dataset: str = "emoji"  # a registry dataset with captions, or "folder" with folder=PATH
    folder: str | None = None
    n: int = 64  # seeded subset size (None or 0: all)
    size: int = 32
    captions: str = "unique"  # unique | class
    duplicate_share: float = 0.0  # share of the n images repeated
    duplicate_times: int = 1  # extra copies of each repeated image
    duplicate_scheme: str = "dup_both"  # dup_both (image and caption repeated) | dup_image (other captions)
    skin_tones: bool = False  # emoji: keep the skin-tone variations (near-identical to their base emoji)
    near_duplicate: float = 0.9  # registry data: drop an image this similar to an earlier one (1: keep all)
    generalize: str = ""  # "", wordnet or llm: train on generalized captions
    llm_url: str = ""  # with generalize=llm: an OpenAI-compatible endpoint and model
    llm_model: str = ""
    seed: int = 0

    # run folders written before the near-duplicate filter kept every source image
    LEGACY: ClassVar[dict] = {"skin_tones": True, "near_duplicate": 1.0}

    def validate(self) -> None:
        if self.duplicate_scheme not in ("dup_both", "dup_image"):
            raise ConfigError(f"--duplicate-scheme {self.duplicate_scheme}: use dup_both or dup_image")
        if not 0 < self.near_duplicate <= 1:
            raise ConfigError(f"--near-duplicate {self.near_duplicate:g}: a pixel similarity bound lies in (0, 1] "
                              "(1 keeps every image)")
        if self.captions not in ("unique", "class"):
            raise ConfigError(f"--captions {self.captions}: use unique or class")
        if not 0 <= self.duplicate_share < 1 or self.duplicate_times < 0:
            raise ConfigError(f"--duplicate-share {self.duplicate_share:g} must lie in [0, 1) (a share of the images) "
                              "and --duplicate-times be >= 0")
        if self.generalize not in ("", "wordnet", "llm"):
            raise ConfigError(f"--generalize {self.generalize}: use wordnet or llm")
        if self.generalize == "llm":
            self.llm_client()
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"--size {self.size}: use a multiple of 8 (the U-Net halves it three times)")

    @property
    def proxy_dataset(self) -> str:
        """The registry dataset whose proxy encoder measures quality (a user's folder is measured as emoji)."""
        return "emoji" if self.dataset == "folder" else self.dataset

    def llm_client(self) -> ChatClient | None:
        if self.generalize != "llm":
            return None
        from trustlab.replication.llm import ChatClient

        return ChatClient(self.llm_url, self.llm_model)


@dataclass(frozen=True)
class DualFusion:
    """How much of an auxiliary image and of the class words dual fusion mixes in (0: off); applied by
    :mod:`trustlab.replication.fusion`."""

    image_weight: float = 0.0
    aux: str = "fashion-mnist"
    text_weight: float = 0.0
    text_mode: str = "mix"

    def validate(self) -> None:
        if not 0 <= self.image_weight < 1 or not 0 <= self.text_weight <= 1:
            raise ConfigError("--fusion-image must lie in [0, 1) and --fusion-text in [0, 1]")
        if self.text_mode not in ("mix", "append"):
            raise ConfigError(f"--fusion-text-mode is mix or append, not '{self.text_mode}'")
        if self.image_weight:
            from trustlab.data.registry import get_spec

            get_spec(self.aux)


DUAL_FUSION = DualFusion(image_weight=0.1, text_weight=0.5)  # the weights `--dual-fusion` turns on (the GC&DF defaults)


@dataclass(frozen=True)
class DiffusionConfig:
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    encoder: str = "minilm"
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    head_dim: int = 8
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    timesteps: int = 1000
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    mitigations: str = ""  # comma-separated training mitigations
    mitigation_p: float = 0.1
    mitigation_sigma: float = 0.1
    fusion: DualFusion = field(default_factory=DualFusion)
    rau_skips: tuple[int, ...] = ()  # skips with an information transfer block (empty: plain U-Net)
    itb: str = "conv"  # one kind for every skip, or per skip index: "conv,5:pool"
    itb_frozen: bool = False  # frozen random ITB weights instead of trained ones
    tau: int = 0  # > 0: LoyalDiffusion, RAU-Net for t >= tau and the plain U-Net below
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    pretrained: str = ""  # a diffusers Stable Diffusion folder: fine-tune its UNet in the VAE's latent space
    bf16: bool = False  # bfloat16 autocast of the denoiser (mixed precision, for GPUs)

    kind: ClassVar[str] = "replication-train"

    def validate(self) -> None:
        self.data.validate()
        self.fusion.validate()
        parse(self.mitigations, self.mitigation_p, self.mitigation_sigma).check(TRAIN, "training")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--steps, --batch-size and --lr must be positive")
        if not 0 <= self.caption_dropout < 1 or not 0 < self.ema_decay < 1:
            raise ConfigError("--caption-dropout must lie in [0, 1) and the EMA decay in (0, 1)")
        if self.pretrained:
            parts = check_pipeline(self.pretrained)
            unet = parts["unet"]
            step = vae_factor(parts["vae"]) * 2 ** (len(unet["block_out_channels"]) - 1)
            if self.data.size % step:
                raise ConfigError(f"--size {self.data.size}: this pipeline's VAE and UNet need a multiple of {step}")
        elif len(self.channels) != 3:
            raise ConfigError("--channels takes three widths, e.g. 32,64,64")
        check_skips(self.itb_kinds(), self.skips())
        timesteps = self.num_timesteps()
        if not 0 <= self.tau < timesteps:
            raise ConfigError(f"--tau must lie in the schedule's timesteps 0..{timesteps - 1}, not {self.tau}")
        if self.tau and not self.rau_skips:
            raise ConfigError("--tau routes high-noise timesteps to a RAU-Net: give its skips with --rau-skips")

    def skips(self) -> list[Skip]:
        """The denoiser's skip connections: the testbed U-Net's, or the pretrained UNet's at the latent size."""
        if not self.pretrained:
            return skips_of(tuple(self.channels), self.layers_per_block, self.data.size)
        parts = check_pipeline(self.pretrained)
        unet = parts["unet"]
        return skips_of(tuple(unet["block_out_channels"]), unet["layers_per_block"],
                        self.data.size // vae_factor(parts["vae"]))

    def num_timesteps(self) -> int:
        """The noise schedule's length: ``timesteps``, or the pretrained pipeline's own."""
        if not self.pretrained:
            return self.timesteps
        return int(check_pipeline(self.pretrained)["scheduler"].get("num_train_timesteps", 1000))

    def itb_kinds(self) -> dict[int, str]:
        """The ITB kind of each chosen skip."""
        return itb_kinds(self.rau_skips, self.itb)

    def architecture(self) -> str:
        """``unet``, ``rau-net`` or ``loyal`` (the LoyalDiffusion pair)."""
        return "loyal" if self.tau else "rau-net" if self.rau_skips else "unet"


BAD_IMAGES = ("stop", "skip")  # what an audit does with a file it cannot decode


@dataclass(frozen=True)
class AuditConfig:
    """An audit of any folder of generations against any folder of training images (``replication audit``)."""

    generated: str = ""  # folder of generated images (any size, any format PIL reads)
    train: str = ""  # folder of training images
    captions: str | None = None  # JSON lines {"file", "caption"}: each generation's prompt (train captions: captions.jsonl)
    sscd: str | None = None  # TorchScript copy-detection model
    size: int = 32  # images are compared at size x size RGB
    pixel_threshold: float = 0.9
    copy_threshold: float | None = None  # None: calibrated on the training images
    flip: bool = False  # pixel copy metric: count mirrored copies (the aligned metric always does)
    copy_metric: str = "aligned"  # aligned (crops, shifts, rotations, mirror, grey undone) | pixel
    duplicate_level: float = DUPLICATE_LEVEL
    calibration: int = 2000  # training images whose nearest other training image calibrates the copy threshold
    background: int = 512  # training images measured against the others (the background level)
    batch: int = 1024  # images per block of the nearest-neighbour search
    bad_images: str = "stop"  # stop | skip
    device: str = "auto"
    seed: int = 0

    kind: ClassVar[str] = "replication-audit"

    def validate(self) -> None:
        if not self.generated or not self.train:
            raise ConfigError("give both --generated DIR and --train DIR")
        if self.size < 4 or self.size % 4:
            raise ConfigError(f"--size {self.size}: use a multiple of 4 (Carlini's distance tiles images 4x4)")
        for name in ("pixel_threshold", "copy_threshold"):
            value = getattr(self, name)
            if value is not None and not -1 < value <= 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value:g}: a cosine similarity threshold lies in (-1, 1]")
        if min(self.calibration, self.background) < 2 or self.batch < 1:
            raise ConfigError("--calibration and --background need at least 2 images and --batch at least 1")
        check_copy_settings(self.copy_metric, self.duplicate_level, self.size)
        if self.bad_images not in BAD_IMAGES:
            raise ConfigError(f"--bad-images {self.bad_images}: use {' or '.join(BAD_IMAGES)}")


@dataclass(frozen=True)
class DetectConfig:
    """Memorized prompts found from the model alone (``replication detect``): a testbed run or a Stable
    Diffusion folder, and the prompts to score (a run's own captions by default, labelled memorized when
    their image was duplicated in training)."""

    run: str = ""  # a replication train run folder
    pretrained: str = ""  # or a diffusers Stable Diffusion folder (save_pretrained layout)
    size: int = 0  # --pretrained: the image side (0: the UNet's sample size times the VAE's factor)
    prompts: str | None = None  # a prompts file (one per line, or JSON lines {"prompt", "memorized"})
    detectors: str = "magnitude,attention-entropy"
    seeds: int = 4  # starting noises averaged per prompt
    first_steps: int = 1  # sampling steps read (the first ones)
    steps: int = 50  # DDIM steps of the schedule the first steps are taken from
    guidance: float = 2.0
    batch_size: int = 64
    device: str = "auto"

    kind: ClassVar[str] = "replication-detect"

    def validate(self) -> None:
        if bool(self.run) == bool(self.pretrained):
            raise ConfigError("give a replication run folder or --pretrained DIR (a Stable Diffusion folder), not both")
        if self.pretrained:
            check_pipeline(self.pretrained)
            if not self.prompts:
                raise ConfigError("--pretrained has no captions of its own: give the prompts to score with --prompts FILE")
        if self.size < 0 or (self.size and self.size % 8):
            raise ConfigError(f"--size {self.size}: use a multiple of 8 (or 0 for the pipeline's own)")
        if self.seeds < 1 or not 1 <= self.first_steps <= self.steps or self.batch_size < 1 or self.guidance < 0:
            raise ConfigError(f"--seeds and --batch-size must be >= 1, --first-steps in 1..{self.steps} (--steps) and "
                              "--guidance >= 0")
        self.detector_names()

    def detector_names(self) -> tuple[str, ...]:
        names = tuple(check_detector(d.strip(), "--detectors") for d in self.detectors.split(",") if d.strip())
        if not names:
            raise ConfigError(f"--detectors is empty: use one or more of {', '.join(DETECTORS)}")
        return names
