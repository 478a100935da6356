"""A hyperparameter sweep in one command: every grid point a DVC experiment and an MLflow run, the best one
tagged and registered; run the same command again after a crash and it finishes what is left.

    python -m flows.sweep --param train.gamma=0.1,1,10 [--param train.aug=ada,noaug] [--metric kid500]

The best point is chosen by `--metric`, by default the metric of the `@champion` gate (`export.quality_metric`
in params.yaml: Inception KID, fair across model families), never the fd_effnet proxy unless asked for.

Each point sets its values in params.yaml as `dvc exp run -S <key>=<value>` would, runs `dvc repro <target>`
(one point after another; DVC skips what the change does not touch, e.g. prepare and validate) and saves
the result as a DVC experiment (`dvc exp save`), so `dvc exp show` lists the points with their params and
metrics. Any params.yaml section that a stage of dvc.yaml reads can be swept. In MLflow one sweep run holds
one child run per point (named by its values, e.g. `gamma=0.1`), under which the point's stages log
themselves; the child gets the training params and the quality metric as columns. At the end: a comparison
table (`summary.md`, `summary.csv`) and a grid of every point's final fakes (`fakes.png`, one row per point)
in `reports/sweeps/<sweep>/` and in MLflow and Prefect; the best point (by `--metric`) tagged `best=true`,
checked out into the workspace, exported, and registered as `@challenger` — `@champion` only
if it beats the current champion.

Faults. The sweep has an id (derived from the grid, metric, target, base commit and params; or
`--sweep-id`) and a record of its points, `reports/sweeps/<sweep>/sweep.json`, rewritten atomically at
every step. Run the same command again after `kill -9`, a reboot or Ctrl-C: finished points are not run
again (training resumes from its checkpoint where a point was cut short), the MLflow runs are found by
their tags instead of duplicated, and the summary, tags and registry end as after an uninterrupted sweep.
An MLflow server that does not answer does not stop the points: the sweep says what it could not log and
logs it when run again.

Bad input (an unknown params key, a value of the wrong type, a metric that is not computed or whose
detector is absent) is a one-line error before anything trains. Exit codes: 0 done, 1 a point failed
(the others still ran; run again to retry it) or the environment, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cli import flow_parser
from flows.pipeline import export_target, register_exported
from flows.project import (
    dvc_command,
    git_head,
    pipeline_stages,
    require_git,
    section_config,
    stage_env,
    upstream_stages,
)
from flows.sweep_record import DONE, RUNNING, SweepRecord, check_sweep_id, derive_sweep_id
from flows.sweep_tracking import SweepTracker
from flows.tracking import comparison_params, find_stage_run
from stages.common.cli import run_stage
from stages.common.config import ConfigError, build_config, load_params, params_section
from stages.common.errors import BadInput, CheckFailed
from stages.common.fileio import write_bytes_atomic, write_text_atomic
from stages.common.tracking import finite_metrics

FAILED = "failed"
POINT_FILES = {"fakes": "fakes.png", "curves": "curves.png", "quality": "quality.csv"}  # kept per point


class SweepFailed(CheckFailed):
    """A point's `dvc repro` failed, or the best point could not be exported; exit 1."""


# ------------------------------------------------------------------------------------------- the grid
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


