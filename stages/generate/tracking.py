"""Log generate outputs to MLflow: the only place this package touches MLflow (imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RUN_ID_ENV = "MLFLOW_RUN_ID"


def mlflow_requested(flag: bool) -> bool:
    """--mlflow, or a run id in the environment (a pipeline step logging into its parent's run)."""
    return flag or bool(os.environ.get(RUN_ID_ENV))


def log_outputs(
    paths: Iterable[str | Path],
    artifact_path: str,                        # folder inside the run's artifacts, e.g. "generate/images"
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    run_id: str | None = None,                 # default $MLFLOW_RUN_ID; None = a new run
    run_name: str = "generate",
) -> str:
    """Log `paths` as artifacts (plus settings as tags, and metrics) and return the run id.

    With a run id the files go into that existing run (resumed, then left FINISHED as it was), else
    a new run is created. The tracking URI defaults to the project's `sqlite:///mlflow.db`.
    """
    import mlflow

    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri("sqlite:///mlflow.db")
    run_id = run_id or os.environ.get(RUN_ID_ENV) or None
    # start_run would also read MLFLOW_RUN_ID itself; passing it explicitly keeps one code path.
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name) as run:
        if params:
            # Tags, not params: a run may be logged into repeatedly and MLflow params are write-once.
            mlflow.set_tags({f"generate.{k}": str(v)[:5000] for k, v in params.items()})
        if metrics:
            mlflow.log_metrics({f"generate.{k}": float(v) for k, v in metrics.items()})
        for p in paths:
            mlflow.log_artifact(str(p), artifact_path=artifact_path)
        return run.info.run_id
