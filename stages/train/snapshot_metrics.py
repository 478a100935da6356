"""Metrics on each network snapshot during training, through the evaluate stage's own functions.

As in the official loop, every process takes part (features are split and gathered), the results go
to `<run_dir>/metric-<name>.jsonl` in the official line format, and a metric whose detector file is
missing is named once and dropped for the rest of the run instead of stopping training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.common.fileio import filter_jsonl


class SnapshotMetrics:
    """Metric names are validated by TrainConfig, so a typo fails at start-up, not hours later."""

    def __init__(self, names: list[str] | tuple[str, ...], dataset_kwargs: dict[str, Any], run_dir: Path,
                 device: torch.device, log: Callable[[str], None], detector_dir: str | None = None,
                 batch_size: int = 64) -> None:
        self.names = list(names)
        self.dataset_kwargs = dict(dataset_kwargs)
        self.run_dir, self.device, self.log = run_dir, device, log
        self.detector_dir, self.batch_size = detector_dir, batch_size

    def __bool__(self) -> bool:
        return bool(self.names)

    def __call__(self, G_ema: torch.nn.Module, snapshot: Path) -> dict[str, float]:
        """Compute the metrics for `G_ema` (all processes call this); returns {result name: value}."""
        from stages.metrics.distributed import from_accelerate, is_main
        from stages.metrics.runner import MetricOptions, compute_metrics, flat_results, report_metric

        group = from_accelerate()
        opts = MetricOptions(detector_dir=self.detector_dir, batch_size=self.batch_size, device=self.device,
                             group=group, progress=False)

        def on_result(record: dict[str, Any]) -> None:
            report_metric(record, run_dir=self.run_dir, snapshot_pkl=snapshot)
            values = " ".join(f"{k} {v:.4g}" for k, v in record["results"].items())
            self.log(f"metric {record['metric']}: {values} ({record['total_time_str']})")

        was_training = G_ema.training
        try:
            out = compute_metrics(G_ema, self.names, self.dataset_kwargs, opts, skip_missing_detectors=True,
                                  on_result=on_result)
        finally:
            G_ema.train(was_training)
        for name, reason in out["skipped"].items():
            if is_main(group):
                self.log(f"metric {name}: skipped for the rest of this run ({reason})")
            self.names.remove(name)
        return flat_results(out["records"])


def truncate_metric_jsonl(run_dir: Path, after: float) -> int:
    """Drop `metric-*.jsonl` lines stamped after `after`: the checkpoint a run resumes from was saved then,
    and the snapshots those lines measured are about to be trained and measured again."""
    return sum(filter_jsonl(path, lambda r: float(r.get("timestamp", 0.0)) <= after)
               for path in sorted(run_dir.glob("metric-*.jsonl")))
