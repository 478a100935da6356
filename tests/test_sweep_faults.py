"""Sweeps that survive faults, with real processes and real signals (tiny size, CPU).

`python -m flows.sweep` runs as a separate process group; it is SIGKILLed (the whole group: the flow, its
`dvc exp run`, the training process and Prefect's temporary server, as a reboot or the OOM killer would)
once the second point's training has written a checkpoint. The same command run again must finish the
sweep: the first point not trained again, the second resumed from its checkpoint, exactly two MLflow child
runs (one `best=true`), and the registry as after an uninterrupted sweep (one version, the best point's).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_flow import TINY

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("prefect")
pytest.importorskip("dvc")
pytestmark = pytest.mark.slow  # two tiny trainings, a kill and two reruns: a few minutes on 2 cores

GRID = ["--param", "train.gamma=0.05,5", "--metric", "fd_effnet100"]
MODEL = TINY["export"]["registered_model"]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the project with tiny params; training long enough (8 ticks, a checkpoint each)
    that a kill after the first checkpoint lands inside training."""
    proj = tmp_path_factory.mktemp("sweep-faults")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("stages", "models", "ops", "flows"):
        shutil.copytree(ROOT / name, proj / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", proj / ".gitignore")
    params = json.loads(json.dumps(TINY))
    params["train"].update(kimg=0.128, tick_kimg=0.016, checkpoint_ticks=1, snap=4)
    params["evaluate"]["metrics"] = ["fd_effnet100"]  # the sweep's metric only: no Inception pass on CPU
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([*GIT, "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=proj, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=proj, check=True)
    subprocess.run([*GIT, "commit", "-qm", "project"], cwd=proj, check=True)
    return proj


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("sweep-env")
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SG2_PARAMS", "PREFECT_API_URL",
                                                            "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    out.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1",
               PREFECT_HOME=str(work / "prefect"), SG2_OFFLINE="1", SG2_DETECTOR_DIR=str(work / "no-detectors"),
               SG2_METRICS_CACHE_DIR=str(work / "metric-cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return out


def sweep_cmd(project: Path) -> list[str]:
    return [sys.executable, "-m", "flows.sweep", "--project-dir", str(project), *GRID]


def read_record(project: Path) -> dict | None:
    found = sorted((project / "reports" / "sweeps").glob("*/sweep.json"))
    return json.loads(found[0].read_text()) if found else None


def complete_checkpoints(run_dir: Path, newer_than: float) -> list[Path]:
    return [c for c in (run_dir / "checkpoints").glob("ckpt-*")
            if (c / "COMMIT").is_file() and (c / "COMMIT").stat().st_mtime >= newer_than]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep's process group (the sweep was started as its leader, so this is only its processes)."""
    import psutil

    pids = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for pid in pids:  # a child that left the group (none should): by its own id
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{(project / 'mlflow.db').resolve()}")


def runs(client, where: str) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], where)


@pytest.fixture(scope="module")
def killed_then_rerun(project, env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("sweep-logs")
    run_dir = project / TINY["train"]["run_dir"]
    with (logs / "first.log").open("w") as log:
        proc = subprocess.Popen(sweep_cmd(project), cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    second_started = None
    deadline = time.time() + 900
    try:
        while True:
            assert proc.poll() is None, "the sweep ended before it could be killed:\n" + \
                (logs / "first.log").read_text()[-4000:]
            assert time.time() < deadline, "the second point's training never wrote a checkpoint"
            record = read_record(project)
            if second_started is None and record and record["points"][1]["state"] == "running":
                second_started = time.time() - 1
            if second_started is not None and complete_checkpoints(run_dir, second_started):
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    at_kill = read_record(project)
    trains_before = len(runs(mlflow_client(project), "tags.stage = 'train'"))
    rerun = subprocess.run(sweep_cmd(project), cwd=project, env=env, capture_output=True, text=True, timeout=1500)
    (logs / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-6000:]
    return at_kill, rerun, read_record(project), trains_before


def test_killed_sweep_finishes_on_rerun_without_retraining(project, killed_then_rerun):
    at_kill, rerun, record, trains_before = killed_then_rerun
    assert [p["state"] for p in at_kill["points"]] == ["done", "running"]
    assert [p["state"] for p in record["points"]] == ["done", "done"]
    assert record["points"][0]["exp_runs"] == 1, "the first point was run again"
    assert record["points"][1]["exp_runs"] == 2
    assert record["executions"] == 2 and record["state"] == "finished" and not record["not_logged"]
    assert "done before, not run again" in rerun.stdout + rerun.stderr
    assert "resuming from checkpoint" in rerun.stdout + rerun.stderr, "the second point's training did not resume"
    assert trains_before == 2  # point 1's training and point 2's killed one
    experiments = subprocess.run([str(Path(sys.executable).with_name("dvc")), "exp", "list", "--name-only"],
                                 cwd=project, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(experiments) == [f"{record['sweep']}-0", f"{record['sweep']}-1"]
    summary = (project / "reports" / "sweeps" / record["sweep"] / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and sum(line.endswith(",yes") for line in summary) == 1


def test_mlflow_and_registry_as_after_an_uninterrupted_sweep(project, killed_then_rerun):
    _, _, record, _ = killed_then_rerun
    client = mlflow_client(project)
    sweeps = runs(client, "tags.stage = 'sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    parent = sweeps[0].info.run_id
    points = runs(client, f"tags.mlflow.parentRunId = '{parent}' and tags.stage = 'sweep-point'")
    assert sorted(p.info.run_name for p in points) == ["gamma=0.05", "gamma=5"]
    assert all(p.info.status == "FINISHED" and "fd_effnet100" in p.data.metrics for p in points)
    assert all(p.data.params["train.gamma"] in ("0.05", "5") and p.data.params["train.cfg"] == "tiny" for p in points)
    best = [p for p in points if p.data.tags.get("best") == "true"]
    assert len(best) == 1 and best[0].info.run_id == record["best"]["run_id"]
    by_name = {p.info.run_name: p for p in points}
    first_trains = runs(client, f"tags.mlflow.parentRunId = '{by_name['gamma=0.05'].info.run_id}' and "
                                "tags.stage = 'train'")
    assert len(first_trains) == 1, "point 1 must not be trained again"
    second_trains = runs(client, f"tags.mlflow.parentRunId = '{by_name['gamma=5'].info.run_id}' and "
                                 "tags.stage = 'train'")
    assert sorted(r.info.status for r in second_trains) == ["FINISHED", "KILLED"]
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1, [(v.version, v.tags) for v in versions]
    version = client.get_model_version(MODEL, versions[0].version)
    assert sorted(version.aliases) == ["challenger", "champion"]
    assert version.tags["sweep_point_run_id"] == best[0].info.run_id and version.tags["sweep"] == record["sweep"]
    assert version.tags["train_run_id"] in {r.info.run_id for r in first_trains + second_trains}


def test_running_the_finished_sweep_again_changes_nothing(project, env, killed_then_rerun):
    _, _, before, _ = killed_then_rerun
    again = subprocess.run(sweep_cmd(project), cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    after = read_record(project)
    assert [p["exp_runs"] for p in after["points"]] == [p["exp_runs"] for p in before["points"]]
    client = mlflow_client(project)
    assert len(runs(client, "tags.stage = 'sweep-point'")) == 2
    assert len(runs(client, "tags.best = 'true'")) == 1
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


# ------------------------------------------------------------------------------------------- MLflow away
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real MLflow server on 127.0.0.1 (sqlite store, served artifacts), in its own process group."""
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                             f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
                             (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=(folder / "server.log").open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, (folder / "server.log").read_text()[-3000:]
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return proc
        time.sleep(0.5)
    raise AssertionError("the MLflow server did not start:\n" + (folder / "server.log").read_text()[-3000:])


def stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_mlflow_away_mid_sweep_points_go_on_and_are_logged_on_rerun(project, env, killed_then_rerun,
                                                                    tmp_path_factory):
    """The tracking server dies while a point trains: the point finishes, the sweep ends 0 and names what is
    not in MLflow; with the server back, the same command logs it (and registers) without training again."""
    from mlflow import MlflowClient

    server_dir, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    cmd = [sys.executable, "-m", "flows.sweep", "--project-dir", str(project), "--param", "train.gamma=0.5",
           "--metric", "fd_effnet100"]
    server = start_mlflow_server(server_dir, port)
    try:
        first = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
        deadline = time.time() + 900
        while True:  # the point has its run on the server and is training: pull the plug
            assert first.poll() is None and time.time() < deadline, "the point never started"
            records = [json.loads(p.read_text()) for p in (project / "reports" / "sweeps").glob("*/sweep.json")]
            point = next((r["points"][0] for r in records if r["grid"] == {"train.gamma": ["0.5"]}), None)
            if point and point["state"] == "running" and point["run_id"]:
                break
            time.sleep(0.2)
        stop_group(server)
        out, _ = first.communicate(timeout=1500)
    finally:
        stop_group(server)
    assert first.returncode == 0, out[-4000:]
    record = next(r for r in (json.loads(p.read_text()) for p in (project / "reports" / "sweeps").glob("*/sweep.json"))
                  if r["grid"] == {"train.gamma": ["0.5"]})
    assert record["points"][0]["state"] == "done" and not record["points"][0]["logged"]
    assert "point gamma=0.5" in record["not_logged"] and "not in MLflow yet" in out

    server = start_mlflow_server(server_dir, port)  # back, same store
    try:
        again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1500)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        record = next(r for r in (json.loads(p.read_text()) for p in
                                  (project / "reports" / "sweeps").glob("*/sweep.json"))
                      if r["grid"] == {"train.gamma": ["0.5"]})
        assert record["points"][0]["exp_runs"] == 1, "the point must not be trained again"
        assert record["points"][0]["logged"] and record["not_logged"] == [] and record["registered"]
        client = MlflowClient(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        sweeps = client.search_runs(experiments, f"tags.sweep = '{record['sweep']}' and tags.stage = 'sweep'")
        assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
        points = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{sweeps[0].info.run_id}' and "
                                                 "tags.stage = 'sweep-point'")
        assert len(points) == 1 and points[0].info.status == "FINISHED" and "fd_effnet100" in points[0].data.metrics
        assert points[0].data.tags.get("best") == "true"
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert [v.tags.get("sweep") for v in versions] == [record["sweep"]]
    finally:
        stop_group(server)
