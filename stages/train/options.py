"""The resolved options of one training run: `TrainConfig` + dataset + process count -> `TrainingOptions`.

Field names and the JSON layout are those of the official `training_options.json`, so tools written for
it read ours. The identity of a run (what a checkpoint must agree with to be continued) is the options
minus what may change between resumptions without changing the trajectory of the weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from models.families import Family, family_of, family_of_classes
from models.presets import resolve_preset
from stages.common.config import ConfigError, flatten
from stages.train.config import TrainConfig

ADAM_BETAS = (0.0, 0.99)
ADAM_EPS = 1e-8
OFFICIAL_ADA_KIMG = 500
TRANSFER_ADA_KIMG = 100  # official: ADA reacts faster when starting from pretrained weights


@dataclass(frozen=True)
class TrainingOptions:
    """Everything the loop needs, resolved (official `training_options.json` keys)."""

    G_class: str                              # snapshot-registry names of the networks (models.serialization)
    D_class: str
    training_set_kwargs: dict[str, Any]       # ImageFolderDataset kwargs
    data_loader_kwargs: dict[str, Any]        # num_workers, prefetch_factor
    G_kwargs: dict[str, Any]
    D_kwargs: dict[str, Any]
    G_opt_kwargs: dict[str, Any]              # Adam lr, betas, eps (before the lazy-regularization rescaling)
    D_opt_kwargs: dict[str, Any]
    loss_kwargs: dict[str, Any]               # r1_gamma, pl_weight, style_mixing_prob
    augment_kwargs: dict[str, Any] | None     # {augpipe} or None without augmentation
    metrics: list[str]
    detector_dir: str | None
    random_seed: int
    num_gpus: int                             # processes
    batch_size: int                           # global minibatch
    batch_gpu: int                            # per process per accumulation round
    ema_kimg: float                           # G_ema half-life
    ema_rampup: float | None
    G_reg_interval: int | None               # None: no Greg phase and unscaled Adam (StyleGAN3)
    D_reg_interval: int | None               # None: no Dreg phase and unscaled Adam (Projected GAN)
    augment_p: float                          # initial augmentation probability
    ada_target: float | None                  # None: p stays fixed
    ada_interval: int
    ada_kimg: float
    total_kimg: float
    kimg_per_tick: float
    image_snapshot_ticks: int
    network_snapshot_ticks: int
    checkpoint_ticks: int
    keep_checkpoints: int
    resume_pkl: str | None                    # transfer-learning source
    freeze_mapping: bool
    cudnn_benchmark: bool
    allow_tf32: bool
    grid_size: list[int]                      # fakes grid [columns, rows]; 0 = official layout
    device: str
    training_precision: str = "fp32"          # fp32 | bf16 (blocks in bfloat16, float32 master weights)

    @property
    def total_nimg(self) -> int:
        return int(self.total_kimg * 1000)

    @property
    def fine_snapshot_names(self) -> bool:
        """Snapshots less than 1 kimg apart get kimg with three decimals in their names (never collide)."""
        return self.network_snapshot_ticks * self.kimg_per_tick < 1 or self.image_snapshot_ticks * \
            self.kimg_per_tick < 1

    @property
    def family(self) -> Family:
        """The model family these networks belong to (from their classes, so old option files answer too)."""
        return family_of_classes(self.G_class, self.D_class)

    def kimg_tag(self, cur_nimg: int) -> str:
        """`000012` (official `network-snapshot-<KIMG>`), or `000000.512` when snapshots are sub-kimg apart."""
        return f"{cur_nimg / 1000:010.3f}" if self.fine_snapshot_names else f"{cur_nimg // 1000:06d}"

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self, dataset_hash: str) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed; the dataset is compared by content, not path."""
        ident = {k: v for k, v in self.as_json().items() if k not in RESUMABLE_KEYS}
        ident["training_set_kwargs"] = {k: v for k, v in self.training_set_kwargs.items() if k != "path"}
        if self.training_precision == "fp32":
            del ident["training_precision"]  # runs from before the option existed keep their identity
        return dict(ident, dataset_hash=dataset_hash, transfer=self.resume_pkl is not None)


