"""The `evaluate:` section of params.yaml as a frozen dataclass (defaults = the section's values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from stages.common.config import ConfigError
from stages.metrics.registry import UnknownMetricError, parse_metrics


@dataclass(frozen=True)
class EvaluateConfig:
    SECTION: ClassVar[str] = "evaluate"

    network: str | None = "runs/demo"         # snapshot/pickle file, URL, or run folder (its newest snapshot)
    metrics: tuple[str, ...] = ("fid50k_full",)
    data: str | None = None                   # reference dataset; None = the run's training_options.json
    mirror: bool | None = None                # x-flips for non-`_full` metrics; None = as in training
    run_dir: str | None = None                # where metric-<name>.jsonl goes; None = the snapshot's run folder
    detector_dir: str | None = None           # local Inception/VGG16 .pt files (else $SG2_DETECTOR_DIR, cache)
    cache_dir: str | None = None              # real-statistics cache; None = $SG2_METRICS_CACHE_DIR or ~/.cache
    out: str = "metrics.json"                 # flat results for DVC
    batch_size: int = 64                      # images per detector call
    ppl_batch_size: int = 8
    pr_row_batch_size: int = 10000            # precision/recall distance blocks
    pr_col_batch_size: int = 10000
    seed: int = 0                             # generator latents/labels/noise and KID subsets
    workers: int = 0                          # DataLoader workers for real images
    truncation_psi: float = 1.0
    noise_mode: Literal["random", "const", "none"] = "random"
    skip_missing_detectors: bool = False      # absent detector: skip the metric (exit 0) instead of failing
    fid_trace: Literal["eig", "sqrtm"] = "eig"  # tr(sqrt(Σ1Σ2)): symmetric eigendecomposition, or scipy sqrtm
    precision: Literal["fp32", "bf16"] = "fp32"  # generator; bf16: AVX-512 BF16 / AMX CPUs, 2-5x official fp32
    feature_precision: Literal["fp32", "bf16"] = "fp32"  # detectors; bf16 ~1.5x faster but shifts FD (~1%)
    mlflow: bool = False
    progress: bool = True
    cpu: bool = False

    def __post_init__(self) -> None:
        if not self.network:
            raise ConfigError("network: a snapshot path, URL or run folder is required (--network)")
        try:
            parse_metrics(list(self.metrics))
        except UnknownMetricError as exc:
            raise ConfigError(f"metrics: {exc}") from exc
        if not self.metrics:
            raise ConfigError("metrics: at least one metric is required")
        for name in ("batch_size", "ppl_batch_size", "pr_row_batch_size", "pr_col_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1")
        if self.workers < 0:
            raise ConfigError("workers: must be >= 0")
        if not 0 <= self.seed < 2**31:
            raise ConfigError("seed: must be in [0, 2**31)")
        if not -10 <= self.truncation_psi <= 10:
            raise ConfigError(f"truncation_psi: {self.truncation_psi} is outside [-10, 10]")


HELP = {
    "network": "snapshot/pickle path or URL, or a training run folder (its newest snapshot)",
    "metrics": ("comma-separated metric names, e.g. fid50k_full,kid50k_full,pr50k3_full,is50k,ppl2_wend; "
                "eqt50k_int,eqt50k_frac,eqr50k for StyleGAN3; fd_effnet2k_full,kid_effnet2k_full offline"),
    "data": "reference dataset ZIP/folder (default: the run's training_options.json)",
    "mirror": "x-flipped reals for non-_full metrics (default: as in training)",
    "run_dir": "folder for metric-<name>.jsonl (default: the snapshot's run folder)",
    "detector_dir": "folder with inception-2015-12-05.pt / vgg16.pt (also $SG2_DETECTOR_DIR)",
    "cache_dir": "real-image statistics cache (also $SG2_METRICS_CACHE_DIR)",
    "out": "flat results JSON for DVC",
    "batch_size": "images per detector call",
    "ppl_batch_size": "path samples per PPL batch",
    "pr_row_batch_size": "precision/recall distance block rows",
    "pr_col_batch_size": "precision/recall distance block columns",
    "seed": "seed of the generated latents, labels, noise and KID subsets",
    "workers": "DataLoader workers for the real images",
    "truncation_psi": "truncation of the generated images (1 = none)",
    "noise_mode": "per-pixel noise of the generated images",
    "skip_missing_detectors": "skip metrics whose detector file is absent instead of failing",
    "fid_trace": ("eig: tr(sqrt(S1 S2)) from a symmetric eigendecomposition (~2 s at 2048 dims); "
                  "sqrtm: scipy (official, 10-60 s)"),
    "precision": ("generator: fp32 as the official code; bf16: synthesis blocks in bfloat16 (CPU 2-5x the official "
                  "fp32 images/s; FD change far below seed-to-seed noise; the record says 'precision': 'bf16')"),
    "feature_precision": ("detectors: fp32 (official) or bf16 autocast (~1.5x faster on CPU, but FD moves by ~1%, "
                          "above seed noise: compare bf16-feature numbers only with each other)"),
    "mlflow": "log results and jsonl files to MLflow (also SG2_MLFLOW=1)",
    "progress": "progress bars on stderr",
    "cpu": "run on CPU even when CUDA is available",
}
