"""ADA's limited-data claim in miniature, read back from a finished `python -m flows.sweep --param train.aug=ada,noaug`:
the quality curve, the overfitting heuristic r_t = E[sign(D(real))] and the augmentation probability p per kimg,
one line per point, as one picture and a table; the picture is logged to the sweep's MLflow run.

    python -m flows.sweep --param train.aug=ada,noaug --metric kid1k_full      # a project whose params.yaml trains
                                                                               # on a small subset with snapshot metrics
    python tests/benchmarks/ada_claim.py --sweep <sweep id> --out reports/ada   # then this, in the same project

The curves come from what every training run logged to MLflow (`curves.csv`, `quality.csv` of the `train` stage
nested under each point's run), so this needs nothing from the workspace.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def point_curves(sweep_id: str) -> dict[str, dict[str, list[dict[str, float]]]]:
    """{point name: {"curves": rows, "quality": rows}} from the train runs under each point of the sweep."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from stages.common.tracking import experiment_name, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name())
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {experiment_name()!r} at {tracking_uri()}")
    ids = [experiment.experiment_id]
    points = client.search_runs(ids, f"tags.sweep = '{sweep_id}' and tags.stage = 'sweep-point'")
    if not points:
        raise SystemExit(f"no points of sweep {sweep_id!r} in MLflow")
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for point in points:
        trains = client.search_runs(ids, f"tags.`mlflow.parentRunId` = '{point.info.run_id}' and tags.stage = 'train'",
                                    order_by=["attributes.start_time DESC"])
        if not trains:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for name in ("curves.csv", "quality.csv"):
                try:
                    files[name] = Path(client.download_artifacts(trains[0].info.run_id, name, tmp))
                except Exception:  # an artifact a run did not log (no snapshot metrics): that panel stays empty
                    continue
            out[point.info.run_name] = {k.removesuffix(".csv"): read_csv(v) for k, v in files.items()}
    return out


def plot(curves: dict[str, dict[str, list[dict[str, float]]]], dest: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({k for c in curves.values() for row in c.get("quality", []) for k in row if k != "kimg"})
    panels = [*metrics, "real_sign", "augment_p"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for name, c in sorted(curves.items()):
            rows = c.get("quality" if key in metrics else "curves", [])
            pts = [(r["kimg"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), "o-" if key in metrics else "-", label=name, markersize=3)
        ax.set_xlabel("kimg")
        ax.set_title({"real_sign": "r_t = E[sign(D(real))]", "augment_p": "augment p"}.get(key, key))
        if key == "real_sign":
            ax.axhline(0.6, color="grey", linestyle=":", linewidth=1, label="ADA target 0.6")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return metrics


def table(curves: dict[str, dict[str, list[dict[str, float]]]], metrics: list[str]) -> str:
    lines = ["| point | kimg | " + " | ".join(f"{m} final (best)" for m in metrics) + " | r_t final | p final |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " | --- | --- |"]
    for name, c in sorted(curves.items()):
        q, cv = c.get("quality", []), c.get("curves", [])
        cells = []
        for m in metrics:
            vals = [r[m] for r in q if m in r]
            cells.append(f"{vals[-1]:.4g} ({min(vals):.4g})" if vals else "-")
        last = cv[-1] if cv else {}
        lines.append(f"| {name} | {last.get('kimg', float('nan')):.1f} | " + " | ".join(cells)
                     + f" | {last.get('real_sign', float('nan')):.3f} | {last.get('augment_p', float('nan')):.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", required=True, help="the sweep id (reports/sweeps/<id>/, MLflow tag `sweep`)")
    ap.add_argument("--out", default="reports/ada")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the picture to the sweep's MLflow run")
    args = ap.parse_args()
    curves = point_curves(args.sweep)
    out = Path(args.out)
    picture = out / "ada_vs_noaug.png"
    metrics = plot(curves, picture)
    md = table(curves, metrics)
    (out / "ada_vs_noaug.md").write_text(md + "\n")
    (out / "ada_vs_noaug.json").write_text(json.dumps({"sweep": args.sweep, "points": curves}, indent=1))
    print(md)
    if not args.no_mlflow:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        from stages.common.tracking import experiment_name

        exp = client.get_experiment_by_name(experiment_name())
        sweep_runs = client.search_runs([exp.experiment_id], f"tags.sweep = '{args.sweep}' and tags.stage = 'sweep'")
        if sweep_runs:
            client.log_artifact(sweep_runs[0].info.run_id, str(picture), "ada")
            client.log_artifact(sweep_runs[0].info.run_id, str(out / "ada_vs_noaug.md"), "ada")
    return 0


if __name__ == "__main__":
    sys.exit(main())
