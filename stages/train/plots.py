"""Curves people look at, as files: `quality.csv` (the snapshot metrics against kimg, for `dvc plots`) and
`curves.png` (losses, regularizers, augment p and r_t, quality: one image per run, rendered locally because
DVC's HTML plots fetch their renderer from a CDN)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from stages.common.fileio import read_jsonl, write_bytes_atomic, write_text_atomic

_SNAPSHOT_KIMG = re.compile(r"network-snapshot-(\d+(?:\.\d+)?)\.")


def quality_rows(run_dir: Path) -> tuple[list[str], list[list[float | str]]]:
    """(metric names, rows of [kimg, value per metric]) from the run's `metric-<name>.jsonl` files."""
    by_kimg: dict[float, dict[str, float]] = {}
    for path in sorted(run_dir.glob("metric-*.jsonl")):
        for record in read_jsonl(path):
            m = _SNAPSHOT_KIMG.search(str(record.get("snapshot_pkl") or ""))
            if m is None:
                continue
            for key, value in (record.get("results") or {}).items():
                by_kimg.setdefault(float(m[1]), {})[key] = float(value)
    names = sorted({k for values in by_kimg.values() for k in values})
    rows = [[kimg, *[values.get(n, "") for n in names]] for kimg, values in sorted(by_kimg.items())]
    return names, rows


def write_quality_csv(run_dir: Path) -> int:
    """`quality.csv`: kimg and every snapshot metric (empty cells where one was not measured)."""
    names, rows = quality_rows(run_dir)
    lines = [",".join(["kimg", *names])]
    lines += [",".join("" if v == "" else f"{float(v):.6g}" for v in row) for row in rows]
    write_text_atomic(run_dir / "quality.csv", "\n".join(lines) + "\n")
    return len(rows)


def render_curves(run_dir: Path) -> Path | None:
    """`curves.png` from `stats.jsonl` and the metric files; None when there is nothing to draw yet."""
    records = read_jsonl(run_dir / "stats.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    def series(name: str) -> tuple[list[float], list[float]]:
        pts = [(r["Progress/kimg"]["mean"], r[name]["mean"]) for r in records if name in r and "Progress/kimg" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    names, rows = quality_rows(run_dir)
    panels = [("losses", ["Loss/G/loss", "Loss/D/loss"]), ("regularizers", ["Loss/r1_penalty", "Loss/pl_penalty"]),
              ("augmentation", ["Progress/augment", "Loss/signs/real"])]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=80)
    for ax, (title, keys) in zip(axes, panels):
        drawn = 0
        for key in keys:
            x, y = series(key)
            if x:
                ax.plot(x, y, label=key)
                drawn += 1
        ax.set_title(title if drawn else f"{title}: not used")
        ax.set_xlabel("kimg")
        if drawn:
            ax.legend(fontsize=7)
    ax = axes[3]
    for i, name in enumerate(names):
        pts = [(row[0], row[i + 1]) for row in rows if row[i + 1] != ""]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_title("quality (snapshot metrics)" if names else "quality: no --metrics")
    ax.set_xlabel("kimg")
    if names:
        ax.legend(fontsize=7)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_bytes_atomic(run_dir / "curves.png", buf.getvalue())
