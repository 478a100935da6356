"""Benchmark `stages.prepare` on synthetic JPEGs: throughput, and peak memory against dataset size.

    python tests/benchmarks/bench_prepare.py --sizes 1000,5000 [--official-repo /path/to/stylegan2-ada-pytorch]

Each run is a fresh subprocess. Peak memory is sampled from /proc as the summed RSS of the whole
process tree (main + workers), sampled every 50 ms. With
``--official-repo`` the official ``dataset_tool.py`` is timed on the same files with the same flags
(it needs click, numpy, Pillow and tqdm in ``--official-python``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parents[2]


def make_jpegs(folder: Path, n: int, width: int, height: int, variants: int = 32) -> None:
    """n JPEGs with photo-like structure; a few distinct encodings are reused (decode cost is what matters)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    y, x = np.mgrid[0:height, 0:width]
    for v in range(variants):
        rs = np.random.RandomState(v)
        chans = [
            np.sin(x / (7 + v + k) + v) * np.cos(y / (11 + k)) * 90 + 128 + rs.normal(0, 12, (height, width))
            for k in range(3)
        ]
        buf = io.BytesIO()
        PIL.Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)).save(buf, "jpeg", quality=90)
        encoded.append(buf.getvalue())
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"photo{i:06d}.jpg").write_bytes(encoded[i % variants])


def _tree_rss_kib(root: int) -> int:
    """Summed VmRSS of `root` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid, ppid = int(entry), int(fields["PPid"].strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed_run(cmd: list[str], cwd: Path) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {err[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_tree_rss_mib": round(peak / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000", help="comma-separated image counts")
    p.add_argument("--src-width", type=int, default=512)
    p.add_argument("--src-height", type=int, default=384)
    p.add_argument("--out-res", type=int, default=256, help="center-crop output resolution")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--official-repo", default=None, help="checkout with dataset_tool.py to time side by side")
    p.add_argument("--official-python", default=sys.executable)
    p.add_argument("--official-max", type=int, default=2000, help="time the official tool only up to this size")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    flags = ["--transform", "center-crop", "--width", str(args.out_res), "--height", str(args.out_res)]
    rows = []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            src = work / f"jpegs_{n}"
            make_jpegs(src, n, args.src_width, args.src_height)
            ours_cmd = [sys.executable, "-m", "stages.prepare", "--params", os.devnull, "--no-progress"]
            ours_cmd += ["--source", str(src), "--dest", str(work / f"ours_{n}.zip"), "--workers", str(args.workers)]
            row = {"images": n, "ours": timed_run(ours_cmd + flags, REPO)}
            row["ours"]["images_per_second"] = round(n / row["ours"]["seconds"], 1)
            if args.official_repo and n <= args.official_max:
                tool = str(Path(args.official_repo) / "dataset_tool.py")
                off_cmd = [args.official_python, tool, "--source", str(src), "--dest", str(work / f"off_{n}.zip")]
                row["official"] = timed_run(off_cmd + flags, work)
                row["official"]["images_per_second"] = round(n / row["official"]["seconds"], 1)
                row["speedup"] = round(row["official"]["seconds"] / row["ours"]["seconds"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(src)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
