"""The `train:` section of params.yaml: what the user chose (`TrainConfig`), validated on construction.

`None` means "take it from the preset"; `options.resolve_options` turns the choice plus the dataset and
the process count into the concrete options of one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from models.augment import AUGPIPE_SPECS
from models.families import family_of_preset
from models.presets import PRESETS
from stages.common.config import ConfigError

AugMode = Literal["noaug", "ada", "fixed"]
Precision = Literal["fp32", "bf16"]
ResumeMode = str  # 'latest' | 'auto' | checkpoint folder | snapshot/pickle path or URL
DEFAULT_ADA_TARGET = 0.6


def _unused_by_family(cfg: str) -> tuple[str, ...]:
    return family_of_preset(cfg).unused_options if cfg in PRESETS else ()


@dataclass(frozen=True)
class TrainConfig:
    """Everything `python -m stages.train` accepts."""

    SECTION: ClassVar[str] = "train"
    # A flag that starts the user's own run makes the pipeline's fixed run folder and `resume: auto`
    # step aside (params.yaml is the demo pipeline's); `--aug` makes the other mode's p/target step aside.
    # `--cfg` of another family makes params values that family does not use step aside (the demo's ADA settings
    # would otherwise stop `--cfg fastgan_lite` with "not used by").
    YIELDS_TO_FLAGS: ClassVar[dict[str, Any]] = {
        "data": ("run_dir", "resume"), "outdir": ("run_dir", "resume"), "aug": ("p", "target"),
        "cfg": lambda cfg: _unused_by_family(cfg),
    }

    data: str = ""                        # dataset ZIP or folder (required)
    outdir: str = "runs"                  # parent of numbered run folders
    run_dir: str | None = None            # exact run folder (overrides outdir numbering; DVC uses this)
    cfg: str = "auto"                     # preset (models.presets.PRESETS)
    cond: bool = False                    # condition on dataset labels
    mirror: bool = False                  # x-flip augmentation of the dataset
    subset: int | None = None             # train on a random subset of N images
    gamma: float | None = None            # R1 weight
    pl_weight: float | None = None        # path-length regularization weight (None = preset; 0 = off)
    style_mixing: float | None = None     # style-mixing probability (None = preset; 0 = off)
    kimg: float | None = None             # training length in thousands of images (fractions allowed)
    batch: int | None = None              # global minibatch over all processes
    batch_gpu: int | None = None          # samples per process per round (gradient accumulation below batch)
    snap: int = 50                        # network snapshot interval in ticks
    image_snapshot_ticks: int | None = None  # fakes grid interval in ticks (default: snap)
    checkpoint_ticks: int | None = None   # full-state checkpoint interval in ticks (default: snap)
    keep_checkpoints: int = 3             # keep the newest K complete checkpoints
    seed: int = 0
    resume: ResumeMode | None = None      # 'latest' | 'auto' | checkpoint dir | snapshot/official pickle path or URL
    freezed: int = 0                      # Freeze-D: first N D layers get no updates
    freeze_mapping: bool = False          # keep G's mapping network fixed (transfer learning)
    fp32: bool = False                    # disable mixed precision (always on for CPU)
    precision: Precision = "fp32"         # training arithmetic: fp32, or bf16 blocks with fp32 master weights
    nhwc: bool = False                    # channels-last for fp16 layers
    allow_tf32: bool = False
    nobench: bool = False                 # disable cudnn.benchmark
    workers: int = 3                      # DataLoader worker processes
    metrics: tuple[str, ...] = ()         # metrics on every network snapshot, e.g. fid50k_full (() = none)
    detector_dir: str | None = None       # folder with the metric detectors (else $SG2_DETECTOR_DIR, cache, download)
    aug: AugMode | None = None            # None: the preset's (ada; noaug for Projected GAN)
    p: float | None = None                # fixed augmentation probability (aug=fixed)
    target: float | None = None           # ADA target for r_t (aug=ada; default 0.6)
    augpipe: str = "bgc"
    ada_kimg: float | None = None         # kimg for p to move by one unit (None: 500; 100 under transfer learning)
    ada_interval: int = 4                 # ADA adjustment every N minibatches
    tick_kimg: float = 4                  # progress tick length in kimg
    grid_w: int = 0                       # image grid columns (0 = official: fills a 7680x4320 canvas)
    grid_h: int = 0                       # image grid rows (one label per row for conditional data)
    cpu: bool = False                     # train on CPU even when CUDA is available
    mlflow: bool = False                  # log to MLflow (also SG2_MLFLOW=1)
    dry_run: bool = False                 # print the resolved options and exit

    def __post_init__(self) -> None:
        if self.cfg not in PRESETS:
            raise ConfigError(f"cfg: unknown preset {self.cfg!r}; choose one of {', '.join(sorted(PRESETS))}")
        preset = PRESETS[self.cfg]
        if preset.requires_gamma and self.gamma is None:
            raise ConfigError(f"gamma: --cfg {self.cfg} has no default R1 weight; pass --gamma (official "
                              "recommendation at batch 32: 0.5 @128, 2 @256, 8 @512, 32 @1024 px)")
        family = family_of_preset(self.cfg)
        if given := family.refused(self):
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"{flags}: not used by --cfg {self.cfg} ({family.trains_without}); drop "
                              f"{'it' if len(given) == 1 else 'them'}")
        if self.precision == "bf16" and self.fp32:
            raise ConfigError("precision: bf16 and --fp32 contradict each other; drop one")
        if self.augpipe not in AUGPIPE_SPECS:
            raise ConfigError(f"augpipe: unknown pipeline {self.augpipe!r}; choose one of {', '.join(AUGPIPE_SPECS)}")
        positive = {"kimg": self.kimg, "batch": self.batch, "batch_gpu": self.batch_gpu, "subset": self.subset,
                    "tick_kimg": self.tick_kimg, "ada_kimg": self.ada_kimg, "ada_interval": self.ada_interval,
                    "snap": self.snap, "image_snapshot_ticks": self.image_snapshot_ticks,
                    "checkpoint_ticks": self.checkpoint_ticks, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: must be > 0, got {value}")
        for name, value in {"freezed": self.freezed, "workers": self.workers, "grid_w": self.grid_w,
                            "grid_h": self.grid_h, "seed": self.seed}.items():
            if value < 0:
                raise ConfigError(f"{name}: must be >= 0, got {value}")
        if self.seed >= 2**31:
            raise ConfigError(f"seed: must be < 2**31, got {self.seed}")
        if self.gamma is not None and self.gamma < 0:
            raise ConfigError(f"gamma: must be >= 0, got {self.gamma}")
        if self.pl_weight is not None and self.pl_weight < 0:
            raise ConfigError(f"pl_weight: must be >= 0, got {self.pl_weight}")
        if self.style_mixing is not None and not 0 <= self.style_mixing <= 1:
            raise ConfigError(f"style_mixing: must be in [0, 1], got {self.style_mixing}")
        if self.batch is not None and self.batch_gpu is not None and self.batch % self.batch_gpu:
            raise ConfigError(f"batch ({self.batch}) must be a multiple of batch_gpu ({self.batch_gpu})")
        if self.p is not None:
            if self.aug_mode != "fixed":
                raise ConfigError("p: only with aug=fixed")
            if not 0 <= self.p <= 1:
                raise ConfigError(f"p: must be in [0, 1], got {self.p}")
        if self.aug_mode == "fixed" and self.p is None:
            raise ConfigError("aug=fixed needs p")
        if self.target is not None:
            if self.aug_mode != "ada":
                raise ConfigError("target: only with aug=ada")
            if not 0 <= self.target <= 1:
                raise ConfigError(f"target: must be in [0, 1], got {self.target}")
        if not self.data:
            raise ConfigError("data: a dataset ZIP or folder is required (--data)")
        if tuple(m.lower() for m in self.metrics) == ("none",):
            object.__setattr__(self, "metrics", ())  # the official spelling of "no metrics"
        from stages.metrics.registry import UnknownMetricError, parse_metrics

        try:
            specs = parse_metrics(list(self.metrics))
        except UnknownMetricError as exc:
            raise ConfigError(f"metrics: {exc}") from exc
        equivariance = [s.name for s in specs if s.kind == "eq"]
        if equivariance and not family.measures_equivariance:
            raise ConfigError(f"metrics: {', '.join(equivariance)} measure StyleGAN3 generators; --cfg {self.cfg} "
                              "trains another family")

    @property
    def aug_mode(self) -> str:
        """The augmentation that runs: --aug, else the preset's default."""
        return self.aug if self.aug is not None else PRESETS[self.cfg].default_aug

    @property
    def ada_target(self) -> float | None:
        if self.aug_mode != "ada":
            return None
        return DEFAULT_ADA_TARGET if self.target is None else self.target

    @property
    def transfer_source(self) -> str | None:
        """The network `resume` names for transfer learning, or None (no resume, or a checkpoint to continue)."""
        from pathlib import Path

        if self.resume in (None, "latest", "auto") or Path(self.resume).is_dir():
            return None
        return self.resume