def _has_path(tree: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def check_grid(grid: dict[str, list[str]], params: dict[str, Any], project: Path = Path(".")
               ) -> list[dict[str, str]]:
    """Every point, checked by the stages' own config classes (unknown key, wrong type, out of range)."""
    import yaml

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    classes: dict[str, type | None] = {}
    for point in points:
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in point.items():
            section, _, field = key.partition(".")
            by_section.setdefault(section, {})[field] = yaml.safe_load(value)  # as DVC will write it
        for section, overrides in by_section.items():
            if section not in classes:
                classes[section] = section_config(project, section)
            cls = classes[section]
            if cls is None:
                continue
            fields = {f.name for f in dataclasses.fields(cls)}
            values = params_section(params, section)
            # A key inside a sub-section (generate.images.seeds) is the stage's to check; it must exist.
            nested = {k for k in overrides if "." in k and k.split(".")[0] not in fields}
            for key in nested:
                if not _has_path(values, key):
                    raise BadInput(f"--param {section}.{key}: no such key in params.yaml")
            flat = {k: v for k, v in overrides.items() if k not in nested}
            try:
                build_config(cls, {**{k: v for k, v in values.items() if k in fields}, **flat})
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
    check_detector(spec.detector, detector_dir=params_section(params, "evaluate").get("detector_dir"), kind=spec.kind)
    return lower_is_better(metric)


def check_target(project: Path, target: str) -> str:
    stages = pipeline_stages(project)
    if target not in stages:
        raise BadInput(f"--target {target!r}: not a stage of dvc.yaml ({', '.join(stages)})")
    return target


def setting(project: Path, params: dict[str, Any], section: str, key: str) -> Any:
    """params.yaml's `section.key`, else the default of the section's config class."""
    values = params_section(params, section)
    if values.get(key) is not None:
        return values[key]
    cls = section_config(project, section)
    for f in dataclasses.fields(cls) if cls is not None else ():
        if f.name == key:
            return f.default
    raise BadInput(f"params.yaml has no {section}.{key}")


# ------------------------------------------------------------------------------------------- DVC
def set_params(project: Path, point: dict[str, str]) -> None:
    """Write the point's values into params.yaml the way `dvc exp run -S ++key=value` does (DVC's own override
    code: comments kept; `++` adds a key params.yaml lacks, whose default applied until now)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(project / "params.yaml", [f"++{key}={value}" for key, value in point.items()])


def dvc(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """A quick dvc command; its failure is a one-line SweepFailed."""
    proc = subprocess.run([*dvc_command(), *args], cwd=project, env=stage_env(env), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[-1500:]
        raise SweepFailed(f"dvc {' '.join(args)} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def git(project: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SweepFailed(f"git {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def experiments(project: Path) -> dict[str, str]:
    """{name: git ref} of the DVC experiments on the current commit."""
    head = git(project, "rev-parse", "HEAD").strip()
    refs = git(project, "for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").split()
    return {ref.rpartition("/")[2]: ref for ref in refs}


def reproduce(project: Path, name: str, target: str, env: dict[str, str]) -> None:
    """`dvc repro <target>` in the workspace, streamed to the flow's log.

    Not `dvc exp run`: before it reproduces, `exp run` checks every output out as dvc.lock records it, which
    deletes the checkpoints of a training that a kill cut short (the run folder is a `persist` output).
    Plain `dvc repro` keeps it, so the training resumes; `dvc exp save` then records the experiment."""
    logger = get_run_logger()
    cmd = [*dvc_command(), "repro", target]
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=project, env=stage_env(env), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, bufsize=1) as proc:
        for line in proc.stdout:
            if line.strip():
                lines.append(line.rstrip())
                logger.info("%s | %s", name, line.rstrip())
    if proc.returncode != 0:
        raise SweepFailed(f"dvc repro {target} for {name} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))


def save_experiment(project: Path, name: str, target: str) -> None:
    """`dvc exp save --name <name> <target and the stages before it>` (the stages after the target may never
    have run here, and `exp save` of a stage without outputs fails), with the new files an experiment run
    would include (untracked, not ignored)."""
    untracked = git(project, "ls-files", "--others", "--exclude-standard").split("\n")
    dvc(project, "exp", "save", "--name", name, *[a for path in untracked if path for a in ("-I", path)],
        *upstream_stages(project, target))


def checkout_experiment(project: Path, name: str, target: str) -> None:
    """Bring experiment `name` into the workspace: the files its commit changed (params.yaml, dvc.lock,
    metrics), then the outputs of `target` and the stages before it from the cache.

    Not `dvc exp apply`: it also checks out the outputs of stages the sweep never ran (e.g. export on a fresh
    clone), fails on them, and its rollback then deletes ignored files such as this sweep's record."""
    ref = experiments(project).get(name)
    if ref is None:
        raise SweepFailed(f"no DVC experiment {name} on this commit (`dvc exp list`)")
    for line in git(project, "diff", "--name-status", "--no-renames", "HEAD", ref).splitlines():
        status, _, path = line.partition("\t")
        dest = project / path
        if status.startswith("D"):
            dest.unlink(missing_ok=True)
            continue
        content = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=project, capture_output=True, check=True).stdout
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(dest, content)
    dvc(project, "checkout", "--force", "--with-deps", target)
    get_run_logger().info("experiment %s checked out (its %s and the stages before)", name, target)


