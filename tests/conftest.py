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
