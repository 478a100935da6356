"""Training options: a frozen `TrainConfig` (params.yaml `train:` section + flags) and its resolution.

`TrainConfig` holds what the user chose; `resolve_options` turns it plus the dataset and the process
count into the concrete options of one run (network kwargs, optimizer settings, batch split...),
laid out like the official `training_options.json` so tools written for it can read ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from models.presets import PRESETS, network_kwargs, resolve_preset
from stages.common.config import ConfigError

AugMode = Literal["noaug", "ada", "fixed"]
CfgName = Literal["auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar", "tiny"]

G_REG_INTERVAL = 4    # lazy path-length regularization every 4 minibatches (StyleGAN2 Sec. 3.1)
D_REG_INTERVAL = 16   # lazy R1 every 16 minibatches
ADAM_BETAS = (0.0, 0.99)
ADAM_EPS = 1e-8
TRANSFER_ADA_KIMG = 100  # official: ADA reacts faster when starting from pretrained weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything `python -m stages.train` accepts; `None` means "take it from the preset"."""

    data: str = ""                        # dataset ZIP or folder (required)
    outdir: str = "runs"                  # parent of numbered run folders
    run_dir: str | None = None            # exact run folder (overrides outdir numbering; DVC uses this)
    cfg: CfgName = "auto"                 # preset (models.presets)
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
    resume: str | None = None             # 'latest' | checkpoint dir | snapshot/official pickle path or URL
    freezed: int = 0                      # Freeze-D: first N D layers get no updates
    freeze_mapping: bool = False          # keep G's mapping network fixed (transfer learning)
    fp32: bool = False                    # disable mixed precision (always on for CPU)
    nhwc: bool = False                    # channels-last for fp16 layers
    allow_tf32: bool = False
    nobench: bool = False                 # disable cudnn.benchmark
    workers: int = 3                      # DataLoader worker processes
    metrics: tuple[str, ...] = ()         # metrics on every network snapshot, e.g. fid50k_full (() = none)
    detector_dir: str | None = None       # folder with the metric detectors (else $SG2_DETECTOR_DIR, cache, download)
    aug: AugMode = "ada"
    p: float | None = None                # fixed augmentation probability (aug=fixed)
    target: float | None = None           # ADA target for r_t (aug=ada; default 0.6)
    augpipe: str = "bgc"
    ada_kimg: float = 500                 # kimg for p to move by one unit
    ada_interval: int = 4                 # ADA adjustment every N minibatches
    tick_kimg: float = 4                  # progress tick length in kimg
    grid_w: int = 0                       # image grid columns (0 = official: fills a 7680x4320 canvas)
    grid_h: int = 0                       # image grid rows
    cpu: bool = False                     # train on CPU even when CUDA is available
    mlflow: bool = False                  # log to MLflow (also enabled by SG2_MLFLOW=1)
    dry_run: bool = False                 # print the resolved options and exit

    def __post_init__(self) -> None:
        if self.cfg not in PRESETS:
            raise ConfigError(f"cfg: unknown preset {self.cfg!r}; choose one of {sorted(PRESETS)}")
        if self.aug not in ("noaug", "ada", "fixed"):
            raise ConfigError(f"aug: expected noaug|ada|fixed, got {self.aug!r}")
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
        if self.gamma is not None and self.gamma < 0:
            raise ConfigError(f"gamma: must be >= 0, got {self.gamma}")
        if self.pl_weight is not None and self.pl_weight < 0:
            raise ConfigError(f"pl_weight: must be >= 0, got {self.pl_weight}")
        if self.style_mixing is not None and not 0 <= self.style_mixing <= 1:
            raise ConfigError(f"style_mixing: must be in [0, 1], got {self.style_mixing}")
        if self.batch is not None and self.batch_gpu is not None and self.batch % self.batch_gpu:
            raise ConfigError(f"batch ({self.batch}) must be a multiple of batch_gpu ({self.batch_gpu})")
        if self.p is not None:
            if self.aug != "fixed":
                raise ConfigError("p: only with aug=fixed")
            if not 0 <= self.p <= 1:
                raise ConfigError(f"p: must be in [0, 1], got {self.p}")
        if self.aug == "fixed" and self.p is None:
            raise ConfigError("aug=fixed needs p")
        if self.target is not None:
            if self.aug != "ada":
                raise ConfigError("target: only with aug=ada")
            if not 0 <= self.target <= 1:
                raise ConfigError(f"target: must be in [0, 1], got {self.target}")
        if not self.data:
            raise ConfigError("data: a dataset ZIP or folder is required (--data)")
        if tuple(m.lower() for m in self.metrics) == ("none",):
            object.__setattr__(self, "metrics", ())  # the official spelling of "no metrics"
        from stages.evaluate.registry import UnknownMetricError, parse_metrics

        try:
            parse_metrics(list(self.metrics))
        except UnknownMetricError as exc:
            raise ConfigError(f"metrics: {exc}") from exc

    @property
    def ada_target(self) -> float | None:
        if self.aug != "ada":
            return None
        return 0.6 if self.target is None else self.target


