"""The MLflow UI, opened on the comparison: the runs table of the project's experiment, one row per pipeline
run and per sweep point, their params and quality metric as columns.

    python -m flows.ui                              # = `make ui`: serves http://127.0.0.1:5000, opens the runs table
    python -m flows.ui --port 5001 --no-browser     # print the address only

The project's store is `sqlite:///mlflow.db` (artifacts in `mlartifacts/`), or $MLFLOW_TRACKING_URI: for a
tracking server this serves nothing and only prints (and opens) the runs table's address on that server.
The experiment is created if needed and tagged as model training, so MLflow 3's UI shows its runs rather
than the GenAI overview; the address selects the UI's machine-learning view and a shared view (saved as an
experiment tag each time) that lists the rows that compare models (`tags.comparison = 'true'`: pipeline
runs and sweep points, best quality first), with the params that differ between them, the quality metrics
and the sweeps' `best` tag as columns. The Chart button beside the table compares them as bar charts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import webbrowser
from pathlib import Path
from typing import Any

from flows.cli import flow_parser
from flows.tracking import COMPARE_FILTER, project_tracking_uri, runs_table_url, setup_experiment
from stages.common.cli import run_stage
from stages.common.errors import EnvironmentFault
from stages.common.tracking import is_remote

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow UI's shared views: experiment tags by this prefix
VIEW_KEY = "sg2-comparison"


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise EnvironmentFault(f"`mlflow ui` exited ({proc.returncode}) before {url} answered; is the port taken?")
        with contextlib.suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(url + "/health", timeout=2) as resp:  # always our own 127.0.0.1 server
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise EnvironmentFault(f"`mlflow ui` did not answer on {url} within {timeout:.0f} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def quality_metric(project: Path, runs: list[Any]) -> tuple[str | None, bool]:
    """(the metric the project ranks generators by, lower is better): `export.quality_metric`, else the first
    metric of `evaluate.metrics` the runs carry."""
    from stages.common.config import load_params, params_section
    from stages.metrics.registry import UnknownMetricError, lower_is_better

    try:
        params = load_params(project / "params.yaml")
    except Exception:  # no params.yaml (a store opened elsewhere): rank by what the runs carry
        params = {}
    carried = {k for run in runs for k in run.data.metrics}
    candidates = [params_section(params, "export").get("quality_metric"),
                  *(params_section(params, "evaluate").get("metrics") or []), *sorted(carried)]
    metric = next((m for m in candidates if m and m in carried), None)
    try:
        return metric, lower_is_better(metric) if metric else True
    except UnknownMetricError:
        return metric, True


def comparison_columns(runs: list[Any], max_params: int = 8) -> list[str]:
    """The runs table's columns: the params that differ between the compared runs (else the preset and the
    training length), every quality metric they carry, and the sweeps' `best` tag."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.data.params.items():
            values.setdefault(key, set()).add(value)
    varying = sorted(k for k, v in values.items() if len(v) > 1 or sum(k in r.data.params for r in runs) < len(runs))
    params = varying[:max_params] or [k for k in ("train.cfg", "train.kimg") if k in values]
    metrics = sorted({k for run in runs for k in run.data.metrics})
    return [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics] + ["tags.`best`"]


def save_comparison_view(project: Path, experiment_id: str) -> str:
    """Store the comparison as one of MLflow's shared views (an experiment tag the UI reads when the address
    names it): the rows that compare models, their params and metrics as columns, best quality first.
    Sorted by a metric, the table lists the sweep points as rows of their own (sorted by date, MLflow nests
    them, collapsed, under their sweep). Returns the view's key."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs([experiment_id], COMPARE_FILTER, max_results=1000)
    metric, lower = quality_metric(project, runs)
    order = {"orderByKey": f"metrics.`{metric}`", "orderByAsc": lower} if metric else \
        {"orderByKey": "attributes.start_time", "orderByAsc": False}
    state = {"searchFilter": COMPARE_FILTER, **order, "startTime": "ALL", "lifecycleFilter": "Active",
             "selectedColumns": comparison_columns(runs)}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps(state))
    return VIEW_KEY


def comparison_url(project: Path, base_url: str, experiment_id: str) -> str:
    """The runs table in the comparison view (the view's own search settings apply only when the address
    carries none of its own, so the filter lives in the view)."""
    key = save_comparison_view(project, experiment_id)
    return runs_table_url(base_url, experiment_id) + "&viewStateShareKey=" + urllib.parse.quote(key)


def main(argv: list[str] | None = None) -> int:
    parser = flow_parser("python -m flows.ui", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1 = this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port to serve on")
    parser.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")

    def body(args: Any) -> int:
        project = Path(args.project_dir).resolve()
        uri = project_tracking_uri(project)
        experiment_id = setup_experiment(project)
        if is_remote(uri):
            url = comparison_url(project, uri, experiment_id)
            print(f"MLflow UI (tracking server): {url}", flush=True)
            if not args.no_browser:
                webbrowser.open(url)
            return 0
        base = f"http://{args.host}:{args.port}"
        cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port)]
        signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops the server below too
        # Its own session: stopping it stops its workers too (by this process id, nothing else).
        proc = subprocess.Popen(cmd, cwd=project, start_new_session=True,
                                env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
        try:
            wait_healthy(base, proc)
            url = comparison_url(project, base, experiment_id)
            print(f"MLflow UI: {url}", flush=True)
            if not args.no_browser:
                webbrowser.open(url)
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    return run_stage(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
