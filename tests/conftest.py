"""Test-wide settings: no repository params.yaml, no telemetry, no network."""

from __future__ import annotations

import os

import pytest

# Set at import so subprocesses started by tests inherit them too.
os.environ.update(
    MLFLOW_DISABLE_TELEMETRY="true",
    GX_ANALYTICS_ENABLED="false",
    DVC_NO_ANALYTICS="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    DO_NOT_TRACK="1",
)


@pytest.fixture(autouse=True)
def _no_repo_params(monkeypatch, tmp_path_factory):
    """Stages read params.yaml from the working directory; tests must see only the options they pass."""
    monkeypatch.setenv("SG2_PARAMS", str(tmp_path_factory.getbasetemp() / "no-params.yaml"))


# As the session started (a module-scoped fixture's set_experiment would otherwise leak to later modules).
_PRISTINE_MLFLOW_ENV = {k: os.environ.get(k)
                        for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}


@pytest.fixture(autouse=True)
def _fresh_mlflow_globals():
    """MLflow keeps the tracking URI and the active experiment in process globals; a test that sets them
    (directly or through the flow) must not point the next test at its deleted store. `set_experiment`
    also exports MLFLOW_EXPERIMENT_ID for subprocesses."""
    yield
    import sys

    for key, value in _PRISTINE_MLFLOW_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    if "mlflow" in sys.modules:
        import mlflow
        import mlflow.tracking.fluent as fluent

        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None  # no public reset; set_experiment() only ever sets it


def offline_weight_or_skip(name: str):
    """The installed offline weight file `name` (models.features.offline_weights); skipped when the install step
    was not run, failed instead under SG2_REQUIRE_OFFLINE_WEIGHTS=1 (as `make test` sets)."""
    from models.features import offline_weights as ow

    try:
        return ow.find_offline_weight(name)
    except ow.OfflineWeightsNotFoundError as exc:
        if os.environ.get("SG2_REQUIRE_OFFLINE_WEIGHTS"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