# Options that may change between a checkpoint and its resumption without changing the trajectory of the
# weights (how long to train, how often to write, where, with how many loader workers...). A run may also
# continue on another process count or device, as the official resume does (the RNG states are reseeded).
RESUMABLE_KEYS = frozenset({
    "data_loader_kwargs", "metrics", "total_kimg", "kimg_per_tick", "image_snapshot_ticks",
    "network_snapshot_ticks", "checkpoint_ticks", "keep_checkpoints", "resume_pkl", "grid_size", "detector_dir",
    "num_gpus", "device",
})


def resolve_options(
    cfg: TrainConfig,
    dataset: Any,                         # ImageFolderDataset (resolution, num_channels, label_dim, has_labels)
    num_processes: int = 1,
    device_type: str = "cpu",
    transfer_source: str | None = None,   # pretrained weights the run starts from (transfer learning)
) -> TrainingOptions:
    if cfg.cond and not dataset.has_labels:
        raise ConfigError("cond: the dataset has no labels (dataset.json 'labels' is null or absent)")
    res = dataset.resolution
    try:
        spec = resolve_preset(cfg.cfg, res, num_processes)
    except ValueError as exc:
        raise ConfigError(f"cfg {cfg.cfg}: {exc}") from None
    family = family_of(spec)
    c_dim = dataset.label_dim if cfg.cond else 0
    G_kwargs, D_kwargs = family.network_kwargs(spec, res, dataset.num_channels, c_dim)
    G_class, D_class = family.network_classes(spec)
    for kw in family.fp16_holders(G_kwargs, D_kwargs):
        if cfg.fp32:
            kw.update(num_fp16_res=0, conv_clamp=None)  # official --fp32: no fp16 layers, no activation clamping
        elif device_type != "cuda":
            kw["num_fp16_res"] = 0  # fp16 runs ~36x slower than fp32 on CPU; the clamp stays (GPU fp32 numbers)
    if cfg.nhwc:  # the family refused it already where channels-last is not implemented (TrainConfig)
        for kw in family.fp16_holders(G_kwargs, D_kwargs):
            kw.get("block_kwargs", kw)["fp16_channels_last"] = True
    if cfg.freezed:
        D_kwargs["block_kwargs"]["freeze_layers"] = cfg.freezed

    batch, batch_gpu = _batch_split(cfg, spec.mb, spec.ref_gpus, num_processes)
    mbstd = D_kwargs.get("epilogue_kwargs", {}).get("mbstd_group_size")
    if mbstd and batch_gpu % min(mbstd, batch_gpu):
        raise ConfigError(f"batch_gpu ({batch_gpu}) must be a multiple of the minibatch-std group ({mbstd})")
    transfer = transfer_source is not None
    adam = dict(lr=spec.lrate, betas=list(ADAM_BETAS), eps=ADAM_EPS)
    loss_kwargs = family.loss_kwargs(spec, cfg)
    ema_kimg = spec.ema
    if family.batch_rules is not None:
        # Official StyleGAN3: these follow the actual batch, not the preset's.
        rules = family.batch_rules(spec, batch, transfer)
        G_kwargs["magnitude_ema_beta"] = rules["magnitude_ema_beta"]
        loss_kwargs.update(blur_init_sigma=rules["blur_init_sigma"], blur_fade_kimg=rules["blur_fade_kimg"])
        ema_kimg = rules["ema_kimg"]
    return TrainingOptions(
        G_class=G_class,
        D_class=D_class,
        training_set_kwargs=dict(path=cfg.data, use_labels=cfg.cond, max_size=dataset.num_images,
                                 xflip=cfg.mirror, resolution=res, random_seed=cfg.seed),
        data_loader_kwargs=dict(num_workers=cfg.workers, prefetch_factor=2 if cfg.workers else None),
        G_kwargs=G_kwargs,
        D_kwargs=D_kwargs,
        G_opt_kwargs=dict(adam),
        D_opt_kwargs=dict(adam, lr=spec.d_lrate if spec.d_lrate is not None else spec.lrate),
        loss_kwargs=loss_kwargs,
        augment_kwargs=dict(augpipe=cfg.augpipe) if cfg.aug_mode != "noaug" else None,
        metrics=list(cfg.metrics),
        detector_dir=cfg.detector_dir,
        random_seed=cfg.seed,
        num_gpus=num_processes,
        batch_size=batch,
        batch_gpu=batch_gpu,
        ema_kimg=ema_kimg,
        ema_rampup=None if transfer else spec.ramp,   # official: no EMA ramp-up when fine-tuning
        G_reg_interval=spec.g_reg_interval,
        D_reg_interval=spec.d_reg_interval,
        augment_p=cfg.p or 0.0,
        ada_target=cfg.ada_target,
        ada_interval=cfg.ada_interval,
        # Official: ADA reacts faster when starting from pretrained weights, unless the user chose a speed.
        ada_kimg=cfg.ada_kimg if cfg.ada_kimg is not None else TRANSFER_ADA_KIMG if transfer else OFFICIAL_ADA_KIMG,
        total_kimg=cfg.kimg if cfg.kimg is not None else spec.kimg,
        kimg_per_tick=cfg.tick_kimg,
        image_snapshot_ticks=cfg.image_snapshot_ticks or cfg.snap,
        network_snapshot_ticks=cfg.snap,
        checkpoint_ticks=cfg.checkpoint_ticks or cfg.snap,
        keep_checkpoints=cfg.keep_checkpoints,
        resume_pkl=transfer_source,
        freeze_mapping=cfg.freeze_mapping,
        cudnn_benchmark=not cfg.nobench,
        allow_tf32=cfg.allow_tf32,
        grid_size=[cfg.grid_w, cfg.grid_h],
        device=device_type,
        training_precision=cfg.precision,
    )


