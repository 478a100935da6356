"""MLflow for the pipeline flow: one parent run per execution, the stages' runs nested under it.

The stages that track themselves (today train, evaluate, generate, export) do so while they work, under
the parent run: the flow hands every stage SG2_MLFLOW=1, the parent run id, the tracking URI and the
experiment (`child_env`), so their runs carry resolved options as params, real durations and the same metric
keys as a stand-alone or `dvc exp run`. For a stage that left no run of its own under the parent (it does
not track itself, DVC found it up to date or restored it from its run cache), the flow records a nested run
afterwards, with the stage's real start and end times, its resolved config, its reports and counts. The
parent run gets the training params and the quality numbers of `metrics.json` and the `comparison` tag, so
pipeline runs compare on one row each (`make ui`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from stages.common.config import build_config, flatten, params_section
from stages.common.tracking import (
    PARENT_RUN_ENV,
    SWITCH_ENV,
    experiment_name,
    finite_metrics,
    git_commit,
    named_run,
    use_experiment,
)

# MLflow 3's UI opens an experiment by its kind: a model-training experiment shows the runs table and
# charts, a GenAI one an overview of traces. (The 3.17 UI also follows its global GenAI / machine
# learning switch, `?workflowType=machine_learning` in the URL: see `runs_table_url`.)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
COMPARED_SECTIONS = ("train",)  # params shown as columns on pipeline runs and sweep points
# The rows that compare models (pipeline runs, sweep points) carry this tag; `make ui` filters on it (MLflow's
# search has no OR / IN over tag values).
COMPARE_TAG = "comparison"
COMPARE_FILTER = f"tags.{COMPARE_TAG} = 'true'"


def project_tracking_uri(project_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else the server-less default `sqlite:///<project>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(project_dir / 'mlflow.db').resolve()}"


def setup_experiment(project_dir: Path, name: str | None = None) -> str:
    """Point MLflow at the project's store; artifacts of a new experiment go to `<project>/mlartifacts`."""
    import mlflow

    mlflow.set_tracking_uri(project_tracking_uri(project_dir))
    experiment_id = use_experiment(name or experiment_name(), project_dir / "mlartifacts")
    mark_model_training(experiment_id)
    return experiment_id


