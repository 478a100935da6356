"""A hyperparameter sweep in one command: every grid point a DVC experiment and an MLflow run, the best one
tagged and registered.

    python -m flows.sweep --param train.gamma=0.1,1,10 [--param train.aug=ada,noaug] [--metric fd_effnet1k_full]

Each point runs `dvc exp run -S <key>=<value> ... <target>` (one after another; DVC skips what the change
does not touch, e.g. prepare and validate), so `dvc exp show` lists the points with their params and
metrics. In MLflow one sweep run holds one child run per point (named by its values, e.g. `gamma=0.1`),
under which the point's stages log themselves; the child gets the swept values as params and the quality
metric as a metric. At the end: a comparison table (`summary.md`, `summary.csv`) and a grid of every
point's final fakes (`fakes.png`, one row per point) in `reports/sweeps/<sweep>/` and in MLflow and
Prefect; the best point (by `--metric`) tagged `best=true`, applied to the workspace (`dvc exp apply`),
exported, and registered as `@challenger` — `@champion` only if it beats the current champion.

Bad input (an unknown params key, a value of the wrong type, a metric that is not computed or whose
detector is absent) is a one-line error before anything trains.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import dvc_command, register_exported, stage_env
from flows.tracking import find_stage_run, setup_experiment
from stages.common.config import ConfigError, build_config, load_params, params_section
from stages.common.errors import BadInput, CheckFailed, run_cli
from stages.common.tracking import PARENT_RUN_ENV, RUN_NAME_ENV, SWITCH_ENV, finite_metrics

SECTIONS = ("prepare", "validate", "train", "evaluate", "generate", "export")


class SweepFailed(CheckFailed):
    """A point's `dvc exp run` failed; the message carries the tail of its output."""


def config_class(section: str) -> type:
    from stages.evaluate.config import EvaluateConfig
    from stages.export.config import ExportConfig
    from stages.prepare.config import PrepareConfig
    from stages.train.config import TrainConfig
    from stages.validate.config import ValidateConfig

    classes = {"prepare": PrepareConfig, "validate": ValidateConfig, "train": TrainConfig,
               "evaluate": EvaluateConfig, "export": ExportConfig}
    if section not in classes:
        raise BadInput(f"--param: section {section!r} cannot be swept; choose one of {', '.join(classes)}")
    return classes[section]


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['train.gamma=0.1,1'] -> {'train.gamma': ['0.1', '1']} (values as text, as `dvc exp run -S` takes them)."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or "." not in key or not values:
            raise BadInput(f"--param {spec!r}: expected SECTION.KEY=V1,V2,... e.g. train.gamma=0.1,1,10")
        if key in grid:
            raise BadInput(f"--param {key} given twice")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise BadInput("give at least one --param SECTION.KEY=V1,V2,...")
    return grid


def check_grid(grid: dict[str, list[str]], params: dict[str, Any]) -> list[dict[str, str]]:
    """Every point, checked by the stages' own config classes (unknown key, wrong type, out of range)."""
    import yaml

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for point in points:
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in point.items():
            section, _, field = key.partition(".")
            by_section.setdefault(section, {})[field] = yaml.safe_load(value)  # as DVC will write it
        for section, overrides in by_section.items():
            try:
                build_config(config_class(section), {**params_section(params, section), **overrides})
            except ConfigError as exc:
                raise BadInput(f"--param {', '.join(f'{section}.{k}={v}' for k, v in overrides.items())}: {exc}") \
                    from None
    return points


def check_metric(metric: str, params: dict[str, Any]) -> bool:
    """The metric must be one the evaluate stage computes, with its detector at hand; returns lower_is_better."""
    from stages.metrics.detectors import check_detector
    from stages.metrics.registry import UnknownMetricError, lower_is_better, parse_metric

    try:
        spec = parse_metric(metric)
    except UnknownMetricError as exc:
        raise BadInput(f"--metric: {exc}") from None
    computed = list(params_section(params, "evaluate").get("metrics") or [])
    if metric not in computed:
        raise BadInput(f"--metric {metric}: the evaluate stage does not compute it (evaluate.metrics = {computed}); "
                       f"add it there or pick one of those")
    check_detector(spec.detector, detector_dir=params_section(params, "evaluate").get("detector_dir"))
    return lower_is_better(metric)


