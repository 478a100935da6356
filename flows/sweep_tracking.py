"""MLflow for a sweep, made to be run again: every run is found by its tags before one is created.

One sweep run (tags `stage=sweep`, `sweep=<id>`) holds one child run per point (`stage=sweep-point`,
`sweep_point=<id>:<index>`), under which the point's stages log themselves. A second execution of the
same sweep (after a crash or `kill -9`) finds these runs instead of duplicating them, marks the stage runs
that the killed execution left RUNNING as KILLED, and logs what the first one could not.

MLflow never stops a sweep: before each point the tracking server is asked whether it answers (one short
request); when it does not, the point runs untracked, its record says `logged: false`, and the sweep's
summary names what MLflow is missing. The next execution that finds the server logs those points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flows.sweep_record import SweepRecord
from flows.tracking import COMPARE_TAG, project_tracking_uri, setup_experiment
from stages.common.tracking import PARENT_RUN_ENV, RUN_NAME_ENV, SWITCH_ENV, finite_metrics, unreachable_reason

SWEEP_TAG, POINT_TAG, STAGE_TAG, BEST_TAG = "sweep", "sweep_point", "stage", "best"
PARENT_TAG = "mlflow.parentRunId"


def short_error(what: str, exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"{what}: {type(exc).__name__}: {text}"


class SweepTracker:
    """The sweep's MLflow runs, found or created by tag; every call guarded (a failure is recorded, not raised)."""

    def __init__(self, project: Path, record: SweepRecord, logger: Any) -> None:
        self.project, self.record, self.logger = project, record, logger
        self.uri = project_tracking_uri(project)
        self.client: Any = None
        self.experiment_id: str | None = None
        self.error: str | None = None
        # Fail in seconds, not minutes, when the server is gone (MLflow's defaults retry with backoff).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    # --------------------------------------------------------------------------------------- guard
    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:  # any MLflow/transport failure: the sweep goes on, the record says what is missing
            self.error = short_error(what, exc)
            self.logger.warning("MLflow: %s; the sweep goes on and logs this on its next run", self.error)
            return False, None

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)` guarded: its result, or None when MLflow failed (recorded in `error`)."""
        return self._guard(what, fn, *args, **kwargs)[1]

    def online(self) -> bool:
        """Whether the tracking store answers now (asked again before every point: a server that comes back
        mid-sweep is used again)."""
        reason = unreachable_reason(self.uri)
        if reason is not None:
            if self.error is None or not self.error.startswith("unreachable"):
                self.logger.warning("MLflow server %s: the sweep goes on without it", reason)
            self.error = f"unreachable: {reason}"
            return False
        if self.client is None:
            import mlflow

            ok, experiment_id = self._guard("set up the experiment", setup_experiment, self.project)
            if not ok:
                return False
            self.experiment_id, self.client = experiment_id, mlflow.MlflowClient()
        return True

    # --------------------------------------------------------------------------------------- runs by tag
    def _find(self, tags: dict[str, str], extra: str = "") -> list[Any]:
        where = " and ".join([*(f"tags.{k} = '{v}'" for k, v in tags.items()), *([extra] if extra else [])])
        return self.client.search_runs([self.experiment_id], where, order_by=["attributes.start_time ASC"],
                                       max_results=50)

    def _find_or_create(self, key_tags: dict[str, str], run_name: str, tags: dict[str, str]) -> str:
        found = self._find(key_tags)
        if found:
            return found[0].info.run_id
        # The key tags go in with the create call itself: a run is never there without them.
        return self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, **key_tags}).info.run_id

    def parent(self, run_name: str, params: dict[str, str]) -> str | None:
        """The sweep's run (found, else created), RUNNING; None while MLflow is away."""
        if not self.online():
            return None

        def _parent() -> str:
            run_id = self._find_or_create({SWEEP_TAG: self.record.sweep_id, STAGE_TAG: "sweep"}, run_name, {})
            run = self.client.get_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            missing = {k: v for k, v in params.items() if k not in run.data.params}
            if missing:
                from mlflow.entities import Param

                self.client.log_batch(run_id, params=[Param(k, v) for k, v in missing.items()])
            return run_id

        ok, run_id = self._guard("open the sweep run", _parent)
        if ok:
            self.record.set(mlflow={"parent_run_id": run_id, "experiment_id": self.experiment_id,
                                    "tracking_uri": self.uri})
        return run_id

    @property
    def parent_id(self) -> str | None:
        return self.record.data["mlflow"].get("parent_run_id")

    def point_run(self, point: dict[str, Any]) -> str | None:
        """The point's run under the sweep run (found by its `sweep_point` tag, else created), RUNNING."""
        if self.parent_id is None or not self.online():
            return None

        def _point() -> str:
            run_id = self._find_or_create(
                {POINT_TAG: f"{self.record.sweep_id}:{point['index']}"}, point["name"],
                {PARENT_TAG: self.parent_id, STAGE_TAG: "sweep-point", SWEEP_TAG: self.record.sweep_id,
                 "dvc_experiment": point["experiment"], COMPARE_TAG: "true"})
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id

        ok, run_id = self._guard(f"open the run of point {point['name']}", _point)
        if ok:
            self.record.update(point, run_id=run_id)
        return run_id

    def child_env(self, point_run_id: str | None, name: str) -> dict[str, str]:
        """The environment that nests the point's stage runs under its run (nothing when untracked)."""
        if point_run_id is None:
            return {}
        return {SWITCH_ENV: "1", PARENT_RUN_ENV: point_run_id, RUN_NAME_ENV: name, "MLFLOW_TRACKING_URI": self.uri,
                "MLFLOW_EXPERIMENT_ID": str(self.experiment_id)}

    def close_orphans(self) -> int:
        """Runs a killed execution left RUNNING under the sweep or its points (a stage, a registration) ->
        KILLED. The point runs themselves stay: this execution finishes them."""
        if self.parent_id is None or not self.online():
            return 0
        point_runs = {p["run_id"] for p in self.record if p.get("run_id")}

        def _close() -> int:
            closed = 0
            for parent in [self.parent_id, *point_runs]:
                for run in self._find({}, f"tags.{PARENT_TAG} = '{parent}' and attributes.status = 'RUNNING'"):
                    if run.info.run_id not in point_runs:
                        self.client.set_terminated(run.info.run_id, "KILLED")
                        closed += 1
            return closed

        ok, closed = self._guard("close the runs of the killed execution", _close)
        if ok and closed:
            self.logger.info("MLflow: %d run(s) left RUNNING by an interrupted execution marked KILLED", closed)
        return closed or 0

    # --------------------------------------------------------------------------------------- logging
    def log_point(self, point: dict[str, Any], params: dict[str, str], files: list[Path]) -> bool:
        """Params, quality, files of a finished point into its run, then FINISHED; True when all went in."""
        run_id = point.get("run_id") or self.point_run(point)
        if run_id is None:
            return False
        from mlflow.entities import Metric, Param

        def _log() -> None:
            run = self.client.get_run(run_id)
            new = [Param(k, v) for k, v in params.items() if k not in run.data.params]
            for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=new[i:i + 100])
            quality = finite_metrics(point.get("quality") or {})
            if quality:
                import time

                now = int(time.time() * 1000)
                self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in quality.items()])
            for path in files:
                if path.is_file():
                    self.client.log_artifact(run_id, str(path), artifact_path="sweep")
            self.client.set_terminated(run_id, "FINISHED")

        ok, _ = self._guard(f"log point {point['name']}", _log)
        return ok

    def end_point(self, point: dict[str, Any], status: str) -> None:
        if point.get("run_id") and self.client is not None:
            self._guard(f"end the run of point {point['name']}", self.client.set_terminated, point["run_id"], status)

    def mark_best(self, best_run_id: str | None) -> bool:
        """`best=true` on the best point's run only (a tag a previous execution put elsewhere is removed)."""
        if self.parent_id is None or not self.online():
            return False

        def _mark() -> None:
            for p in self.record:
                run_id = p.get("run_id")
                if not run_id:
                    continue
                tags = self.client.get_run(run_id).data.tags
                if run_id == best_run_id and tags.get(BEST_TAG) != "true":
                    self.client.set_tag(run_id, BEST_TAG, "true")
                elif run_id != best_run_id and BEST_TAG in tags:
                    self.client.delete_tag(run_id, BEST_TAG)

        return self._guard("tag the best point", _mark)[0]

    def log_summary(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> bool:
        if self.parent_id is None or not self.online():
            return False

        def _log() -> None:
            for key, value in finite_metrics(metrics).items():
                self.client.log_metric(self.parent_id, key, value)
            for key, value in tags.items():
                self.client.set_tag(self.parent_id, key, value)
            for path in files:
                if path.is_file():
                    self.client.log_artifact(self.parent_id, str(path))

        return self._guard("log the sweep summary", _log)[0]

    def end(self, status: str) -> None:
        if self.parent_id is not None and self.client is not None:
            self._guard("end the sweep run", self.client.set_terminated, self.parent_id, status)

    # --------------------------------------------------------------------------------------- registry
    def registered_version(self, model_name: str) -> Any:
        """The model version a registration under this sweep's run created (a killed execution may have
        created it without finishing the tags and aliases), or None."""
        def _find() -> Any:
            for run in self._find({}, f"tags.{PARENT_TAG} = '{self.parent_id}'"):
                if not run.info.run_name.startswith("register-"):
                    continue
                found = self.client.search_model_versions(f"name = '{model_name}' and run_id = '{run.info.run_id}'")
                if found:
                    return found[0]
            return None

        ok, version = self._guard("look up the registered version", _find)
        return version if ok else None
