"""The `evaluate:` section of params.yaml as a frozen dataclass (defaults = the section's values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stages.common.config import ConfigError
from stages.evaluate.registry import UnknownMetricError, parse_metrics


@dataclass(frozen=True)
class EvaluateConfig:
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
