"""Experiment tracking behind a small interface, so the loop never imports MLflow.

`make_tracker` returns an `MlflowTracker` when MLflow is importable and tracking was asked for
(`--mlflow` or `SG2_MLFLOW=1`), else a `NullTracker` (stats already go to `stats.jsonl`). A tracking
server that cannot be reached is warned about once; training continues without it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

Status = str  # "FINISHED" | "FAILED" | "KILLED" (MLflow's run statuses)


class Tracker(Protocol):
    def start(self, run_name: str, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def end(self, status: Status) -> None: ...


class NullTracker:
    def start(self, run_name: str, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
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

    def start(self, run_name: str, params: dict[str, Any]) -> None:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            self._guard("set_tracking_uri", self._mlflow.set_tracking_uri, "sqlite:///mlflow.db")
        self._guard("start_run", self._mlflow.start_run, run_name=run_name)
        flat = {k: str(v)[:500] for k, v in params.items()}  # MLflow caps param values at 500 chars
        self._guard("log_params", self._mlflow.log_params, flat)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k.replace("/", "."): float(v) for k, v in metrics.items() if v == v}  # NaN is not loggable
        self._guard("log_metrics", self._mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: str | Path) -> None:
        self._guard("log_artifact", self._mlflow.log_artifact, str(path))

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