def mark_model_training(experiment_id: str) -> None:
    """Tag the experiment as model training (not GenAI), once."""
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def runs_table_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment, in the machine-learning view (not the GenAI overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def comparison_params(params: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The params runs are compared by, as `section.key` (e.g. `train.gamma`): the sections of
    COMPARED_SECTIONS with `overrides` (a sweep point's values, same keys) on top; MLflow's 500-char cap."""
    flat = {f"{section}.{k}": v for section in COMPARED_SECTIONS
            for k, v in flatten(params_section(params, section)).items()}
    flat.update(overrides or {})
    return {k: str(v)[:500] for k, v in flat.items()}


def dataset_hash(project_dir: Path, params: dict[str, Any]) -> str | None:
    """The md5 DVC recorded in dvc.lock for the prepare stage's dataset output."""
    lock = project_dir / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    dest = params.get("prepare", {}).get("dest")
    for out in stages.get("prepare", {}).get("outs", []):
        if out.get("path") == dest:
            return out.get("md5")
    return None


def pipeline_tags(project_dir: Path, params: dict[str, Any]) -> dict[str, str]:
    tags = {"git_commit": git_commit(project_dir), "dataset_md5": dataset_hash(project_dir, params),
            "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]}
    return {k: v for k, v in tags.items() if v}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolved_config(stage: str, params: dict[str, Any], project_dir: Path) -> dict[str, Any]:
    """The stage's options as it ran them: for each params section it reads (dvc.yaml), its config dataclass
    built from params.yaml (defaults filled in); the raw section where no dataclass takes it whole."""
    from flows.project import section_config, stage_sections
    from stages.common.config import ConfigError

    out: dict[str, Any] = {}
    for section in stage_sections(project_dir, stage):
        values = params_section(params, section)
        cls = section_config(project_dir, section)
        try:
            out.update(flatten(build_config(cls, values)) if cls is not None else flatten(values))
        except ConfigError:  # e.g. generate: shared values plus one sub-section per command
            out.update(flatten(values))
    return out


def stage_outputs(stage: str, project_dir: Path, params: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    """(metrics, files) a stage that does not track itself left on disk."""
    p = project_dir
    if stage == "prepare":
        report = p / f"{params['prepare']['dest']}.report.json"
        data = _read_json(report)
        keys = ("num_written", "num_skipped", "num_fixed", "resolution", "channels", "images_per_second")
        return finite_metrics({k: data[k] for k in keys if k in data}), [report]
    if stage == "validate":
        out = p / params["validate"].get("out", "reports/validation.json")
        return finite_metrics(flatten(_read_json(out))), [out]
    return {}, []


class PipelineTracker:
    """The flow's MLflow runs, kept from ever stopping the pipeline.

    The stages' outputs live on disk and in DVC; MLflow is a view of them. When the tracking server goes
    away mid-pipeline, the first failing call is recorded (`self.error`), later calls are skipped, and the
    pipeline goes on; rerunning the flow once the server is back logs what it finds (DVC skips the stages
    that already ran).
    """

    def __init__(self, project_dir: Path, logger: Any, run_name: str = "pipeline") -> None:
        self.project_dir, self.logger, self.run_name = project_dir, logger, run_name
        self.error: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # any MLflow/transport failure: record it, keep the pipeline going
            self.error = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            self.logger.warning("MLflow logging stopped (%s); stage outputs stay on disk — rerun the flow "
                                "once the tracking server is back to log them", self.error)
            return None

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._guard(what, fn, *args, **kwargs)

    def start(self) -> None:
        import mlflow

        # Fail in seconds, not minutes, when the server is gone (MLflow's defaults retry with backoff).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

        def _start() -> str:
            self.experiment_id = setup_experiment(self.project_dir)
            return mlflow.start_run(experiment_id=self.experiment_id, run_name=named_run(self.run_name),
                                    tags={"stage": "pipeline", COMPARE_TAG: "true"}).info.run_id

        self.run_id = self._guard("start pipeline run", _start)

    def child_env(self) -> dict[str, str]:
        """Environment for stage subprocesses: the stages that track themselves do, nested under this run."""
        import mlflow

        if self.run_id is None or self.error is not None:
            return {}
        env = {SWITCH_ENV: "1", PARENT_RUN_ENV: self.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        if self.experiment_id is not None:
            env["MLFLOW_EXPERIMENT_ID"] = self.experiment_id
        return env

    def log_stage(self, stage: str, result: dict[str, Any], params: dict[str, Any]) -> None:
        """A nested run for a stage that did not track itself (DVC skipped it or restored it from its run
        cache, or the stage does not track itself), with its real times."""
        import mlflow

        if (result["ran"] and self.run_id is not None and self.error is None
                and self._guard(f"find the {stage} run", find_stage_run, self.run_id, stage)):
            return  # it tracked itself under this pipeline run
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        def _log() -> None:
            client = mlflow.MlflowClient()
            run = client.create_run(self.experiment_id, start_time=int(result["started"] * 1000), run_name=stage,
                                    tags={MLFLOW_PARENT_RUN_ID: self.run_id, "stage": stage,
                                          "dvc_ran": str(result["ran"]).lower()})
            run_id = run.info.run_id
            for key, value in list(resolved_config(stage, params, self.project_dir).items())[:100]:
                client.log_param(run_id, key, str(value)[:500])
            if result["ran"]:
                metrics, files = stage_outputs(stage, self.project_dir, params)
                for key, value in metrics.items():
                    client.log_metric(run_id, key, value)
                for path in files:
                    if path.is_file():
                        client.log_artifact(run_id, str(path), artifact_path=stage)
            client.set_terminated(run_id, "FINISHED", end_time=int(result["ended"] * 1000))

        self._guard(f"log stage {stage}", _log)

    def log_quality(self, metrics_file: Path) -> dict[str, float]:
        """The evaluate stage's results as the parent run's metrics: one comparable row per pipeline run."""
        import mlflow

        results = finite_metrics(_read_json(metrics_file))
        if results:
            self._guard("log quality", mlflow.log_metrics, results)
        return results

    def finish(self, status: str) -> None:
        import mlflow

        if self.run_id is not None and mlflow.active_run() is not None:
            # end_run pops the run before telling the server, so even when the server is gone the next flow
            # in this process does not nest under a dead run.
            try:
                mlflow.end_run(status=status)
            except Exception as exc:
                self.logger.warning("could not close the MLflow run %s: %s", self.run_id, exc)


def find_stage_run(parent_run_id: str, stage: str) -> str | None:
    """The id of the run a self-tracking stage made under `parent_run_id` (the newest), or None."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.stage = '{stage}'",
                              search_all_experiments=True, order_by=["start_time DESC"], output_format="list")
    return runs[0].info.run_id if runs else None
