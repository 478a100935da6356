"""The pipeline as a Prefect flow: one task per DVC stage, one MLflow parent run around them.

Each task runs `dvc repro --single-item <stage>`, so DVC alone decides what is stale (no second cache on
top) and the commands are exactly those of `dvc repro`. Transient failures are retried; a training stage
that is retried resumes from its last checkpoint (`train.resume: auto`). Stages log themselves to MLflow
under the pipeline's run (see `flows.tracking`). The exported generator is registered only when the export
stage ran (something was retrained), as `@challenger`, and becomes `@champion` only when its quality
metric beats the current champion's.

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

from flows.tracking import PipelineTracker, find_stage_run, pipeline_tags
from stages.common.config import build_config, load_params, params_section

STAGES = ("demo_data", "prepare", "validate", "train", "evaluate", "generate", "export")


class StageFailed(RuntimeError):
    """`dvc repro` of a stage exited non-zero; the message carries the tail of its output."""


def dvc_command() -> list[str]:
    # The venv's dvc when running from it; the stage commands then find the venv's python first too.
    local = Path(sys.executable).with_name("dvc")
    return [str(local)] if local.exists() else ["dvc"]


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONUNBUFFERED="1", **(extra or {}))


@task(retries=2, retry_delay_seconds=10, task_run_name="{stage}")
def repro_stage(stage: str, project_dir: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage if DVC finds it stale, else does nothing."""
    logger = get_run_logger()
    started = time.time()
    lines: list[str] = []
    # Streamed line by line: training runs for minutes to days and its status lines are the progress.
    with subprocess.Popen([*dvc_command(), "repro", "--single-item", stage], cwd=project_dir, env=stage_env(extra_env),
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1) as proc:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                lines.append(line)
                logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise StageFailed(f"dvc repro {stage} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
    out = "\n".join(lines)
    skipped = "didn't change, skipping" in out or "is cached - skipping" in out
    ended = time.time()
    return {"stage": stage, "seconds": round(ended - started, 1), "ran": not skipped, "started": started,
            "ended": ended}


def register_exported(project_dir: Path, params: dict[str, Any], pipeline_run_id: str | None) -> dict[str, Any] | None:
    """Register the export stage's serving graph, linked to this pipeline's training run; the champion rule
    is `stages.export.registry.promote`."""
    from stages.export.config import ExportConfig
    from stages.export.exporter import quality_of
    from stages.export.registry import register_generator

    cfg = build_config(ExportConfig, params_section(params, "export"))
    out = project_dir / cfg.outdir
    onnx = out / "generator_uint8.onnx"
    if not onnx.exists():
        return None
    summary = json.loads((out / "export_summary.json").read_text()) if (out / "export_summary.json").exists() else {}
    c_dim = int(summary.get("generator", {}).get("c_dim", 0))
    cfg_here = build_config(ExportConfig, {**params_section(params, "export"),
                                           "metrics_file": str(project_dir / cfg.metrics_file)})
    links = {"pipeline_run_id": pipeline_run_id or ""}
    train_run = find_stage_run(pipeline_run_id, "train") if pipeline_run_id else None
    if train_run:
        links["train_run_id"] = train_run
    return register_generator(onnx, cfg.registered_model, c_dim=c_dim, quality=quality_of(cfg_here), links=links)


@flow(name="sg2ada-pipeline", log_prints=True)
def pipeline(project_dir: str = ".", stages: list[str] | None = None, register_model: bool = True,
             run_name: str = "pipeline") -> dict[str, Any]:
    """Run the stages in order under one MLflow parent run; register the generator if it was re-exported."""
    import mlflow

    root = Path(project_dir).resolve()
    chosen = list(stages or STAGES)
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGES)}")
    params = load_params(root / "params.yaml")
    tracker = PipelineTracker(root, get_run_logger(), run_name)
    tracker.start()
    results: list[dict[str, Any]] = []
    registered = None
    quality: dict[str, float] = {}
    status = "FAILED"
    try:
        for stage in [s for s in STAGES if s in chosen]:
            result = repro_stage(stage, str(root), tracker.child_env())
            tracker.log_stage(stage, result, params)
            results.append(result)
        # dvc.lock is final only now: the dataset hash tag reads it.
        tracker.call("tag pipeline run", mlflow.set_tags, pipeline_tags(root, params))
        quality = tracker.log_quality(root / params_section(params, "evaluate").get("out", "metrics.json"))
        exported = any(r["stage"] == "export" and r["ran"] for r in results)
        if register_model and exported and tracker.error is None:
            registered = tracker.call("register model", register_exported, root, params, tracker.run_id)
            if registered:
                tracker.call("tag registered model", mlflow.set_tags, {
                    "registered_model": f"{registered['uri']} (version {registered['version']})"})
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
            "quality": quality, "registered": registered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, run in pipeline order")
    parser.add_argument("--no-register", action="store_true", help="skip the MLflow model registration")
    args = parser.parse_args(argv)
    try:
        out = pipeline(args.project_dir, [s for s in args.stages.split(",") if s], register_model=not args.no_register)
    except (StageFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