def resolve_options(
    cfg: TrainConfig,
    dataset: Any,                       # ImageFolderDataset (resolution, num_channels, label_dim, has_labels)
    num_processes: int = 1,
    device_type: str = "cpu",
    transfer: bool = False,             # starting from pretrained weights (resume from a snapshot/pickle)
) -> dict[str, Any]:
    """The concrete options of one run (official `training_options.json` key layout where one exists)."""
    if cfg.cond and not dataset.has_labels:
        raise ConfigError("cond: the dataset has no labels (dataset.json 'labels' is null or absent)")
    res = dataset.resolution
    spec = resolve_preset(cfg.cfg, res, num_processes)
    c_dim = dataset.label_dim if cfg.cond else 0
    G_kwargs, D_kwargs = network_kwargs(spec, res, dataset.num_channels, c_dim)
    if cfg.fp32:
        # Official --fp32: no fp16 layers and no activation clamping.
        G_kwargs["synthesis_kwargs"].update(num_fp16_res=0, conv_clamp=None)
        D_kwargs.update(num_fp16_res=0, conv_clamp=None)
    elif device_type != "cuda":
        # fp16 layers run ~36x slower than fp32 on CPU; the clamp stays, so results match GPU fp32 closely.
        G_kwargs["synthesis_kwargs"]["num_fp16_res"] = 0
        D_kwargs["num_fp16_res"] = 0
    if cfg.nhwc:
        G_kwargs["synthesis_kwargs"]["fp16_channels_last"] = True
        D_kwargs["block_kwargs"]["fp16_channels_last"] = True
    if cfg.freezed:
        D_kwargs["block_kwargs"]["freeze_layers"] = cfg.freezed

    batch = cfg.batch if cfg.batch is not None else spec.mb
    if cfg.batch_gpu is not None:
        batch_gpu = cfg.batch_gpu
    elif cfg.batch is not None:
        batch_gpu = batch // num_processes
    else:
        # The preset's per-GPU batch is an upper bound: on more processes than the preset's reference
        # count each takes its share in one round (as the official loop does).
        batch_gpu = max(min(spec.mb // spec.ref_gpus, batch // num_processes), 1)
    if batch % (batch_gpu * num_processes):
        raise ConfigError(
            f"batch ({batch}) must be a multiple of batch_gpu x processes ({batch_gpu} x {num_processes})")
    mbstd = D_kwargs["epilogue_kwargs"]["mbstd_group_size"]
    if mbstd and batch_gpu % min(mbstd, batch_gpu):
        raise ConfigError(f"batch_gpu ({batch_gpu}) must be a multiple of the minibatch-std group ({mbstd})")

    augment = cfg.aug != "noaug"
    opts: dict[str, Any] = dict(
        training_set_kwargs=dict(path=cfg.data, use_labels=cfg.cond, max_size=dataset.num_images,
                                 xflip=cfg.mirror, resolution=res, random_seed=cfg.seed),
        data_loader_kwargs=dict(num_workers=cfg.workers, prefetch_factor=2 if cfg.workers else None),
        G_kwargs=G_kwargs,
        D_kwargs=D_kwargs,
        G_opt_kwargs=dict(lr=spec.lrate, betas=list(ADAM_BETAS), eps=ADAM_EPS),
        D_opt_kwargs=dict(lr=spec.lrate, betas=list(ADAM_BETAS), eps=ADAM_EPS),
        loss_kwargs=dict(r1_gamma=cfg.gamma if cfg.gamma is not None else spec.gamma,
                         pl_weight=spec.pl_weight if cfg.pl_weight is None else cfg.pl_weight,
                         style_mixing_prob=spec.style_mixing_prob if cfg.style_mixing is None else cfg.style_mixing),
        augment_kwargs=dict(augpipe=cfg.augpipe) if augment else None,
        metrics=list(cfg.metrics),
        detector_dir=cfg.detector_dir,
        random_seed=cfg.seed,
        num_gpus=num_processes,
        batch_size=batch,
        batch_gpu=batch_gpu,
        ema_kimg=spec.ema,
        ema_rampup=None if transfer else spec.ramp,   # official: no EMA ramp-up when fine-tuning
        G_reg_interval=G_REG_INTERVAL,
        D_reg_interval=D_REG_INTERVAL,
        augment_p=cfg.p or 0.0,
        ada_target=cfg.ada_target,
        ada_interval=cfg.ada_interval,
        ada_kimg=TRANSFER_ADA_KIMG if transfer and cfg.ada_kimg == 500 else cfg.ada_kimg,
        total_kimg=cfg.kimg if cfg.kimg is not None else spec.kimg,
        kimg_per_tick=cfg.tick_kimg,
        image_snapshot_ticks=cfg.image_snapshot_ticks or cfg.snap,
        network_snapshot_ticks=cfg.snap,
        checkpoint_ticks=cfg.checkpoint_ticks or cfg.snap,
        keep_checkpoints=cfg.keep_checkpoints,
        resume_pkl=cfg.resume if transfer else None,
        freeze_mapping=cfg.freeze_mapping,
        cudnn_benchmark=not cfg.nobench,
        allow_tf32=cfg.allow_tf32,
        grid_size=[cfg.grid_w, cfg.grid_h],
        device=device_type,
    )
    return opts


# Options that may change between a checkpoint and its resumption without changing the trajectory
# of the weights (how long to train, how often to write, where, with how many loader workers...).
_RESUMABLE_KEYS = {"data_loader_kwargs", "metrics", "total_kimg", "kimg_per_tick", "image_snapshot_ticks",
                   "network_snapshot_ticks", "checkpoint_ticks", "keep_checkpoints", "resume_pkl", "grid_size",
                   "detector_dir",
                   # A run may continue on another process count or device, as the official resume does
                   # (the RNG states are then reseeded; see the restore in loop.py).
                   "num_gpus", "device"}


def identity_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options a checkpoint must agree with to be resumed; the dataset path is compared by content hash."""
    ident = {k: v for k, v in opts.items() if k not in _RESUMABLE_KEYS}
    ident["training_set_kwargs"] = {k: v for k, v in opts["training_set_kwargs"].items() if k != "path"}
    return json.loads(json.dumps(ident))


def config_hash(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def run_description(cfg: TrainConfig, dataset_name: str, opts: dict[str, Any]) -> str:
    """Official-style run name suffix, e.g. `cifar10-cond-mirror-tiny-kimg1-batch4-noaug`."""
    parts = [dataset_name]
    parts += ["cond"] if cfg.cond else []
    parts += [f"subset{cfg.subset}"] if cfg.subset else []
    parts += ["mirror"] if cfg.mirror else []
    parts += [f"{cfg.cfg}" + (f"{opts['num_gpus']}" if cfg.cfg == "auto" else "")]
    parts += [f"gamma{cfg.gamma:g}"] if cfg.gamma is not None else []
    parts += [f"kimg{cfg.kimg:g}"] if cfg.kimg is not None else []
    parts += [f"batch{cfg.batch}"] if cfg.batch is not None else []
    parts += [cfg.aug]
    return "-".join(parts)


def format_table(cfg: TrainConfig, opts: dict[str, Any]) -> str:
    """Resolved options as an aligned two-column table (for --dry-run and log.txt)."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append((prefix, value))

    walk("", opts)
    width = max(len(k) for k, _ in rows)
    lines = [f"{'option':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {json.dumps(v) if not isinstance(v, str) else v}" for k, v in rows]
    return "\n".join(lines)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))