# ------------------------------------------------------------------------------------------- one point
def keep_point_files(project: Path, params: dict[str, Any], record: SweepRecord, point: dict[str, Any]
                     ) -> dict[str, Any]:
    """The point's quality (the evaluate stage's metrics file) and copies of its final fakes, curves and
    quality curve in the sweep's folder (the workspace's run folder belongs to the next point soon)."""
    metrics_file = project / setting(project, params, "evaluate", "out")
    quality = finite_metrics(json.loads(metrics_file.read_text())) if metrics_file.is_file() else {}
    run_dir = project / setting(project, params, "train", "run_dir")
    kept: dict[str, str] = {}
    sources = {"fakes": (sorted(run_dir.glob("fakes[0-9]*.png")) or [None])[-1],
               "curves": run_dir / "curves.png", "quality": run_dir / "quality.csv"}
    for kind, source in sources.items():
        if source is not None and source.is_file():
            dest = record.outdir / f"{point['index']:02d}-{POINT_FILES[kind]}"
            write_bytes_atomic(dest, source.read_bytes())
            kept[kind] = dest.name
    return {"quality": quality, "files": kept}


def point_files(record: SweepRecord, point: dict[str, Any]) -> list[Path]:
    return [record.outdir / name for name in (point.get("files") or {}).values()]


def run_point(project: Path, record: SweepRecord, tracker: SweepTracker, point: dict[str, Any], target: str,
              base_params: dict[str, Any]) -> None:
    """One point, resumable: its values set and `dvc repro` run, then saved as a DVC experiment (or, when an
    interrupted execution saved it already, that experiment checked out), its results recorded, then logged."""
    logger = get_run_logger()
    record.update(point, state=RUNNING, error=None)
    run_id = tracker.point_run(point)
    if point["experiment"] in experiments(project):
        logger.info("%s: experiment %s exists (saved before an interruption): checked out, not rerun",
                    point["name"], point["experiment"])
        checkout_experiment(project, point["experiment"], target)
    else:
        record.update(point, exp_runs=int(point.get("exp_runs", 0)) + 1)
        set_params(project, point["values"])
        reproduce(project, point["experiment"], target, tracker.child_env(run_id, point["name"]))
        save_experiment(project, point["experiment"], target)
    params = load_params(project / "params.yaml")
    record.update(point, state=DONE, **keep_point_files(project, params, record, point))
    log_point(record, tracker, point, base_params)


def log_point(record: SweepRecord, tracker: SweepTracker, point: dict[str, Any], base_params: dict[str, Any]
              ) -> None:
    params = comparison_params(base_params, point["values"])
    logged = tracker.log_point(point, params, point_files(record, point))
    record.update(point, logged=logged)


# ------------------------------------------------------------------------------------------- the end
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
    write_bytes_atomic(out, buf.getvalue())
    return out


def write_summary(outdir: Path, results: list[dict[str, Any]], metric: str, best: dict[str, Any] | None) -> str:
    keys = [k for k in results[0] if k not in ("point", "run_id", "fakes", "experiment", metric)] if results else []
    header = ["point", *keys, metric, "experiment", "best"]
    rows = [[r["point"], *[r[k] for k in keys], "" if r[metric] is None else f"{r[metric]:.6g}", r["experiment"],
             "yes" if best is not None and r["experiment"] == best["experiment"] else ""] for r in results]
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    write_text_atomic(outdir / "summary.csv", buf.getvalue())
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in rows)
    write_text_atomic(outdir / "summary.md", md)
    return md