def point_name(point: dict[str, str]) -> str:
    return ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in point.items())


def set_params(point: dict[str, str]) -> list[str]:
    """`-S ++key=value`: DVC's add-or-override form, since a key may be absent from params.yaml (its default
    applies) or present, and each experiment leaves its values in the workspace's params.yaml."""
    return [a for key, value in point.items() for a in ("-S", f"++{key}={value}")]


def run_point(project: Path, exp_name: str, set_args: list[str], target: str, env: dict[str, str]) -> None:
    logger = get_run_logger()
    cmd = [*dvc_command(), "exp", "run", "--name", exp_name, *set_args, target]
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=project, env=stage_env(env), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, bufsize=1) as proc:
        for line in proc.stdout:
            if line.strip():
                lines.append(line.rstrip())
                logger.info("%s | %s", exp_name, line.rstrip())
    if proc.returncode != 0:
        raise SweepFailed(f"dvc exp run {exp_name} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))


def fakes_grid(rows: list[tuple[str, Path | None]], out: Path) -> Path | None:
    """One row per point: its final fakes grid, scaled to a common width, labelled on the left."""
    from PIL import Image, ImageDraw

    images = [(name, Image.open(path).convert("RGB")) for name, path in rows if path is not None and path.is_file()]
    if not images:
        return None
    width = max(img.width for _, img in images)
    label = 180
    scaled = [(name, img.resize((width, max(1, round(img.height * width / img.width))))) for name, img in images]
    canvas = Image.new("RGB", (label + width, sum(img.height for _, img in scaled)), "white")
    y = 0
    draw = ImageDraw.Draw(canvas)
    for name, img in scaled:
        canvas.paste(img, (label, y))
        draw.text((6, y + 6), name, fill="black")
        y += img.height
    buf = io.BytesIO()
    canvas.save(buf, format="png")
    out.write_bytes(buf.getvalue())
    return out


@flow(name="sg2ada-sweep", log_prints=True)
def sweep(grid: dict[str, list[str]], metric: str = "fd_effnet1k_full", project_dir: str = ".",
          target: str = "evaluate", register_model: bool = True) -> dict[str, Any]:
    """Run every point of `grid` as a DVC experiment under one MLflow sweep run; tag and register the best."""
    import mlflow

    project = Path(project_dir).resolve()
    params = load_params(project / "params.yaml")
    points = check_grid(grid, params)
    lower = check_metric(metric, params)
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    outdir = project / "reports" / "sweeps" / sweep_id
    outdir.mkdir(parents=True, exist_ok=True)
    run_dir = project / params_section(params, "train").get("run_dir", "runs/demo")
    metrics_file = project / params_section(params, "evaluate").get("out", "metrics.json")

    experiment_id = setup_experiment(project)
    parent = mlflow.start_run(experiment_id=experiment_id, run_name=f"{sweep_id} {' x '.join(grid)}",
                              tags={"stage": "sweep", "sweep": sweep_id})
    results: list[dict[str, Any]] = []
    try:
        mlflow.log_params({"grid": json.dumps(grid), "metric": metric, "target": target})
        for i, point in enumerate(points):
            name = point_name(point)
            child = mlflow.start_run(run_name=name, nested=True, tags={"stage": "sweep-point", "sweep": sweep_id})
            mlflow.log_params({k: v for k, v in point.items()})
            exp_name = f"{sweep_id}-{i}"
            env = {SWITCH_ENV: "1", PARENT_RUN_ENV: child.info.run_id, RUN_NAME_ENV: name,
                   "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_EXPERIMENT_ID": experiment_id}
            try:
                run_point(project, exp_name, set_params(point), target, env)
            except SweepFailed:
                mlflow.end_run("FAILED")
                raise
            quality = finite_metrics(json.loads(metrics_file.read_text())) if metrics_file.is_file() else {}
            mlflow.log_metrics(quality)
            fakes = sorted(run_dir.glob("fakes[0-9]*.png"))
            kept = None
            if fakes:
                kept = outdir / f"{i:02d}-fakes.png"
                shutil.copyfile(fakes[-1], kept)
                mlflow.log_artifact(str(kept), artifact_path="fakes")
            for extra in ("curves.png", "quality.csv"):
                if (run_dir / extra).is_file():
                    mlflow.log_artifact(str(run_dir / extra))
            results.append({"point": name, "experiment": exp_name, "run_id": child.info.run_id, **point,
                            metric: quality.get(metric), "fakes": kept})
            mlflow.end_run("FINISHED")

        scored = [r for r in results if r[metric] is not None]
        best = (min if lower else max)(scored, key=lambda r: r[metric]) if scored else None
        if best is not None:
            mlflow.MlflowClient().set_tag(best["run_id"], "best", "true")
        table = write_summary(outdir, results, metric, best)
        grid_png = fakes_grid([(r["point"], r["fakes"]) for r in results], outdir / "fakes.png")
        for path in (outdir / "summary.md", outdir / "summary.csv", grid_png):
            if path is not None:
                mlflow.log_artifact(str(path))
        if best is not None:
            mlflow.log_metric(f"best.{metric}", best[metric])
            mlflow.set_tags({"best_point": best["point"], "best_experiment": best["experiment"]})
        create_markdown_artifact(key="sweep-summary", markdown=table, description=f"{sweep_id}: {metric}")
        registered = None
        if register_model and best is not None:
            registered = register_best(project, params, best)
        status = "FINISHED"
    except BaseException:
        status = "FAILED"
        raise
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run(status)
    return {"sweep": sweep_id, "mlflow_run_id": parent.info.run_id, "results": results, "best": best,
            "registered": registered, "summary": str(outdir / "summary.md")}


def register_best(project: Path, params: dict[str, Any], best: dict[str, Any]) -> dict[str, Any] | None:
    """Bring the best experiment's outputs into the workspace, export them, register with the champion rule."""
    logger = get_run_logger()
    for cmd in ([*dvc_command(), "exp", "apply", best["experiment"]],
                [*dvc_command(), "repro", "--single-item", "export"]):
        proc = subprocess.run(cmd, cwd=project, env=stage_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise SweepFailed(f"{' '.join(cmd[-3:])} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
        logger.info("%s", " ".join(cmd[1:]))
    registered = register_exported(project, params, None)
    if registered is not None:
        import mlflow

        client = mlflow.MlflowClient()
        train_run = find_stage_run(best["run_id"], "train")
        for key, value in {"sweep_point_run_id": best["run_id"], "train_run_id": train_run or ""}.items():
            client.set_model_version_tag(params_section(params, "export").get("registered_model",
                                                                               "stylegan2-generator"),
                                         registered["version"], key, value)
    return registered


def write_summary(outdir: Path, results: list[dict[str, Any]], metric: str, best: dict[str, Any] | None) -> str:
    keys = [k for k in results[0] if k not in ("point", "run_id", "fakes", "experiment", metric)] if results else []
    header = ["point", *keys, metric, "experiment", "best"]
    rows = [[r["point"], *[r[k] for k in keys], "" if r[metric] is None else f"{r[metric]:.6g}", r["experiment"],
             "yes" if best is not None and r["run_id"] == best["run_id"] else ""] for r in results]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    (outdir / "summary.csv").write_text(buf.getvalue())
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in rows)
    (outdir / "summary.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--param", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                        help="a swept params.yaml value (repeat for a grid)")
    parser.add_argument("--metric", default="fd_effnet1k_full", help="quality metric deciding the best point")
    parser.add_argument("--target", default="evaluate", help="the dvc stage each point runs up to")
    parser.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml (a git repo)")
    parser.add_argument("--no-register", action="store_true", help="do not register the best point's generator")
    args = parser.parse_args(argv)

    def body() -> None:
        grid = parse_grid(args.param)
        params = load_params(Path(args.project_dir) / "params.yaml")
        check_grid(grid, params)  # one-line errors here, before Prefect starts (it would print tracebacks)
        check_metric(args.metric, params)
        out = sweep(grid, metric=args.metric, project_dir=args.project_dir, target=args.target,
                    register_model=not args.no_register)
        print(Path(out["summary"]).read_text())
        if out["best"] is not None:
            print(f"best: {out['best']['point']} ({args.metric} {out['best'][args.metric]:.4g}); "
                  f"registered: {out['registered']['uri'] if out['registered'] else 'no'}")

    return run_cli("python -m flows.sweep", body)


if __name__ == "__main__":
    sys.exit(main())