def _batch_split(cfg: TrainConfig, preset_batch: int, preset_gpus: int, num_processes: int) -> tuple[int, int]:
    """(global batch, per-process batch per round)."""
    batch = cfg.batch if cfg.batch is not None else preset_batch
    if cfg.batch_gpu is not None:
        batch_gpu = cfg.batch_gpu
    elif cfg.batch is not None:
        batch_gpu = batch // num_processes
    else:
        # The preset's per-GPU batch is an upper bound: on more processes than the preset's reference count
        # each takes its share in one round (as the official loop does).
        batch_gpu = max(min(preset_batch // preset_gpus, batch // num_processes), 1)
    if batch_gpu < 1 or batch % (batch_gpu * num_processes):
        raise ConfigError(
            f"batch ({batch}) must be a multiple of batch_gpu x processes ({batch_gpu} x {num_processes})")
    return batch, batch_gpu


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """`name: old -> new` for every entry that differs between two nested dicts."""
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def run_description(cfg: TrainConfig, dataset_name: str, num_processes: int) -> str:
    """Official-style run name suffix, e.g. `cifar10-cond-mirror-tiny-kimg1-batch4-noaug`."""
    parts = [dataset_name]
    parts += ["cond"] if cfg.cond else []
    parts += [f"subset{cfg.subset}"] if cfg.subset else []
    parts += ["mirror"] if cfg.mirror else []
    parts += [f"{cfg.cfg}" + (f"{num_processes}" if cfg.cfg == "auto" else "")]
    parts += [f"gamma{cfg.gamma:g}"] if cfg.gamma is not None else []
    parts += [f"kimg{cfg.kimg:g}"] if cfg.kimg is not None else []
    parts += [f"batch{cfg.batch}"] if cfg.batch is not None else []
    parts += [cfg.aug_mode]
    return "-".join(parts)


def format_table(opts: TrainingOptions) -> str:
    """Resolved options as an aligned two-column table (for --dry-run and log.txt)."""
    rows = flatten(opts.as_json())
    width = max(len(k) for k in rows)
    lines = [f"{'option':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {v if isinstance(v, str) else json.dumps(v)}" for k, v in rows.items()]
    return "\n".join(lines)
