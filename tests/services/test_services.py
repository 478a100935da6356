"""The tiny pipeline against real servers: PostgreSQL, MLflow server, Prefect server, all on 127.0.0.1.

Run by `make test-services` (SG2_SERVICES_TEST=1), never by `make test`. The stack comes from
infra/services/run_stack.py; the pipeline runs THROUGH A PREFECT DEPLOYMENT: `python -m flows.serve`
registers it with the server and executes the flow runs that `run_deployment` creates there. Then MLflow's
REST API (MlflowClient on the server) and Prefect's API are read back. Also: MLflow stopped in the middle
of a pipeline, a rejected PostgreSQL password, and (under strace) that no process connected anywhere
but 127.0.0.1. Everything started is stopped by process id, and PostgreSQL by `pg_ctl stop`, even on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

if os.environ.get("SG2_SERVICES_TEST") != "1":
    pytest.skip("real-services test: run `make test-services` (SG2_SERVICES_TEST=1)", allow_module_level=True)

pytest.importorskip("prefect")
pytest.importorskip("dvc")
pytest.importorskip("mlflow")
pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the `services` extra)")
pytest.importorskip("asyncpg")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "infra" / "services"))
from run_stack import HOST, Stack, StackError  # noqa: E402

from tests.test_flow import TINY  # noqa: E402  (the tiny params the in-process flow test uses)

pytestmark = pytest.mark.services
DEPLOYMENT = "sg2ada-pipeline/services-test"
EXPERIMENT = "services-test"
TIMINGS: dict[str, float] = {}
NOTES: dict[str, str] = {}  # observed behaviour, shown in the terminal summary


def make_project(base: Path, name: str) -> Path:
    """A throwaway copy of the project (code, dvc.yaml) with tiny params, under `dvc init --no-scm`."""
    import yaml

    proj = base / name
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("stages", "models", "ops", "flows"):
        shutil.copytree(ROOT / sub, proj / sub, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")
    (proj / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=proj, check=True)
    return proj


@pytest.fixture(scope="module")
def stack():
    # Under /tmp itself (not pytest's 0700 tmp tree): the `postgres` user must reach its data dir.
    state = Path(tempfile.mkdtemp(prefix="sg2-services-"))
    s = Stack(state, ui=False)
    t0 = time.time()
    try:
        s.up()
        TIMINGS["stack up"] = time.time() - t0
        yield s
    finally:
        s.down()  # by pid (process groups this stack started) + pg_ctl stop, failure or not
        print(f"\nservices timings (s): { {k: round(v, 1) for k, v in TIMINGS.items()} }  state: {state}")
        if os.environ.get("SG2_SERVICES_KEEP") != "1":
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def client_env(stack):
    """This process talks to the stack as any client would: through the environment."""
    mp = pytest.MonkeyPatch()
    for key, value in stack.client_env().items():
        mp.setenv(key, value)
    mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # prefect read its settings at import: the environment alone is not enough in this process.
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url,
                                         PREFECT_HOME: stack.client_env()["PREFECT_HOME"]}):
            yield stack.client_env()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def served(stack, client_env, tmp_path_factory):
    """`python -m flows.serve` against the server: the deployment whose runs this module triggers."""
    work = tmp_path_factory.mktemp("services")
    env = {**client_env, "SG2_OFFLINE": "1", "SG2_DETECTOR_DIR": str(work / "no-detectors"),
           "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
           "SG2_METRICS_CACHE_DIR": str(work / "metric-cache"),
           # A gone MLflow server fails the flow in seconds instead of minutes of retries.
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    proc_env = {k: v for k, v in os.environ.items() if k not in ("SG2_PARAMS",)}
    proc_env.update(env)
    os.environ.pop("SG2_PARAMS", None)  # inherited by the served process (spawn merges os.environ)
    # Never scheduled in practice (Jan 1st, 00:00): every run here is created by run_deployment.
    stack.spawn("serve", [sys.executable, "-m", "flows.serve", "--name", "services-test", "--cron", "0 0 1 1 *",
                          "--project-dir", str(work)], env=env, cwd=ROOT)
    from prefect.client.orchestration import get_client

    deadline = time.time() + 120
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(DEPLOYMENT)
                break
            except Exception:
                if time.time() > deadline or not stack.alive("serve"):
                    pytest.fail("the deployment never appeared:\n" + _log_tail(stack, "serve"))
                time.sleep(1)
    # Experiments created by the server keep their artifacts on the server (mlflow-artifacts:/): the
    # flow's own setup_experiment would give a new one a local file:// location instead.
    from mlflow import MlflowClient

    MlflowClient(client_env["MLFLOW_TRACKING_URI"]).create_experiment(EXPERIMENT)
    yield work
    stack.stop("serve")


def _log_tail(stack: Stack, name: str, n: int = 60) -> str:
    path = stack.dir / "logs" / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def run_and_wait(parameters: dict, timeout: float = 900):
    from prefect.deployments import run_deployment

    return run_deployment(DEPLOYMENT, parameters=parameters, timeout=timeout, poll_interval=2)


@pytest.fixture(scope="module")
def pipeline_run(stack, served):
    project = make_project(served, "project")
    t0 = time.time()
    flow_run = run_and_wait({"project_dir": str(project)})
    TIMINGS["pipeline via deployment"] = time.time() - t0
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"flow run {flow_run.id}: {flow_run.state}\n{_log_tail(stack, 'serve')}")
    return project, flow_run


def test_prefect_api_reports_the_completed_run(pipeline_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    _, flow_run = pipeline_run
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(flow_run.id)
        assert stored.state_type.value == "COMPLETED" and stored.deployment_id is not None
        assert client.read_deployment(stored.deployment_id).name == "services-test"
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
    names = sorted(t.name for t in tasks)
    assert names == sorted(["demo_data", "prepare", "validate", "train", "evaluate", "generate", "export"])
    assert all(t.state_type.value == "COMPLETED" for t in tasks)


def test_mlflow_server_read_back(stack, client_env, pipeline_run):
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    project, _ = pipeline_run
    uri = client_env["MLFLOW_TRACKING_URI"]
    assert uri.startswith(f"http://{HOST}:")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([exp.experiment_id], "attributes.run_name = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("dataset_md5")
    children = {r.data.tags.get("stage"): r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert {"demo_data", "prepare", "validate", "train", "evaluate", "generate", "export"} <= set(children)
    assert children["validate"].data.metrics["num_images"] == 1797
    train = children["train"]
    assert train.data.params["cfg"] == "tiny" and train.info.run_name == "train demo"
    history = client.get_metric_history(train.info.run_id, "Loss/G/loss")
    assert len(history) >= 2 and all(np.isfinite(m.value) for m in history)
    assert children["export"].data.metrics["parity.passed"] == 1.0

    # Artifacts went through the server (mlflow-artifacts:/) into its --artifacts-destination.
    assert train.info.artifact_uri.startswith("mlflow-artifacts:/")
    files = {a.path for a in client.list_artifacts(train.info.run_id, "images")}
    files |= {a.path for a in client.list_artifacts(train.info.run_id, "snapshots")}
    assert "images/fakes_init.png" in files and any(p.endswith(".safetensors") for p in files)
    on_disk = list(Path(stack.state["mlflow"]["artifacts"]).rglob("fakes_init.png"))
    assert on_disk, "served artifacts must land in the server's artifacts destination"
    local = client.download_artifacts(train.info.run_id, "images/fakes_init.png", str(project / "dl"))
    assert Path(local).read_bytes() == on_disk[0].read_bytes()
    assert not (project / "mlartifacts").exists() and not (project / "mlflow.db").exists()

    # The registered generator: registry in PostgreSQL, model files through the server.
    version = client.get_model_version_by_alias("tiny-digits", "champion")
    assert version.status == "READY"
    mlflow.set_tracking_uri(uri)
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/tiny-digits@champion")
    images = np.asarray(model.predict(pd.DataFrame({"seed": [0], "truncation_psi": [1.0], "class_idx": [3]})))
    assert images.shape == (1, 16, 16, 1) and images.dtype == np.uint8


def test_mlflow_stopped_mid_pipeline(stack, client_env, served, pipeline_run):
    """The stage in progress finishes (DVC records it) and the pipeline goes on without MLflow, saying
    so in its log and summary artifact; with the server back, a rerun skips the finished stages and
    only logs them."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    project = make_project(served, "project-mlflow-down")
    stages = ["demo_data", "prepare", "validate", "train"]
    params = {"project_dir": str(project), "stages": stages, "register_model": False}
    flow_run = run_and_wait(params, timeout=0)
    run_dir = project / TINY["train"]["run_dir"]
    deadline = time.time() + 600
    with get_client(sync_client=True) as client:
        while not run_dir.exists():  # training has started: pull the plug on MLflow
            state = client.read_flow_run(flow_run.id).state
            assert not (state and state.is_final()), f"flow ended before training began: {state}"
            assert time.time() < deadline, "training never started"
            time.sleep(0.5)
        t0 = time.time()
        stack.stop("mlflow")
        while not (state := client.read_flow_run(flow_run.id).state).is_final():
            assert time.time() < deadline, "flow run never finished"
            time.sleep(1)
        TIMINGS["MLflow stop -> flow run final"] = time.time() - t0
    # Training went on to the end: snapshot written, DVC recorded the stage.
    assert sorted(run_dir.glob("network-snapshot-*.safetensors"))
    assert "train:" in (project / "dvc.lock").read_text()
    NOTES["flow with MLflow gone"] = f"{state.name}: {(state.message or '').strip()[:300]}"
    assert state.is_completed(), f"the pipeline must go on without MLflow, got {state}"
    assert "MLflow logging stopped" in _log_tail(stack, "serve", 400)

    # Server back (same port, same database): rerun = DVC skips everything, MLflow gets the logs.
    t0 = time.time()
    stack.start_mlflow()
    again = run_and_wait(params)
    TIMINGS["MLflow restart + rerun (DVC skips)"] = time.time() - t0
    assert again.state.is_completed(), f"{again.state}\n{_log_tail(stack, 'serve')}"
    client = MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(EXPERIMENT)
    trains = client.search_runs([exp.experiment_id], "tags.stage = 'train'", order_by=["start_time DESC"])
    assert trains[0].data.tags["dvc_ran"] == "false", "the rerun must not train again"


