"""What a training run leaves in MLflow, and metrics computed on its snapshots.

MLflow runs against a throw-away sqlite store in the test's folder; the metric detectors are the
stand-ins of tests/test_metrics.py (no download: SG2_OFFLINE=1).
"""

from __future__ import annotations

import json
import warnings

import pytest

from stages.common.tracking import DEFAULT_EXPERIMENT as EXPERIMENT
from stages.common.tracking import PARENT_RUN_ENV
from stages.metrics.detectors import CACHE_ENV, DETECTOR_DIR_ENV, OFFLINE_ENV
from stages.metrics.features import STATS_CACHE_ENV
from stages.train.loop import train
from stages.train.phases import TrainingDiverged
from tests.test_metrics import make_detector_dir
from tests.test_train import cfg, make_zip

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp("data") / "toy.zip", n=12)


@pytest.fixture(autouse=True)
def _uri_from_environment():
    """Other tests set MLflow's in-process URI; these read it from MLFLOW_TRACKING_URI like a stage does."""
    mlflow.set_tracking_uri(None)
    yield
    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private sqlite tracking store; returns an MlflowClient on it."""
    monkeypatch.chdir(tmp_path)  # artifacts of a local store land in ./mlartifacts
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # read by MLflow whenever no URI was set in-process
    yield mlflow.tracking.MlflowClient(uri)
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv(STATS_CACHE_ENV, str(tmp_path / "stats-cache"))
    monkeypatch.delenv(DETECTOR_DIR_ENV, raising=False)


def _only_run(client, experiment_name: str = EXPERIMENT, name: str | None = None):
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    if name is not None:
        runs = [r for r in runs if r.info.run_name == name]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_training_run_in_mlflow_nested_under_parent(data, tmp_path, store, monkeypatch):
    # The environment the pipeline flow hands its stage subprocesses; the stage runs in another process,
    # so the flow's run is closed here before training starts (no in-process active run to nest under).
    import logging

    from flows.tracking import PipelineTracker

    pipeline = PipelineTracker(tmp_path, logging.getLogger("test"))
    pipeline.start()
    env = pipeline.child_env()
    parent = pipeline.run_id
    pipeline.finish("FINISHED")
    assert env[PARENT_RUN_ENV] == parent and env["MLFLOW_TRACKING_URI"].startswith("sqlite:")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_dir = train(cfg(data, tmp_path / "run", steps=2, mlflow=True, batch=4))

    run = _only_run(store, name=f"train {run_dir.name}")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["stage"] == "train"
    assert len(run.data.tags["dataset_hash"]) >= 16
    assert run.data.tags["git_commit"] != ""
    assert run.data.tags["ops.bias_act"] in ("ref", "fast") and run.data.tags["ops.upfirdn2d"] in ("ref", "fast")
    assert run.data.params["batch_size"] == "4" and run.data.params["G_reg_interval"] == "4"
    options = json.loads((run_dir / "training_options.json").read_text())
    assert run.data.params["loss_kwargs.r1_gamma"] == str(options["loss_kwargs"]["r1_gamma"])
    history = store.get_metric_history(run.info.run_id, "Loss/G/loss")
    assert len(history) == 2 and all(h.value == h.value for h in history)  # one point per tick, finite
    assert [h.step for h in store.get_metric_history(run.info.run_id, "Progress/kimg")] == [0, 0]  # kimg (int)
    arts = _artifacts(store, run.info.run_id)
    assert {"images/reals.png", "images/fakes_init.png", "images/fakes000000.004.png", "images/fakes000000.008.png",
            "stats.jsonl", "log.txt", "snapshots/network-snapshot-000000.008.safetensors"} <= arts
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_crash_ends_run_failed(data, tmp_path, store, monkeypatch):
    import models.loss

    real = models.loss.g_nonsaturating_loss
    calls = {"n": 0}

    def poisoned(logits):
        calls["n"] += 1
        return real(logits) * (float("nan") if calls["n"] > 1 else 1.0)

    monkeypatch.setattr(models.loss, "g_nonsaturating_loss", poisoned)
    with pytest.raises(TrainingDiverged):
        train(cfg(data, tmp_path / "run", steps=3, mlflow=True))
    assert _only_run(store).info.status == "FAILED"


def test_unreachable_tracking_server_warns_once_and_trains_on(data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = train(cfg(data, tmp_path / "run", steps=2, mlflow=True))
    mlflow_warnings = [w for w in caught if "MLflow" in str(w.message)]
    assert len(mlflow_warnings) == 1, [str(w.message) for w in mlflow_warnings]
    assert "tracking disabled" in str(mlflow_warnings[0].message)
    assert (run_dir / "network-snapshot-000000.008.safetensors").is_file()


def test_metrics_on_snapshots_and_missing_detector_skipped_once(data, tmp_path, store, offline):
    dets = make_detector_dir(tmp_path / "dets", feature_dim=32)
    # precision/recall needs NVIDIA's vgg16.pt (its fc layers exist nowhere else, so no offline port stands in):
    # named once, then dropped for the run
    (dets / "vgg16.pt").unlink()
    run_dir = train(cfg(data, tmp_path / "run", steps=2, metrics=("fid12_full", "pr123_full"),
                        detector_dir=str(dets), mlflow=True))
    lines = [json.loads(line) for line in (run_dir / "metric-fid12_full.jsonl").read_text().splitlines()]
    assert [rec["snapshot_pkl"] for rec in lines] == [f"network-snapshot-000000.00{k}.safetensors" for k in (4, 8)]
    assert all(rec["results"]["fid12_full"] > 0 for rec in lines)
    assert not (run_dir / "metric-pr123_full.jsonl").exists()
    log = (run_dir / "log.txt").read_text()
    assert log.count("metric pr123_full: skipped") == 1 and "vgg16.pt" in log and "fully connected" in log
    assert log.count("metric fid12_full: fid12_full") == 2
    run = _only_run(store, name=f"train {run_dir.name}")
    assert len(store.get_metric_history(run.info.run_id, "Metrics/fid12_full")) == 2

    # Back to the first checkpoint: the second tick's line goes, and comes back once retrained.
    first = sorted((run_dir / "checkpoints").glob("ckpt-*"))[0]
    train(cfg(data, run_dir, steps=2, metrics=("fid12_full",), detector_dir=str(dets), resume=str(first)))
    again = [json.loads(line) for line in (run_dir / "metric-fid12_full.jsonl").read_text().splitlines()]
    assert len(again) == 2 and again[0] == lines[0]
    assert "1 metric-*.jsonl line(s) written after" in (run_dir / "log.txt").read_text()


def test_unknown_metric_fails_before_training(data, tmp_path):
    from stages.common.config import ConfigError

    with pytest.raises(ConfigError, match="metrics: unknown metric 'fid50x'"):
        cfg(data, tmp_path / "run", steps=1, metrics=("fid50x",))
    assert cfg(data, tmp_path / "run", steps=1, metrics=("none",)).metrics == ()
