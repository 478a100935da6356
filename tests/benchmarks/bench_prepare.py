"""Benchmark `stages.prepare` on synthetic photos: wall time and peak memory, beside the official tool.

    python tests/benchmarks/bench_prepare.py --sizes 2000 [--official-repo /path/to/stylegan2-ada-pytorch]
    python tests/benchmarks/bench_prepare.py --sizes 2000 --repo /tmp/old-checkout   # another commit's prepare

The inputs are seeded photo-like JPEGs (a smooth random colour field plus pixel noise, quality 90) of several
sizes between 420 and 1000 px, all center-cropped to `--out-res` (256). Every run is a fresh subprocess, timed
with its workers, and two memory figures are reported:

- `peak_rss_mib`: the largest peak RSS of any one process of the run (the command and the workers it reaped),
  from the rusage of `wait4` (`ru_maxrss`, as `/usr/bin/time -v` reports it). Valid on a busy machine too.
  The command is started by a tiny launcher (`python -I -S`, ~10 MB): Linux carries the RSS high-water
  mark of the process that exec()s into the new program's `ru_maxrss`, so spawning straight from this
  script would report at least this script's own peak (numpy, Pillow and the generated photos).
- `peak_tree_rss_mib`: the summed RSS of the command's process tree (the launcher left out), sampled from
  /proc every 50 ms (pages that forked workers share with the parent are counted once per process).

With `--official-repo` the official `dataset_tool.py` runs on the same files with the same flags (it needs
click, numpy, Pillow and tqdm in `--official-python`), alternating with ours `--repeat` times; `speedup` is
the official time over ours, best of the repeats. Timings only mean something on an idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
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
# (width, height) of the inputs, used in turn: landscape, portrait and square photos of 420-1000 px.
PHOTO_SIZES = ((640, 480), (1000, 750), (512, 512), (480, 640), (800, 600), (960, 720), (420, 560), (768, 768))


def photo(seed: int, width: int, height: int) -> PIL.Image.Image:
    """A photo-like RGB image: a smooth random field (low-resolution noise upsampled bicubically) plus noise."""
    rs = np.random.RandomState(seed)
    coarse = rs.uniform(0, 255, (rs.randint(3, 9), rs.randint(3, 9), 3)).astype(np.uint8)
    field = np.asarray(PIL.Image.fromarray(coarse, "RGB").resize((width, height), PIL.Image.Resampling.BICUBIC))
    pixels = field.astype(np.float32) + rs.normal(0, 10, (height, width, 3)).astype(np.float32)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_jpegs(folder: Path, n: int, variants: int = 128, seed: int = 0) -> None:
    """n JPEGs in folders of 1000; `variants` distinct images (seeded) are reused in turn, since the cost that
    matters is decoding, which does not depend on whether two files hold the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for v in range(min(variants, n)):
        width, height = PHOTO_SIZES[v % len(PHOTO_SIZES)]
        path = folder / f".variant{v}.jpg"
        photo(seed * 1_000_003 + v, width, height).save(path, "jpeg", quality=90)
        encoded.append(path.read_bytes())
        path.unlink()
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"photo{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])


# Runs the command given after the result path and writes the rusage of its process tree there as JSON.
_LAUNCHER = (
    "import json, os, sys\n"
    "pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "with open(sys.argv[1], 'w') as fh:\n"
    "    json.dump({'code': code, 'maxrss_kib': ru.ru_maxrss, 'cpu': ru.ru_utime + ru.ru_stime}, fh)\n"
    "sys.exit(min(abs(code), 255))\n"
)


def _tree_rss_kib(root: int) -> int:
    """Summed VmRSS of the descendants of `root` (Linux /proc); `root` itself is the launcher, left out."""
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
    total, stack = -rss.get(root, 0), [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run `cmd` once: wall seconds, peak RSS of its largest process (wait4's ru_maxrss), peak tree RSS."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage.json"
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), *cmd]
        start = time.perf_counter()
        proc = subprocess.Popen(launcher, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        tree_peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal tree_peak
            while not done.is_set():
                tree_peak = max(tree_peak, _tree_rss_kib(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.wait()
            seconds = time.perf_counter() - start
        finally:
            done.set()
            sampler.join()
        if proc.returncode != 0 or not result.is_file():
            err.seek(0)
            raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {err.read()[-2000:].decode(errors='replace')}")
        usage = json.loads(result.read_text())
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1),
        "peak_tree_rss_mib": round(tree_peak / 1024, 1),
        "cpu_seconds": round(usage["cpu"], 2),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def best(runs: list[dict[str, float]], n: int) -> dict[str, float]:
    """The fastest run's time beside the largest memory figures of all runs."""
    out = {
        "seconds": min(r["seconds"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_tree_rss_mib": max(r["peak_tree_rss_mib"] for r in runs),
        "cpu_seconds": min(r["cpu_seconds"] for r in runs),
        "runs": len(runs),
    }
    out["images_per_second"] = round(n / max(out["seconds"], 1e-9), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000", help="comma-separated image counts")
    p.add_argument("--out-res", type=int, default=256, help="center-crop output resolution")
    p.add_argument("--variants", type=int, default=128, help="distinct seeded photos, reused in turn")
    p.add_argument("--workers", type=int, default=0, help="our --workers (0 = all cores)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each tool, alternating; the fastest is reported")
    p.add_argument("--repo", default=str(REPO), help="checkout whose `python -m stages.prepare` is measured")
    p.add_argument("--python", default=sys.executable, help="interpreter for our prepare")
    p.add_argument("--official-repo", default=None, help="checkout with dataset_tool.py to time side by side")
    p.add_argument("--official-python", default=sys.executable)
    p.add_argument("--official-max", type=int, default=2000, help="time the official tool only up to this size")
    p.add_argument("--workdir", default=None, help="keep inputs and outputs here (default: a temp dir, removed)")
    args = p.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    work.mkdir(parents=True, exist_ok=True)
    flags = ["--transform", "center-crop", "--width", str(args.out_res), "--height", str(args.out_res)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"))
    rows = []
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            src = work / f"jpegs_{n}"
            if not src.is_dir():
                make_jpegs(src, n, args.variants)
            ours_zip = work / f"ours_{n}.zip"
            ours_cmd = [args.python, "-m", "stages.prepare", "--params", os.devnull, "--no-progress",
                        "--source", str(src), "--dest", str(ours_zip), "--workers", str(args.workers), *flags]
            official = args.official_repo is not None and n <= args.official_max
            off_cmd = [args.official_python, str(Path(args.official_repo or ".") / "dataset_tool.py"),
                       "--source", str(src), "--dest", str(work / f"off_{n}.zip"), *flags]
            ours_runs, off_runs = [], []
            for _ in range(args.repeat):
                ours_runs.append(timed_run(ours_cmd, Path(args.repo), env))
                if official:
                    (work / f"off_{n}.zip").unlink(missing_ok=True)  # the official tool refuses nothing; be sure
                    off_runs.append(timed_run(off_cmd, work, env))
            row: dict[str, object] = {"images": n, "repo": args.repo, "ours": best(ours_runs, n),
                                      "ours_zip_sha256": sha256(ours_zip)}
            if official:
                row["official"] = best(off_runs, n)
                row["speedup"] = round(row["official"]["seconds"] / row["ours"]["seconds"], 2)  # type: ignore[index]
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.workdir:
                shutil.rmtree(src)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