def test_wrong_postgres_password_is_one_line(stack, tmp_path):
    """A password PostgreSQL rejects: one line naming the variable, from the preflight and from each server's log."""
    with pytest.raises(StackError) as preflight:
        stack.check_db("mlflow", password="not-the-password")
    assert "MLFLOW_DB_PASSWORD" in str(preflight.value) and "\n" not in str(preflight.value)

    # The compose services' preflight (infra/docker/db_preflight.py) says the same in one line.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": stack.db_url("mlflow", password="not-the-password")}
    proc = subprocess.run([sys.executable, str(ROOT / "infra/docker/db_preflight.py"), "MLFLOW_BACKEND_STORE_URI",
                           "MLFLOW_DB_PASSWORD"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "MLFLOW_DB_PASSWORD" in proc.stderr, proc.stderr
    env["MLFLOW_BACKEND_STORE_URI"] = stack.db_url("mlflow")
    assert subprocess.run([sys.executable, str(ROOT / "infra/docker/db_preflight.py"), "MLFLOW_BACKEND_STORE_URI",
                           "MLFLOW_DB_PASSWORD"], env=env, timeout=60).returncode == 0

    probe = Stack(tmp_path / "probe", ui=False)  # same PostgreSQL, its own processes and state file
    probe.state.update(pg=dict(stack.state["pg"]), db={k: dict(v) for k, v in stack.state["db"].items()})
    try:
        for service, start in (("mlflow", probe.start_mlflow), ("prefect", probe.start_prefect)):
            t0 = time.time()
            with pytest.raises(StackError) as server:
                start(password="not-the-password", preflight=False)  # what the server itself reports
            TIMINGS[f"wrong password detected ({service})"] = time.time() - t0
            msg = str(server.value)
            NOTES[f"wrong password ({service})"] = msg
            assert f"{service.upper()}_DB_PASSWORD" in msg and "\n" not in msg, msg
            assert not probe.alive(service)
    finally:
        for name in list(probe.state["procs"]):
            probe.stop(name)


def test_nothing_contacts_anything_but_localhost(stack, pipeline_run):
    """Every connect() of every process the stack started (strace -f), loopback or unix sockets only."""
    traces = sorted((stack.dir / "strace").glob("*.log")) if (stack.dir / "strace").exists() else []
    if not traces:
        pytest.skip("no connect() traces: run with SG2_SERVICES_STRACE=1 and strace installed")
    bad = []
    for trace in traces:
        for line in trace.read_text(errors="replace").splitlines():
            if "connect(" not in line:
                continue
            v4 = re.search(r'inet_addr\("([\d.]+)"\)', line)
            v6 = re.search(r'inet_pton\(AF_INET6, "([^"]+)"', line)
            if (v4 and not v4.group(1).startswith("127.")) or (v6 and v6.group(1) not in ("::1", "::ffff:127.0.0.1")):
                bad.append(f"{trace.name}: {line.strip()}")
    assert not bad, "connections beyond 127.0.0.1:\n" + "\n".join(bad[:20])
    calls = sum(t.read_text(errors="replace").count("connect(") for t in traces)
    NOTES["connect() calls traced"] = f"{calls} in {len(traces)} process trees, all loopback/unix"
    assert calls > 0
