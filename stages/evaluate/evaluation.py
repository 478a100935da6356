"""The evaluate stage as one function: resolve the network and its training run, compute the metrics on
every process, write `metric-<name>.jsonl` lines and the flat `metrics.json` (DVC), log them to MLflow."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from models.serialization.loading import resolve_network_path
from stages.common.config import ConfigError, flatten
from stages.common.tracking import make_tracker
from stages.evaluate.config import EvaluateConfig


def resolve_network(network: str) -> str:
    """A run folder means its newest `network-snapshot-<kimg>.*`; files and URLs pass through."""
    try:
        return resolve_network_path(network)
    except FileNotFoundError as exc:
        raise ConfigError(f"network: {exc}") from exc


def find_run_dir(network: str) -> Path | None:
    """The folder of a local snapshot if it is a training run (holds training_options.json), as calc_metrics."""
    p = Path(network)
    return p.parent if p.is_file() and (p.parent / "training_options.json").is_file() else None


def dataset_options(cfg: EvaluateConfig, run_dir: Path | None) -> dict[str, Any] | None:
    """Reference dataset options: --data, else the run's training_options.json; None = the snapshot's own."""
    kwargs: dict[str, Any] | None = None
    if run_dir is not None:
        kwargs = dict(json.loads((run_dir / "training_options.json").read_text()).get("training_set_kwargs") or {})
    if cfg.data is not None:
        kwargs = dict(path=cfg.data, xflip=False) if kwargs is None else dict(kwargs, path=cfg.data)
    if kwargs is not None and cfg.mirror is not None:
        kwargs["xflip"] = cfg.mirror
    return kwargs


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the metrics of `cfg`; returns compute_metrics' {'records', 'skipped'} plus 'results'."""
    import torch

    from stages.metrics.distributed import from_accelerate, is_main
    from stages.metrics.runner import MetricOptions, compute_metrics, flat_results, report_metric, write_metrics_json

    network = resolve_network(cfg.network or "")
    train_dir = find_run_dir(network)  # the training run the snapshot came from: its dataset options
    run_dir = Path(cfg.run_dir) if cfg.run_dir else train_dir
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    group = from_accelerate()
    device = torch.device("cpu")
    if not cfg.cpu and torch.cuda.is_available():
        device = torch.device("cuda", group.rank % torch.cuda.device_count())
    opts = MetricOptions(
        detector_dir=cfg.detector_dir, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
        ppl_batch_size=cfg.ppl_batch_size, pr_row_batch_size=cfg.pr_row_batch_size,
        pr_col_batch_size=cfg.pr_col_batch_size, seed=cfg.seed, workers=cfg.workers,
        G_kwargs=dict(truncation_psi=cfg.truncation_psi, noise_mode=cfg.noise_mode),
        device=device, group=group, progress=cfg.progress, fid_trace=cfg.fid_trace, precision=cfg.precision,
        feature_precision=cfg.feature_precision)
    main = is_main(group)
    written: list[Path] = []

    def on_result(record: dict[str, Any]) -> None:
        line = report_metric(record, run_dir=run_dir, snapshot_pkl=network)
        print(line, flush=True)
        if run_dir is not None:
            written.append(run_dir / f"metric-{record['metric']}.jsonl")

    try:
        out = compute_metrics(network, list(cfg.metrics), dataset_options(cfg, train_dir), opts,
                              skip_missing_detectors=cfg.skip_missing_detectors, on_result=on_result)
    finally:
        # Close the process group a torchrun launch opened: gloo's threads left to interpreter exit can
        # abort the process ("terminate called without an active exception") after the work is done.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    out["results"] = flat_results(out["records"])
    if main:
        for name, reason in out["skipped"].items():
            print(f"skipped {name}: {reason}", file=sys.stderr)
        write_metrics_json(cfg.out, out["results"])
        tracker, note = make_tracker(cfg.mlflow)
        if note:
            print(f"note: {note}", file=sys.stderr)
        from models.precision import precision_in_use

        tags = {"stage": "evaluate", **{f"precision.{role}": p for role, p in precision_in_use().items()}}
        tracker.start("evaluate", params=dict(flatten(cfg), network=network), tags=tags)
        tracker.log_metrics(out["results"])
        tracker.log_artifacts([*written, Path(cfg.out)], "metrics")
        tracker.end("FINISHED")
    return out
