"""MLflow experiment tracking for every stage behind one small interface (runs, params, metrics, artifacts). The
one place that uses MLflow's API directly is the model registry of the export stage (`stages/export/registry.py`
and its `register`: pyfunc models, versions, aliases), which this interface does not cover.

One switch, one rule: a stage logs to MLflow when its `mlflow` option is true (`--mlflow`, or
`mlflow: true` in its params.yaml section) or when SG2_MLFLOW is 1/true/yes/on. Where: the tracking
URI from MLFLOW_TRACKING_URI, else the project's server-less `sqlite:///mlflow.db` with artifacts in
`./mlartifacts`; one experiment for the whole project (`sg2ada-mlops`, or MLFLOW_EXPERIMENT_NAME / _ID),
shared by pipeline runs, `dvc exp run`s, sweeps and stand-alone stage runs, with the same metric keys
everywhere (the official statistic names, e.g. `Loss/G/loss`). SG2_MLFLOW_RUN_NAME names a stage's run by
what the caller varies (a sweep sets it). A run started while another is active in the process nests
under it; a stage started by the pipeline flow or a sweep nests under their run through
SG2_MLFLOW_PARENT_RUN_ID; MLFLOW_RUN_ID makes a stage log into that existing run. Tracking never stops
a stage: an unreachable server is noticed by a quick check before the run starts (or by the first failing
call), warned about once, and the stage carries on untracked. MLflow is imported only when tracking is on.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

SWITCH_ENV = "SG2_MLFLOW"
PARENT_RUN_ENV = "SG2_MLFLOW_PARENT_RUN_ID"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_NAME_ENV = "SG2_MLFLOW_RUN_NAME"
DEFAULT_EXPERIMENT = "sg2ada-mlops"  # unless MLFLOW_EXPERIMENT_ID/NAME or an active run say otherwise
ARTIFACT_DIR = Path("mlartifacts")
REACHABILITY_TIMEOUT_S = 3.0

Status = str  # "FINISHED" | "FAILED" | "KILLED" (MLflow's run statuses)


def mlflow_enabled(option: bool) -> bool:
    """The one rule: the stage's `mlflow` option, or SG2_MLFLOW=1/true/yes/on."""
    return bool(option) or os.environ.get(SWITCH_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def named_run(default: str) -> str:
    """`default`, prefixed by what the caller varies (SG2_MLFLOW_RUN_NAME, e.g. `gamma=0.1`) when set."""
    prefix = os.environ.get(RUN_NAME_ENV)
    return f"{prefix} {default}" if prefix else default


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a dict (booleans as 0/1): what MLflow metrics can hold, under the same keys."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out[key] = float(value)
    return out


def git_commit(cwd: str | os.PathLike = ".") -> str | None:
    """HEAD of the repository holding `cwd`, or None outside git (a pip-installed package, a container)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def unreachable_reason(uri: str, timeout: float = REACHABILITY_TIMEOUT_S) -> str | None:
    """Why a tracking server cannot be reached (None when it answers, or when the store is local).

    One short request instead of MLflow's own retries, which wait over a minute before failing."""
    if not uri.startswith(("http://", "https://")):
        return None
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        return f"{uri} did not answer within {timeout:g} s ({type(exc).__name__})"
    return None


def use_experiment(name: str, artifact_dir: Path = ARTIFACT_DIR) -> str:
    """Make `name` the active experiment of the current tracking URI, creating it if needed; returns its id.

    A new experiment on a local store (sqlite, file) keeps its artifacts in `artifact_dir`; a tracking
    server stores them itself (mlflow-artifacts:/), so none is given there.
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None if is_remote(mlflow.get_tracking_uri()) else artifact_dir.resolve().as_uri()
        # A model-training experiment (MLflow 3 opens GenAI experiments on traces, not on the runs table).
        experiment_id = mlflow.create_experiment(name, artifact_location=location,
                                                 tags={"mlflow.experimentKind": "custom_model_development"})
    else:
        experiment_id = experiment.experiment_id
    # Active for nested runs too (they take the active experiment, not their parent's).
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


class Tracker(Protocol):
    def start(self, run_name: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None: ...
    def end(self, status: Status = "FINISHED") -> None: ...
    @property
    def run_id(self) -> str | None: ...


class NullTracker:
    """Tracking off: every call does nothing (statistics still go to the stage's own files)."""

    run_id = None

    def start(self, run_name: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        pass

    def end(self, status: Status = "FINISHED") -> None:
        pass


class MlflowTracker:
    """One MLflow run; every call is guarded so that tracking never stops the stage."""

    def __init__(self, experiment: str | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self._experiment = experiment or experiment_name()
        self._alive = True
        self._owns_run = False
        self.run_id: str | None = None

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._alive:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # unreachable server, bad URI...: warn once and carry on untracked
            self._alive = False
            warnings.warn(f"MLflow {what} failed ({type(exc).__name__}: {str(exc)[:300]}); tracking disabled "
                          f"for this run", RuntimeWarning, stacklevel=3)
            return None

    def start(self, run_name: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None) -> None:
        mlflow = self._mlflow
        # A dead server should cost seconds once, not MLflow's default minutes of retries per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if "MLFLOW_TRACKING_URI" not in os.environ:
            mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)
        reason = unreachable_reason(mlflow.get_tracking_uri())
        if reason is not None:
            self._alive = False
            warnings.warn(f"MLflow server {reason}; tracking disabled for this run", RuntimeWarning, stacklevel=2)
            return
        active = mlflow.active_run()
        if active is None and not (os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                   or os.environ.get("MLFLOW_RUN_ID")):
            self._guard("set_experiment", use_experiment, self._experiment)
        all_tags = dict(tags or {})
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent and active is None and not os.environ.get("MLFLOW_RUN_ID"):
            all_tags["mlflow.parentRunId"] = parent
        run = self._guard("start_run", mlflow.start_run, run_name=named_run(run_name),
                          tags=all_tags or None, nested=active is not None)
        if run is not None:
            self._owns_run, self.run_id = True, run.info.run_id
        if params:
            flat = {k: str(v)[:500] for k, v in params.items()}  # MLflow caps param values at 500 chars
            self._guard("log_params", mlflow.log_params, flat)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard("set_tags", self._mlflow.set_tags, {k: str(v)[:5000] for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = finite_metrics(metrics)  # NaN is not loggable
        if clean:
            self._guard("log_metrics", self._mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).is_file():
            self._guard("log_artifact", self._mlflow.log_artifact, str(path), artifact_path=artifact_path)

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.log_artifact(path, artifact_path)

    def end(self, status: Status = "FINISHED") -> None:
        if self._owns_run:
            self._owns_run = False
            self._guard("end_run", self._mlflow.end_run, status=status)


def make_tracker(enabled: bool, experiment: str | None = None) -> tuple[Tracker, str | None]:
    """(tracker, a note for the log or None). `enabled` is the stage's `mlflow` option (see `mlflow_enabled`)."""
    if not mlflow_enabled(enabled):
        return NullTracker(), None
    if importlib.util.find_spec("mlflow") is None:
        return NullTracker(), "MLflow tracking requested but mlflow is not installed; results stay in files only"
    return MlflowTracker(experiment), None
