"""MLflow for the pipeline flow: one parent run per execution, one nested run per stage.

After each stage the flow reads what the stage left on disk (params.yaml section, reports, metrics files,
run folder, exports) and logs it into the stage's nested run. A stage that tracks itself while it works
(training with `mlflow: true`) nests its own run under the parent through the environment `child_env`
hands to the stage subprocess (`stages.common.tracking`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from stages.common.config import flatten
from stages.common.tracking import PARENT_RUN_ENV, git_commit, use_experiment

DEFAULT_EXPERIMENT = "stylegan2-ada-pipeline"


def project_tracking_uri(project_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the server-less default `sqlite:///<project>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_dir / 'mlflow.db').resolve()}"


def setup_experiment(project_dir: Path, name: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the project's store; artifacts of a new experiment go to `<project>/mlartifacts`."""
    import mlflow

    mlflow.set_tracking_uri(project_tracking_uri(project_dir))
    return use_experiment(name, project_dir / "mlartifacts")


def numeric(d: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (and booleans as 0/1) of a flat dict: what MLflow metrics can hold."""
    out = {}
    for key, value in d.items():
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out[key] = float(value)
    return out


def dataset_hash(project_dir: Path, params: dict[str, Any]) -> str | None:
    """The md5 DVC recorded in dvc.lock for the prepare stage's dataset output."""
    lock = project_dir / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    dest = params.get("prepare", {}).get("dest")
    for out in stages.get("prepare", {}).get("outs", []):
        if out.get("path") == dest:
            return out.get("md5")
    return None


def pipeline_tags(project_dir: Path, params: dict[str, Any]) -> dict[str, str]:
    tags = {"git_commit": git_commit(project_dir), "dataset_md5": dataset_hash(project_dir, params),
            "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]}
    return {k: v for k, v in tags.items() if v}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _log_files(paths: list[Path], artifact_path: str) -> list[str]:
    import mlflow

    logged = []
    for path in paths:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
            logged.append(path.name)
    return logged


def log_stage_outputs(stage: str, project_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Log the stage's params section, metrics and artifacts into the active (nested) run; returns a summary."""
    import mlflow

    section = params.get(stage, {})
    mlflow.log_params({k: str(v)[:500] for k, v in flatten(section).items()})
    summary: dict[str, Any] = {"stage": stage}
    p = project_dir

    if stage == "prepare":
        report = Path(p / f"{section.get('dest')}.report.json")
        data = _read_json(report)
        mlflow.log_metrics(numeric({k: data[k] for k in ("num_written", "num_skipped", "num_fixed", "resolution",
                                                         "channels") if k in data}))
        summary["files"] = _log_files([report], "prepare")
    elif stage == "validate":
        out = p / section.get("out", "reports/validation.json")
        mlflow.log_metrics(numeric(flatten(_read_json(out))))
        summary["files"] = _log_files([out], "validate")
    elif stage == "train":
        run_dir = p / section.get("run_dir", "runs/demo")
        summary["curves"] = log_training_curves(run_dir / "stats.jsonl")
        snapshots = sorted(run_dir.glob("network-snapshot-*.safetensors"))
        grids = sorted(run_dir.glob("fakes*.png"))
        files = [run_dir / "training_options.json", run_dir / "log.txt", run_dir / "reals.png", *grids[-3:],
                 *snapshots[-1:]]
        summary["files"] = _log_files(files, "train")
    elif stage == "evaluate":
        out = p / section.get("out", "metrics.json")
        mlflow.log_metrics(numeric(flatten(_read_json(out))))
        jsonl = sorted((p / (section.get("run_dir") or "")).glob("metric-*.jsonl")) if section.get("run_dir") else []
        summary["files"] = _log_files([out, *jsonl], "evaluate")
    elif stage == "generate":
        outdir = p / section.get("outdir", "reports/generate")
        files = sorted(outdir.glob("*.png"))[:20] + sorted(outdir.glob("*.mp4")) + sorted(outdir.glob("*.gif"))
        summary["files"] = _log_files(files, "generate")
    elif stage == "export":
        outdir = p / section.get("outdir", "exports")
        from stages.export.parity import parity_metrics

        parity = _read_json(outdir / "parity.json")
        if parity.get("variants"):
            mlflow.log_metrics({**parity_metrics(parity), "parity.passed": float(bool(parity.get("passed")))})
        summary["files"] = _log_files([outdir / "generator.onnx", outdir / "parity.json",
                                       outdir / "export_summary.json", outdir / "build_engine.sh"], "export")
    return summary


def log_training_curves(stats_jsonl: Path) -> int:
    """Every tick's statistics as metrics with step = kimg (the official x axis)."""
    import mlflow

    if not stats_jsonl.is_file():
        return 0
    n = 0
    for line in stats_jsonl.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        # Records hold {name: {num, mean, std}}; the means are the curves.
        flat = numeric(flatten(record))
        metrics = {k.removesuffix(".mean"): v for k, v in flat.items() if k.endswith(".mean")}
        kimg = metrics.get("Progress/kimg")
        step = round(kimg) if kimg is not None else n
        if metrics:
            mlflow.log_metrics(metrics, step=step)
            n += 1
    return n


class PipelineTracker:
    """The flow's MLflow runs, kept from ever stopping the pipeline.

    The stages' outputs live on disk and in DVC; MLflow is a view of them. When the tracking server
    goes away mid-pipeline, the first failing call is recorded (`self.error`), later calls are skipped,
    and the pipeline goes on; rerunning the flow once the server is back logs everything (DVC skips
    the stages that already ran).
    """

    def __init__(self, project_dir: Path, experiment: str, logger: Any) -> None:
        self.project_dir, self.experiment, self.logger = project_dir, experiment, logger
        self.error: str | None = None
        self.run_id: str | None = None

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any MLflow/transport failure: record it, keep the pipeline going
            self.error = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            self.logger.warning("MLflow logging stopped (%s); stage outputs stay on disk — rerun the flow "
                                "once the tracking server is back to log them", self.error)
            return None

    def start(self) -> None:
        import mlflow

        # Fail in seconds, not minutes, when the server is gone (MLflow's defaults retry with backoff).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

        def _start() -> str:
            experiment_id = setup_experiment(self.project_dir, self.experiment)
            return mlflow.start_run(experiment_id=experiment_id, run_name="pipeline").info.run_id

        self.run_id = self._guard("start pipeline run", _start)

    def child_env(self) -> dict[str, str]:
        """Environment for stage subprocesses: a stage that logs to MLflow itself (train with
        `mlflow: true`) then nests its run under this pipeline run, on the same server and experiment."""
        import mlflow

        if self.run_id is None or self.error is not None:
            return {}
        run = mlflow.active_run()
        env = {PARENT_RUN_ENV: self.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        if run is not None:
            env["MLFLOW_EXPERIMENT_ID"] = run.info.experiment_id
        return env

    def log_stage(self, stage: str, result: dict[str, Any], params: dict[str, Any]) -> None:
        import mlflow

        def _log() -> None:
            with mlflow.start_run(run_name=stage, nested=True):
                mlflow.set_tags({"stage": stage, "dvc_ran": str(result["ran"]).lower()})
                result.update(log_stage_outputs(stage, self.project_dir, params))
                mlflow.log_metric("stage_seconds", result["seconds"])

        self._guard(f"log stage {stage}", _log)

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._guard(what, fn, *args, **kwargs)

    def finish(self, status: str) -> None:
        import mlflow

        if self.run_id is not None and mlflow.active_run() is not None:
            # end_run pops the run before telling the server, so even when the server is gone the next
            # flow in this process does not nest under a dead run.
            try:
                mlflow.end_run(status=status)
            except Exception as exc:
                self.logger.warning("could not close the MLflow run %s: %s", self.run_id, exc)
