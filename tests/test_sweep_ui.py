"""`make ui` in a real browser: `python -m flows.ui` opens MLflow's UI on the runs table of the project's
experiment (a model-training experiment, not the GenAI overview), with the pipeline runs and sweep points as
rows and their params and quality metric as columns, and a chart view comparing them.

The store is written by the flows' own tracking code (pipeline runs with their stage runs nested, a sweep
with two points), without training. Headless Chromium (Debian's `chromium`) is driven by Playwright through
its executable path (infra/install/browser.sh installs both); without them the module is skipped with that
reason (it fails instead under SG2_REQUIRE_BROWSER=1). Screenshots: `mlflow_runs.png` and
`mlflow_chart.png` in $SG2_SCREENSHOT_DIR (docs/img for the docs), else a temp dir.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, MISSING, needs_browser, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
# ~1 min (a real MLflow UI server and a browser): `make test-all` and `make test-services` run it.
pytestmark = [needs_browser, pytest.mark.slow]
pytest.importorskip("mlflow")
pytest.importorskip("prefect")

METRIC = "fd_effnet1k_full"
PARAMS = {"train": {"cfg": "tiny", "kimg": 12, "gamma": None, "aug": "ada", "batch": None, "seed": 0},
          "evaluate": {"metrics": [METRIC]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Two pipeline runs (stage runs nested) and a two-point sweep, logged by flows.tracking / flows.sweep_*."""
    import mlflow

    from flows.sweep_record import SweepRecord
    from flows.sweep_tracking import SweepTracker
    from flows.tracking import PipelineTracker, comparison_params

    project = tmp_path_factory.mktemp("ui-project")
    log = logging.getLogger("test")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    try:
        for kimg, quality in ((12, 52.3), (24, 41.8)):
            tracker = PipelineTracker(project, log)
            tracker.start()
            params = {**PARAMS, "train": {**PARAMS["train"], "kimg": kimg}}
            for stage in ("prepare", "train", "evaluate"):
                with mlflow.start_run(run_name=stage, nested=True, tags={"stage": stage}):
                    mlflow.log_metric("seconds", 1.0)
            mlflow.log_params(comparison_params(params))
            (project / "metrics.json").write_text(json.dumps({METRIC: quality}))
            tracker.log_quality(project / "metrics.json")
            tracker.finish("FINISHED")
        grid = {"train.gamma": ["0.1", "10"]}
        points = [{"train.gamma": "0.1"}, {"train.gamma": "10"}]
        record = SweepRecord.open(project / "reports" / "sweeps" / "sweep-ui", "sweep-ui", grid, points, METRIC,
                                  "evaluate", None)
        sweep = SweepTracker(project, record, log)
        sweep.parent("sweep-ui train.gamma", {"grid": json.dumps(grid), "metric": METRIC})
        for point, quality in zip(record.points, (47.5, 39.9)):
            sweep.point_run(point)
            record.update(point, state="done", quality={METRIC: quality})
            assert sweep.log_point(point, comparison_params(PARAMS, point["values"]), [])
        assert sweep.mark_best(record.points[1]["run_id"])
        sweep.end("FINISHED")
    finally:
        mp.undo()
    return project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui_url(store):
    """`python -m flows.ui --no-browser` (what `make ui` runs), its address read from its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT") and k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.ui", "--no-browser", "--port", str(free_port()),
                             "--project-dir", str(store)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.time() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("MLflow UI: "):
                yield line.split(": ", 1)[1].strip()
                break
            assert time.time() < deadline, "".join(lines)
        else:
            pytest.fail("flows.ui exited without an address:\n" + "".join(lines))
    finally:
        proc.send_signal(signal.SIGTERM)  # flows.ui stops its `mlflow ui` (by its process id) and exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SG2_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_experiment_is_model_training(store):
    from mlflow import MlflowClient

    from flows.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_ui_opens_on_the_runs_table_with_params_and_metric(ui_url, shots):
    if MISSING is not None:
        pytest.fail(f"SG2_REQUIRE_BROWSER=1 but {MISSING}")
    assert "/runs?" in ui_url and "workflowType=machine_learning" in ui_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--disable-gpu", "--disable-dev-shm-usage", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 560})
        page.goto(ui_url)
        page.get_by_text("gamma=10", exact=True).first.wait_for(timeout=120_000)
        header = page.locator(".ag-header").inner_text().split("\n")
        assert {METRIC, "train.gamma", "train.kimg", "best"} <= set(header), header
        # One row per pipeline run and sweep point (no stage runs, no collapsed sweep), best quality first.
        names = [n.strip() for n in page.locator(".ag-pinned-left-cols-container .ag-row, "
                                                 ".ag-center-cols-container .ag-row").all_inner_texts()]
        body = page.inner_text("body")
        order = [body.find(name) for name in ("gamma=10", "39.9", "41.8", "47.5", "52.3")]
        assert all(i >= 0 for i in order) and order[1:] == sorted(order[1:]), (order, names)
        assert "prepare" not in body and "sweep-ui" not in body, "stage runs and the sweep run are not rows"
        assert "4 matching runs" in body
        for label in ("Close", "Hide banner"):  # the assistant's panel (opens once per browser), the view's banner
            button = page.get_by_role("button", name=label, exact=True)
            if button.count():
                button.first.click()
        time.sleep(1)
        page.screenshot(path=str(shots / "mlflow_runs.png"))
        # The chart view of the same runs.
        page.goto(ui_url + "&compareRunsMode=CHART")
        page.get_by_text("Model metrics", exact=False).first.wait_for(timeout=60_000)
        time.sleep(3)  # the bars draw after their data arrives
        page.screenshot(path=str(shots / "mlflow_chart.png"))
        browser.close()
