"""The pipeline as a Prefect flow: one task per DVC stage, MLflow runs around them.

Each task runs `dvc repro --single-item <stage>`, so DVC alone decides what is stale (no second cache
on top) and the commands are exactly those of `dvc repro`. Transient failures are retried; a training
stage that is retried resumes from its last checkpoint (`train.resume: auto`). After each stage the
flow logs the stage's outputs into a nested MLflow run and publishes a summary as a Prefect artifact.

    python -m flows.pipeline                       # run once (local Prefect state, no server needed)
    python -m flows.pipeline --stages prepare,validate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Prefect's in-process server gets 20 s to start by default; its first start on a fresh machine
# (database migrations) takes longer than that on a small CPU box. Set before Prefect reads settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.tracking import PipelineTracker, pipeline_tags
from stages.common.config import load_params

STAGES = ("demo_data", "prepare", "validate", "train", "evaluate", "generate", "export")


class StageFailed(RuntimeError):
    """`dvc repro` of a stage exited non-zero; the message carries the tail of its output."""


def _dvc() -> list[str]:
    # The venv's dvc when running from it; the stage commands then find the venv's python first too.
    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.exists() else ["dvc"]


@task(retries=2, retry_delay_seconds=10)
def repro_stage(stage: str, project_dir: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage if DVC finds it stale, else does nothing."""
    logger = get_run_logger()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONUNBUFFERED="1", **(extra_env or {}))
    start = time.time()
    lines: list[str] = []
    # Streamed line by line: training runs for minutes to days and its status lines are the progress.
    with subprocess.Popen([*_dvc(), "repro", "--single-item", stage], cwd=project_dir, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise StageFailed(f"dvc repro {stage} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
    out = "\n".join(lines)
    skipped = "didn't change, skipping" in out or "is cached - skipping" in out
    return {"stage": stage, "seconds": round(time.time() - start, 1), "ran": not skipped}


@task
def register_model(project_dir: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Register the exported generator in the MLflow model registry under an alias (nested run)."""
    from stages.export.registry import register_generator

    export = params.get("export", {})
    out = Path(project_dir) / export.get("outdir", "exports")
    onnx = out / "generator_uint8.onnx"
    if not onnx.exists():
        return None
    summary = json.loads((out / "export_summary.json").read_text()) if (out / "export_summary.json").exists() else {}
    c_dim = int(summary.get("generator", {}).get("c_dim", 0))
    return register_generator(onnx, export.get("registered_model", "stylegan2-generator"),
                              alias=export.get("alias", "champion"), c_dim=c_dim)


@flow(name="stylegan2-ada-pipeline", log_prints=True)
def pipeline(project_dir: str = ".", stages: list[str] | None = None, register: bool = True,
             experiment: str = "stylegan2-ada-pipeline") -> dict[str, Any]:
    """Run the stages in order; one parent MLflow run, one nested run per stage."""
    import mlflow

    root = Path(project_dir).resolve()
    chosen = list(stages or STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    params = load_params(root / "params.yaml")
    tracker = PipelineTracker(root, experiment, get_run_logger())
    tracker.start()
    results: list[dict[str, Any]] = []
    registered = None
    status = "FAILED"
    try:
        for stage in [s for s in STAGES if s in chosen]:
            result = repro_stage(stage, str(root), tracker.child_env())
            tracker.log_stage(stage, result, params)
            results.append(result)
        # dvc.lock is final only now: the dataset hash tag reads it.
        tracker.call("tag pipeline run", mlflow.set_tags, pipeline_tags(root, params))
        if register and "export" in chosen and tracker.error is None:
            registered = tracker.call("register model", register_model, str(root), params)
            if registered:
                tracker.call("tag registered model", mlflow.set_tag, "registered_model", registered["uri"])
        status = "FINISHED"
    finally:
        tracker.finish(status)
    rows = "\n".join(f"| {r['stage']} | {'ran' if r['ran'] else 'up to date'} | {r['seconds']} |" for r in results)
    tracking = (f"MLflow run `{tracker.run_id}`" if tracker.error is None else
                f"**MLflow logging failed** ({tracker.error}); outputs are on disk, rerun the flow to log them")
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=f"## Pipeline\n\n{tracking}\n\n| stage | status | seconds |\n|---|---|---|\n{rows}\n",
        description="stages run by this flow execution",
    )
    return {"mlflow_run_id": tracker.run_id, "tracking_error": tracker.error, "stages": results,
            "registered": registered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, run in pipeline order")
    parser.add_argument("--no-register", action="store_true", help="skip the MLflow model registration")
    args = parser.parse_args(argv)
    try:
        out = pipeline(args.project_dir, [s for s in args.stages.split(",") if s], register=not args.no_register)
    except (StageFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
