"""Experiment tracking behind a small interface, so the loop never imports MLflow.

`make_tracker` returns an `MlflowTracker` when MLflow is importable and tracking was asked for
(`--mlflow` or `SG2_MLFLOW=1`), else a `NullTracker` (stats already go to `stats.jsonl`). A tracking
server that cannot be reached is warned about once; training continues without it.

Nesting across processes: the pipeline flow exports `SG2_MLFLOW_PARENT_RUN_ID` (and the tracking URI
and experiment) to its stage subprocesses; a training run started under it carries MLflow's
`mlflow.parentRunId` tag, which is what the UI nests by.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

from stages.common.tracking import use_experiment

Status = str  # "FINISHED" | "FAILED" | "KILLED" (MLflow's run statuses)


PARENT_RUN_ENV = "SG2_MLFLOW_PARENT_RUN_ID"
EXPERIMENT = "stylegan2-ada-train"  # used unless MLFLOW_EXPERIMENT_ID/NAME or an active run says otherwise


class Tracker(Protocol):
    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def end(self, status: Status) -> None: ...


class NullTracker:
    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def end(self, status: Status) -> None:
        pass


class MlflowTracker:
    """MLflow run for one training run; every call is guarded so tracking never stops training."""

    def __init__(self) -> None:
        import mlflow

        self._mlflow = mlflow
        self._alive = True

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self._alive:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # unreachable server, bad URI...: warn once and carry on untracked
            self._alive = False
            warnings.warn(f"MLflow {what} failed ({type(exc).__name__}: {exc}); tracking disabled for this run",
                          RuntimeWarning, stacklevel=3)

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> None:
        # A dead server should cost seconds once, not MLflow's default minutes of retries per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if "MLFLOW_TRACKING_URI" not in os.environ:
            self._guard("set_tracking_uri", self._mlflow.set_tracking_uri, "sqlite:///mlflow.db")
        if not (os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                or self._mlflow.active_run() is not None):
            self._guard("set_experiment", use_experiment, EXPERIMENT, Path("mlartifacts"))
        all_tags = dict(tags or {})
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        nested = self._mlflow.active_run() is not None  # called from inside a run of the caller's
        self._guard("start_run", self._mlflow.start_run, run_name=run_name, tags=all_tags or None, nested=nested)
        flat = {k: str(v)[:500] for k, v in params.items()}  # MLflow caps param values at 500 chars
        self._guard("log_params", self._mlflow.log_params, flat)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard("set_tags", self._mlflow.set_tags, tags)

    def _use_experiment(self, name: str) -> None:
        mlflow = self._mlflow
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            # A server keeps artifacts itself; a local store gets them in ./mlartifacts (project layout).
            remote = mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks"))
            location = None if remote else Path("mlartifacts").resolve().as_uri()
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k.replace("/", "."): float(v) for k, v in metrics.items() if v == v}  # NaN is not loggable
        self._guard("log_metrics", self._mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard("log_artifact", self._mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def end(self, status: Status) -> None:
        self._guard("end_run", self._mlflow.end_run, status=status)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def make_tracker(enabled: bool) -> tuple[Tracker, str | None]:
    """(tracker, note for the log or None)."""
    enabled = enabled or os.environ.get("SG2_MLFLOW", "").lower() in ("1", "true", "yes", "on")
    if not enabled:
        return NullTracker(), None
    if importlib.util.find_spec("mlflow") is None:
        return NullTracker(), "MLflow tracking requested but mlflow is not installed; stats go to stats.jsonl only"
    return MlflowTracker(), None