def register_best(project: Path, record: SweepRecord, tracker: SweepTracker, best: dict[str, Any]
                  ) -> dict[str, Any] | None:
    """Bring the best experiment's outputs into the workspace, export them, register with the champion rule.
    Idempotent: a version that an interrupted execution registered under this sweep is completed, not
    registered twice."""
    import mlflow

    from stages.export.registry import CHAMPION, promote

    logger = get_run_logger()
    checkout_experiment(project, best["experiment"], record.data["target"])
    dvc(project, "repro", "--single-item", "export")
    params = load_params(project / "params.yaml")
    target = export_target(project, params)
    if target is None:
        return None
    train_run = tracker.call("find the best point's training run", find_stage_run, best["run_id"], "train")
    links = {"sweep": record.sweep_id, "sweep_point_run_id": best["run_id"] or "", "train_run_id": train_run or ""}
    version = tracker.registered_version(target["model"])
    if version is None:
        mlflow.start_run(run_id=tracker.parent_id)  # the registration run nests under the sweep's run
        try:
            return register_exported(project, params, None, links=links)
        finally:
            mlflow.end_run()
    logger.info("%s version %s was registered by an interrupted execution: completing its tags and aliases",
                target["model"], version.version)
    client = mlflow.MlflowClient()
    metric, value, _ = target["quality"]
    tags = {**links, **({f"quality.{metric}": repr(float(value))} if value is not None else {})}
    for key, val in tags.items():
        client.set_model_version_tag(target["model"], version.version, key, val)
    promote(client, target["model"], version.version, target["quality"])
    aliases = sorted(client.get_model_version(target["model"], version.version).aliases)
    return {"run_id": version.run_id, "version": str(version.version), "aliases": aliases,
            "uri": f"models:/{target['model']}@{CHAMPION if CHAMPION in aliases else aliases[-1]}",
            "champion": CHAMPION in aliases}


def results_of(record: SweepRecord, metric: str) -> list[dict[str, Any]]:
    return [{"point": p["name"], "experiment": p["experiment"], "run_id": p.get("run_id"), **p["values"],
             metric: (p.get("quality") or {}).get(metric),
             "fakes": record.outdir / p["files"]["fakes"] if (p.get("files") or {}).get("fakes") else None}
            for p in record if p["state"] == DONE]


@flow(name="sg2ada-sweep", log_prints=True)
def sweep(grid: dict[str, list[str]], metric: str = "kid500", project_dir: str = ".",
          target: str = "evaluate", register_model: bool = True, sweep_id: str | None = None) -> dict[str, Any]:
    """Run every point of `grid` as a DVC experiment under one MLflow sweep run; tag and register the best.
    Run again with the same arguments, it continues the sweep it finds in `reports/sweeps/<sweep>/`."""
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    require_git(project)
    params = load_params(project / "params.yaml")
    points = check_grid(grid, params, project)
    lower = check_metric(metric, params)
    check_target(project, target)
    baseline = git_head(project)
    sweep_id = check_sweep_id(sweep_id) if sweep_id else derive_sweep_id(grid, metric, target, params, baseline)
    record = SweepRecord.open(project / "reports" / "sweeps" / sweep_id, sweep_id, grid, points, metric, target,
                              baseline)
    done_before = [p["name"] for p in record if p["state"] == DONE]
    if done_before:
        logger.info("sweep %s continues: %s done before, not run again", sweep_id, ", ".join(done_before))
    tracker = SweepTracker(project, record, logger)
    tracker.parent(f"{sweep_id} {' x '.join(grid)}", {"grid": json.dumps(grid), "metric": metric, "target": target})
    tracker.close_orphans()

    status = "FAILED"
    failed: list[str] = []
    try:
        for point in record:
            if point["state"] == DONE:
                if not point.get("logged"):
                    log_point(record, tracker, point, params)
                continue
            try:
                run_point(project, record, tracker, point, target, params)
            except SweepFailed as exc:  # the other points still run; a rerun retries this one
                logger.error("%s", exc)
                record.update(point, state=FAILED, error=str(exc).splitlines()[0])
                tracker.end_point(point, "FAILED")
                failed.append(point["name"])

        # Points done while MLflow was away, now that it may be back.
        if tracker.parent_id is None:
            tracker.parent(f"{sweep_id} {' x '.join(grid)}", {"grid": json.dumps(grid), "metric": metric,
                                                              "target": target})
        for point in record:
            if point["state"] == DONE and not point.get("logged"):
                log_point(record, tracker, point, params)

        results = results_of(record, metric)
        scored = [r for r in results if r[metric] is not None]
        best = (min if lower else max)(scored, key=lambda r: r[metric]) if scored else None
        table = write_summary(record.outdir, results, metric, best)
        grid_png = fakes_grid([(r["point"], r["fakes"]) for r in results], record.outdir / "fakes.png")
        best_run = next((p.get("run_id") for p in record if best and p["experiment"] == best["experiment"]), None)
        record.set(best=None if best is None else {"point": best["point"], "experiment": best["experiment"],
                                                   "run_id": best_run, metric: best[metric]})
        not_logged = [f"point {p['name']}" for p in record if p["state"] == DONE and not p.get("logged")]
        if best is not None and not tracker.mark_best(best_run):
            not_logged.append("the best=true tag")
        summary_metrics = {f"best.{metric}": best[metric]} if best is not None else {}
        summary_tags = {"best_point": best["point"], "best_experiment": best["experiment"]} if best else {}
        if not tracker.log_summary(summary_metrics, summary_tags,
                                   [record.outdir / "summary.md", record.outdir / "summary.csv",
                                    *([grid_png] if grid_png else [])]):
            not_logged.append("the sweep summary")
        create_markdown_artifact(key="sweep-summary", markdown=table, description=f"{sweep_id}: {metric}")

        registered = record.data.get("registered")
        if failed:
            raise SweepFailed(f"point(s) {', '.join(failed)} failed (see the log above); the others are done: "
                              f"run the same command again to retry, finished points are kept")
        if register_model and best is not None:
            if tracker.parent_id is not None and tracker.online() and best_run is not None:
                registered = register_best(project, record, tracker, {**best, "run_id": best_run})
                record.set(registered=registered)
            else:
                not_logged.append("the registration of the best generator")
        record.set(not_logged=not_logged, state="finished" if not not_logged else "finished, not all logged")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for point in record:
            if point["state"] == RUNNING:
                tracker.end_point(point, status if status != "FINISHED" else "FAILED")
        tracker.end(status)
    return {"sweep": sweep_id, "mlflow_run_id": tracker.parent_id, "results": results, "best": record.data["best"],
            "registered": registered, "summary": str(record.outdir / "summary.md"), "record": str(record.path),
            "not_logged": not_logged, "tracking_error": tracker.error,
            "exp_runs": {p["name"]: p.get("exp_runs", 0) for p in record}}


