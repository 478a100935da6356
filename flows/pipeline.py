"""The pipeline as a Prefect flow: one task per DVC stage, one MLflow parent run around them.

    python -m flows.pipeline                       # run once (local Prefect state, no server needed)
    python -m flows.pipeline --stages prepare,validate

The stages are those of dvc.yaml, in its order. Each task runs `dvc repro --single-item <stage>`, so DVC
alone decides what is stale (no second cache on top) and the commands are exactly those of `dvc repro`;
whether a stage ran is read from DVC's state (`dvc status` before it). Transient failures are retried; a
training stage that is retried resumes from its last checkpoint (`train.resume: auto`). Stages log
themselves to MLflow under the pipeline's run (see `flows.tracking`). The exported generator is
registered only when the export stage ran (something was retrained), as `@challenger`, and becomes
`@champion` only when its quality metric beats the current champion's.

Exit codes: 0 done, 1 a stage failed (its output's tail is in the message), 2 bad input (an unknown
stage, a missing dvc.yaml), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Prefect's in-process server gets 20 s to start by default; its first start on a fresh machine
# (database migrations) takes longer than that on a small CPU box. Set before Prefect reads settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.cli import flow_parser
from flows.project import StageProbe, dvc_command, pipeline_stages, stage_env
from flows.tracking import PipelineTracker, comparison_params, find_stage_run, pipeline_tags
from stages.common.cli import run_stage
from stages.common.config import build_config, load_params, params_section
from stages.common.errors import BadInput, CheckFailed

__all__ = ["StageFailed", "choose_stages", "dvc_command", "export_target", "main", "pipeline", "register_exported",
           "stage_env"]


class StageFailed(CheckFailed):
    """`dvc repro` of a stage exited non-zero; the message carries the tail of its output (exit 1)."""


def choose_stages(project: Path, wanted: Sequence[str] | None) -> list[str]:
    """`wanted` (all when None) in dvc.yaml's order; an unknown name is bad input."""
    stages = pipeline_stages(project)
    if wanted is None:
        return stages
    unknown = [s for s in wanted if s not in stages]
    if unknown:
        raise BadInput(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has {', '.join(stages)}")
    return [s for s in stages if s in wanted]


@task(retries=2, retry_delay_seconds=10, task_run_name="{stage}")
def repro_stage(stage: str, project_dir: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage if DVC finds it stale, else does nothing."""
    logger = get_run_logger()
    project = Path(project_dir)
    probe = StageProbe.before(project, stage, extra_env)
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
    ended = time.time()
    return {"stage": stage, "seconds": round(ended - started, 1), "ran": probe.ran(project),
            "changes": probe.changes, "started": started, "ended": ended}


def export_target(project_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """What the export stage left to register: {onnx, model, c_dim, quality}; None when it exported nothing."""
    from stages.export.config import ExportConfig
    from stages.export.exporter import quality_of

    section = params_section(params, "export")
    cfg = build_config(ExportConfig, section)
    out = project_dir / cfg.outdir
    onnx = out / "generator_uint8.onnx"
    if not onnx.exists():
        return None
    summary = json.loads((out / "export_summary.json").read_text()) if (out / "export_summary.json").exists() else {}
    here = build_config(ExportConfig, {**section, "metrics_file": str(project_dir / cfg.metrics_file)})
    return {"onnx": onnx, "model": cfg.registered_model, "c_dim": int(summary.get("generator", {}).get("c_dim", 0)),
            "quality": quality_of(here)}


def register_exported(project_dir: Path, params: dict[str, Any], pipeline_run_id: str | None,
                      links: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Register the export stage's serving graph, linked to this pipeline's training run (and `links`); the
    champion rule is `stages.export.registry.promote`."""
    from stages.export.registry import register_generator

    target = export_target(project_dir, params)
    if target is None:
        return None
    all_links = {"pipeline_run_id": pipeline_run_id or "", **(links or {})}
    train_run = find_stage_run(pipeline_run_id, "train") if pipeline_run_id else None
    if train_run:
        all_links["train_run_id"] = train_run
    return register_generator(target["onnx"], target["model"], c_dim=target["c_dim"], quality=target["quality"],
                              links=all_links)


@flow(name="sg2ada-pipeline", log_prints=True)
def pipeline(project_dir: str = ".", stages: list[str] | None = None, register_model: bool = True,
             run_name: str = "pipeline") -> dict[str, Any]:
    """Run the stages in order under one MLflow parent run; register the generator if it was re-exported."""
    import mlflow

    root = Path(project_dir).resolve()
    chosen = choose_stages(root, stages)
    params = load_params(root / "params.yaml")
    tracker = PipelineTracker(root, get_run_logger(), run_name)
    tracker.start()
    results: list[dict[str, Any]] = []
    registered = None
    quality: dict[str, float] = {}
    status = "FAILED"
    try:
        for stage in chosen:
            result = repro_stage(stage, str(root), tracker.child_env())
            tracker.log_stage(stage, result, params)
            results.append(result)
        # dvc.lock is final only now: the dataset hash tag reads it.
        tracker.call("tag pipeline run", mlflow.set_tags, pipeline_tags(root, params))
        tracker.call("log pipeline params", mlflow.log_params, comparison_params(params))
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
    parser = flow_parser("python -m flows.pipeline", __doc__)
    parser.add_argument("--stages", default=None, metavar="A,B,...",
                        help="comma-separated subset of dvc.yaml's stages, run in its order (default: all)")
    parser.add_argument("--no-register", action="store_true", help="skip the MLflow model registration")

    def body(args) -> None:
        wanted = None if args.stages is None else [s.strip() for s in args.stages.split(",") if s.strip()]
        chosen = choose_stages(Path(args.project_dir), wanted)  # one line here, before Prefect starts
        out = pipeline(args.project_dir, chosen, register_model=not args.no_register)
        print(json.dumps(out, indent=2, default=str))

    return run_stage(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
