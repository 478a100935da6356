"""GAN metrics with the official StyleGAN2-ADA names and meaning: FID, KID, precision/recall, IS, PPL.

    from stages.metrics import compute_metrics, MetricOptions
    out = compute_metrics("runs/demo/network-snapshot-000020.safetensors", ["fid50k_full"],
                          options=MetricOptions(detector_dir="/models/detectors"))
    out["records"]["fid50k_full"]["results"]   # {'fid50k_full': 12.3}

Modules: `registry` (names -> MetricSpec), `formulas` (pure math), `detectors` (Inception/VGG16 TorchScript
files: lookup, download, checksum), `features` (real/generated feature passes, statistics cache), `ppl`,
`distributed` (process split and gather), `runner` (compute, report), `config` (the `evaluate:` params).
"""

from stages.metrics.detectors import DetectorNotFoundError, find_detector, load_detector
from stages.metrics.registry import OFFICIAL_METRICS, MetricSpec, UnknownMetricError, parse_metric, parse_metrics
from stages.metrics.runner import (
    MetricOptions,
    compute_metric,
    compute_metrics,
    flat_results,
    report_metric,
    write_metrics_json,
)

__all__ = [
    "OFFICIAL_METRICS",
    "DetectorNotFoundError",
    "MetricOptions",
    "MetricSpec",
    "UnknownMetricError",
    "compute_metric",
    "compute_metrics",
    "find_detector",
    "flat_results",
    "load_detector",
    "parse_metric",
    "parse_metrics",
    "report_metric",
    "write_metrics_json",
]