def main(argv: list[str] | None = None) -> int:
    parser = flow_parser("python -m flows.sweep", __doc__)
    parser.add_argument("--param", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                        help="a swept params.yaml value (repeat for a grid)")
    parser.add_argument("--metric", default=None, help="quality metric deciding the best point (default: params "
                        "export.quality_metric, the @champion gate's)")
    parser.add_argument("--target", default="evaluate", help="the dvc.yaml stage each point runs up to")
    parser.add_argument("--sweep-id", default=None, help="name the sweep (default: derived from the grid, metric, "
                        "target, commit and params, so the same command continues the same sweep)")
    parser.add_argument("--no-register", action="store_true", help="do not register the best point's generator")

    def body(args: Any) -> None:
        project = Path(args.project_dir)
        grid = parse_grid(args.param)
        params = load_params(project / "params.yaml")
        if args.metric is None:
            from stages.export.config import ExportConfig

            args.metric = build_config(ExportConfig, params_section(params, "export")).quality_metric
        # One-line errors here, before Prefect starts (it would print tracebacks).
        check_grid(grid, params, project)
        check_metric(args.metric, params)
        check_target(project, args.target)
        require_git(project)
        if args.sweep_id:
            check_sweep_id(args.sweep_id)
        out = sweep(grid, metric=args.metric, project_dir=args.project_dir, target=args.target,
                    register_model=not args.no_register, sweep_id=args.sweep_id)
        print(Path(out["summary"]).read_text())
        best = out["best"]
        if best is not None:
            print(f"best: {best['point']} ({args.metric} {best[args.metric]:.4g}); "
                  f"registered: {out['registered']['uri'] if out['registered'] else 'no'}")
        print(f"record: {out['record']}")
        if out["not_logged"]:
            print(f"not in MLflow yet ({out['tracking_error']}): {', '.join(out['not_logged'])}; run the same "
                  f"command again once the tracking server answers", file=sys.stderr)

    return run_stage(parser, argv, body)


if __name__ == "__main__":
    sys.exit(main())