HELP = {
    "data": "training data: dataset ZIP or folder (required)",
    "outdir": "parent folder of numbered run folders",
    "run_dir": "exact run folder instead of <outdir>/<id>-<desc>",
    "cfg": f"preset: {'|'.join(PRESETS)}",
    "cond": "condition on dataset labels",
    "mirror": "add x-flipped copies of the images",
    "subset": "train on a random subset of N images",
    "gamma": "R1 regularization weight (default: preset)",
    "pl_weight": "path-length regularization weight (default: preset; 0 = off)",
    "style_mixing": "style-mixing probability (default: preset; 0 = off)",
    "kimg": "training length in thousands of real images (fractions allowed)",
    "batch": "global minibatch over all processes",
    "batch_gpu": "samples per process per accumulation round",
    "snap": "network snapshot interval in ticks",
    "image_snapshot_ticks": "fakes grid interval in ticks (default: snap)",
    "checkpoint_ticks": "full-state checkpoint interval in ticks (default: snap)",
    "keep_checkpoints": "keep the newest K complete checkpoints",
    "seed": "random seed",
    "resume": ("'latest', 'auto' (latest, or a fresh run in run_dir when options changed), a checkpoint folder, "
               "or a snapshot/official pickle path or URL (transfer learning)"),
    "freezed": "Freeze-D: the first N discriminator layers are not trained",
    "freeze_mapping": "keep the generator's mapping network fixed",
    "fp32": "disable mixed precision",
    "precision": ("fp32, or bf16: every G/D block in bfloat16 (AMX/AVX-512 BF16 on CPU), float32 master weights and "
                  "the official float32 islands; see docs/training.md for measured speed and fidelity"),
    "nhwc": "channels-last memory format for fp16 layers",
    "allow_tf32": "allow TF32 matmuls/convolutions",
    "nobench": "disable cuDNN benchmarking",
    "workers": "DataLoader worker processes",
    "metrics": "comma-separated metrics computed on every network snapshot, e.g. fid50k_full (none: skip)",
    "detector_dir": "folder with inception-2015-12-05.pt / vgg16.pt for --metrics (also $SG2_DETECTOR_DIR)",
    "aug": "augmentation: noaug|ada|fixed (default: ada; noaug for Projected GAN, which has DiffAugment in D)",
    "p": "augmentation probability for aug=fixed",
    "target": f"ADA target for the r_t heuristic (default {DEFAULT_ADA_TARGET})",
    "augpipe": "augmentation pipeline (e.g. bgc)",
    "ada_kimg": "kimg for ADA's p to move by one unit (default 500; 100 when starting from pretrained weights)",
    "ada_interval": "ADA adjustment every N minibatches",
    "tick_kimg": "progress tick length in kimg",
    "grid_w": "image grid columns (0 = official layout)",
    "grid_h": "image grid rows, one label per row for conditional data (0 = official layout)",
    "cpu": "train on CPU even when CUDA is available",
    "mlflow": "log to MLflow (also: SG2_MLFLOW=1)",
    "dry_run": "print the resolved options and exit",
}
