"""`python -m stages.evaluate`: GAN metrics of a network snapshot (reads `evaluate:` in params.yaml, flags override).

Examples:
  python -m stages.evaluate --network runs/demo --metrics fid50k_full,kid50k_full
  python -m stages.evaluate --network https://.../ffhq.pkl --metrics fid50k_full --data ffhq.zip --mirror
  accelerate launch --num_processes 2 -m stages.evaluate --network runs/demo   # split over processes

Writes `<run_dir>/metric-<name>.jsonl` (official line format) and the flat `--out` JSON (DVC metrics).
Exit status: 0 ok (or detectors missing with --skip-missing-detectors), 1 detector missing, 2 bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from models.serialization.loading import resolve_network_path
from stages.common.config import ConfigError, add_dataclass_arguments, add_params_argument, config_from_args
from stages.evaluate.config import EvaluateConfig
from stages.evaluate.detectors import DetectorNotFoundError

HELP = {
    "network": "snapshot/pickle path or URL, or a training run folder (its newest snapshot)",
    "metrics": "comma-separated metric names, e.g. fid50k_full,kid50k_full,pr50k3_full,is50k,ppl2_wend",
    "data": "reference dataset ZIP/folder (default: the run's training_options.json)",
    "mirror": "x-flipped reals for non-_full metrics (default: as in training)",
    "run_dir": "folder for metric-<name>.jsonl (default: the snapshot's run folder)",
    "detector_dir": "folder with inception-2015-12-05.pt / vgg16.pt (also $SG2_DETECTOR_DIR)",
    "cache_dir": "real-image statistics cache (also $SG2_METRICS_CACHE_DIR)",
    "out": "flat results JSON for DVC",
    "skip_missing_detectors": "skip metrics whose detector file is absent instead of failing",
    "mlflow": "log results and jsonl files to MLflow",
    "cpu": "run on CPU even when CUDA is available",
}

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


def log_to_mlflow(results: dict[str, float], artifacts: list[Path], params: dict[str, Any]) -> None:
    """Log results and files into the active MLflow run, or a new 'evaluate' run (local sqlite by default)."""
    import mlflow

    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri("sqlite:///mlflow.db")
    active = mlflow.active_run()
    if active is None:
        mlflow.start_run(run_name="evaluate")
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics(results)
        for path in artifacts:
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="metrics")
    finally:
        if active is None:
            mlflow.end_run()


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run the metrics of `cfg`; returns compute_metrics' {'records', 'skipped'} plus 'results'."""
    import torch

    from stages.evaluate.distributed import from_accelerate, is_main
    from stages.evaluate.runner import MetricOptions, compute_metrics, flat_results, report_metric, write_metrics_json

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
        device=device, group=group, progress=cfg.progress)
    main = is_main(group)
    written: list[Path] = []

    def on_result(record: dict[str, Any]) -> None:
        line = report_metric(record, run_dir=run_dir, snapshot_pkl=network)
        print(line, flush=True)
        if run_dir is not None:
            written.append(run_dir / f"metric-{record['metric']}.jsonl")

    out = compute_metrics(network, list(cfg.metrics), dataset_options(cfg, train_dir), opts,
                          skip_missing_detectors=cfg.skip_missing_detectors, on_result=on_result)
    out["results"] = flat_results(out["records"])
    if main:
        for name, reason in out["skipped"].items():
            print(f"skipped {name}: {reason}", file=sys.stderr)
        write_metrics_json(cfg.out, out["results"])
        if cfg.mlflow or os.environ.get("SG2_MLFLOW") == "1":
            log_to_mlflow(out["results"], [*written, Path(cfg.out)],
                          dict(network=network, metrics=",".join(cfg.metrics), seed=cfg.seed))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_argument(parser)
    add_dataclass_arguments(parser, EvaluateConfig, HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(EvaluateConfig, "evaluate", args, [f.name for f in dataclasses.fields(EvaluateConfig)])
        evaluate(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DetectorNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
