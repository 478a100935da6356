"""Where MLflow runs go: the experiment (artifacts in `<project>/mlartifacts` for a local store, the
server's own store otherwise) and the git commit a run is tagged with. Shared by the training stage,
which logs while it trains, and the pipeline flow, which logs at the edge. MLflow is imported lazily.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(cwd: str | Path = ".") -> str | None:
    """HEAD of the repository holding `cwd`, or None outside git (a pip-installed package, a container)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def use_experiment(name: str, artifact_dir: Path) -> str:
    """Make `name` the active experiment of the current tracking URI, creating it if needed; returns its id.

    A new experiment on a local store (sqlite, file) keeps its artifacts in `artifact_dir`; a tracking
    server stores them itself (mlflow-artifacts:/), so none is given there.
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        remote = mlflow.get_tracking_uri().startswith(("http://", "https://", "databricks"))
        location = None if remote else artifact_dir.resolve().as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    # Active for nested runs too (they take the active experiment, not their parent's).
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
