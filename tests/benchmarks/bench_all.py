"""Every side-by-side ratio of issue 26 in one run and one table (`make bench`): training, D forward+backward,
G inference, `prepare` and `serve` batching, ours against the official code on the same machine, same run.

    python tests/benchmarks/bench_all.py --official-repo PATH --write-docs     # ~30-40 min on 2 idle cores
    python tests/benchmarks/bench_all.py --official-repo PATH --quick          # ~10-15 min, fewer/shorter figures
    python tests/benchmarks/bench_all.py --official-repo PATH --only d,prepare # a subset, merged into --out
    python tests/benchmarks/bench_all.py --from-json reports/bench/all.json --write-docs   # re-render only
    python tests/benchmarks/bench_all.py --official-repo PATH --smoke --only d # plumbing check in seconds

Each step runs as its own subprocess (the same interpreter), writes its own JSON report to
`<out without .json>/<step>.json` (reports/bench/all/d.json, ...), and the merged results go to --out
(reports/bench/all.json; with --only, the steps not run keep their earlier results from that file). Then ONE
markdown table of ratios is printed on stdout (the steps' own progress goes to stderr); every row names the
target of issue 26 where it sets one and whether it is met. `--write-docs` puts the table, the date, the
machine and the command between `<!-- bench:begin -->` and `<!-- bench:end -->` in docs/benchmarks.md, and a
short form (ratio, target, met) between `<!-- bench:begin summary -->` and `<!-- bench:end -->` in README.md
(each file only where it has the markers). Run it on an idle machine only: the steps time things.

Steps, with the default settings (`--quick` in brackets) and their rough cost on 2 idle cores (estimated from
the per-iteration figures of issue 26, not measured as a whole):

- `train`: tests/benchmarks/train_vs_official.py --skip-gradients --precisions fp32,bf16: the official loop
  body in fp32 against ours in fp32 and bf16, blocks alternating. --speed-configs cifar@32,auto@64,auto@128
  (cifar@32,auto@64), --iters 2 --blocks 2 (--iters 1 --blocks 1). Batch as the cfg resolves it (cifar 64,
  auto 32). One warm-up iteration per side (every phase), then iters x blocks per side: with 2 x 2 the timed
  iterations are batch_idx 1-4, so Greg runs once in four as in a long run (Dreg, every 16th, does not); the
  --quick iteration runs Gmain and Dmain only, which flatters bf16 (the regularization phases stay fp32).
  ~25-30 min (~8 min), the bulk of the run. Needs --official-repo (skipped without it). Ratio: official
  sec/kimg over ours, median of the blocks.
- `d`: tests/benchmarks/bench_d.py, D forward+backward images/s, batch 8, cifar@32, auto@64, auto@128:
  official fp32, ours fp32, ours bf16 (the Dmain training precision); --rounds 3 --min-time 1.5 (--rounds 2
  --min-time 1). ~2 min (~1 min).
- `inference`: tests/benchmarks/bench_cpu_inference.py, G images/s: official fp32, ours fp32/bf16, onnxruntime
  fp32, OpenVINO fp32/bf16, --resolutions 64,128,256 (64,128) --batches 1,8, --rounds 2 --min-time 1.5
  --parity-n 16 (--rounds 1 --min-time 1 --parity-n 4). ~5 min (~2 min).
- `prepare`: tests/benchmarks/bench_prepare.py --sizes 2000 (2,000 synthetic photos -> 256 px), ours against
  the official dataset_tool.py, --repeat 2 (1), fastest kept, peak RSS of the largest process. ~1-2 min
  (~1 min).
- `serve`: tests/benchmarks/bench_serve_load.py, the demo-size generator behind `stages.export serve`,
  batched (5 ms window) against unbatched, --clients 1,16 --duration 10 --warmup 2, backends onnx and bf16
  (--clients 16 --duration 5 --warmup 1, onnx only). ~2-3 min (~1 min).

`--step-args STEP="ARGS"` sets flags of one step's command line, replacing the value a flag has there (e.g.
`--step-args train="--iters 3"`); the command each step ran is kept in the results. `--smoke` uses the tiniest
settings of every step (seconds each; the training step then only imports the official code and times nothing):
it checks this harness, its figures mean nothing, it writes under /tmp/bench_all_smoke/ and refuses --write-docs.

--official-repo defaults to $SG2_OFFICIAL_REPO, else .official/stylegan2-ada-pytorch in this checkout (as
`make gpu-check` finds it); without a checkout the official columns are left out (D and G inference then give
ratios against ours fp32, training is skipped). Exit status 1 when a step failed; unmet targets are reported,
not failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
STEPS = ("train", "d", "inference", "prepare", "serve")
DEFAULT_OUT = REPO_ROOT / "reports" / "bench" / "all.json"
SMOKE_OUT = Path("/tmp/bench_all_smoke/all.json")
DOCS = (REPO_ROOT / "docs" / "benchmarks.md", REPO_ROOT / "README.md")
OFFICIAL_ENV = "SG2_OFFICIAL_REPO"  # as tests/gpu/official.py
DEFAULT_OFFICIAL = REPO_ROOT / ".official" / "stylegan2-ada-pytorch"
BEGIN = re.compile(r"<!-- bench:begin(?: (\w+))? -->")
END = "<!-- bench:end -->"

# Targets of issue 26 (ours / official unless said otherwise).
TARGET_TRAIN = {"fp32": 1.5, "bf16": 2.5}
TARGET_D = {"fp32": 1.5, "bf16": 3.0}
TARGET_PREPARE_SPEEDUP, TARGET_PREPARE_RSS_MIB = 2.5, 100.0
TARGET_SERVE_BATCHING, SERVE_TARGET_CLIENTS = 1.5, 16

# Per step: (script, default args, --quick args, --smoke args). `{threads}` is filled in.
SETTINGS: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "train": ("train_vs_official.py",
              ["--skip-gradients", "--precisions", "fp32,bf16", "--speed-configs", "cifar@32,auto@64,auto@128",
               "--iters", "2", "--blocks", "2", "--threads", "{threads}"],
              ["--speed-configs", "cifar@32,auto@64", "--iters", "1", "--blocks", "1"],
              ["--skip-speed"]),
    "d": ("bench_d.py",
          ["--configs", "cifar@32,auto@64,auto@128", "--batch", "8", "--rounds", "3", "--min-time", "1.5",
           "--threads", "{threads}"],
          ["--rounds", "2", "--min-time", "1"],
          ["--configs", "auto@16,cifar@32", "--channel-div", "8", "--rounds", "1", "--min-time", "0.05"]),
    "inference": ("bench_cpu_inference.py",
                  ["--resolutions", "64,128,256", "--batches", "1,8", "--rounds", "2", "--min-time", "1.5",
                   "--parity-n", "16", "--threads", "{threads}"],
                  ["--resolutions", "64,128", "--rounds", "1", "--min-time", "1", "--parity-n", "4"],
                  ["--resolutions", "16", "--batches", "1,2", "--rounds", "1", "--min-time", "0.05",
                   "--parity-n", "2"]),
    "prepare": ("bench_prepare.py", ["--sizes", "2000", "--repeat", "2"], ["--repeat", "1"],
                ["--sizes", "20", "--variants", "4", "--repeat", "1"]),
    "serve": ("bench_serve_load.py",
              ["--clients", "1,16", "--duration", "10", "--warmup", "2", "--threads", "{threads}"],
              ["--clients", "16", "--duration", "5", "--warmup", "1", "--backends", "onnx"],
              ["--smoke", "--clients", "16", "--backends", "onnx"]),
}
# How each step hands back its report: "stdout" (the last JSON document it prints) or the flag given the path.
REPORT_FLAG = {"train": None, "d": "--json", "inference": "--json", "prepare": None, "serve": "--out"}
OFFICIAL_FLAG = {"train": True, "d": True, "inference": True, "prepare": True, "serve": False}


# ---------------------------------------------------------------------------------------------------------------
# Running the steps.


def find_official(path: str | None) -> Path | None:
    """--official-repo, else $SG2_OFFICIAL_REPO, else .official/stylegan2-ada-pytorch (tests/gpu/official.py)."""
    if path:
        if not (Path(path) / "training" / "networks.py").is_file():
            raise SystemExit(f"--official-repo {path}: not a stylegan2-ada-pytorch checkout (no training/networks.py)")
        return Path(path).resolve()
    for candidate in (os.environ.get(OFFICIAL_ENV), DEFAULT_OFFICIAL):
        if candidate and (Path(candidate) / "training" / "networks.py").is_file():
            return Path(candidate).resolve()
    return None


def step_command(step: str, args: argparse.Namespace, report_path: Path, official: Path | None) -> list[str]:
    script, default, quick, smoke = SETTINGS[step]
    argv = merge_flags(default, quick if args.quick else [], smoke if args.smoke else [],
                       shlex.split(args.step_args.get(step, "")))
    argv = [a.replace("{threads}", str(args.threads)) for a in argv]
    if official is not None and OFFICIAL_FLAG[step]:
        argv += ["--official-repo", str(official)]
    if REPORT_FLAG[step]:
        argv += [REPORT_FLAG[step], str(report_path)]
    return [sys.executable, str(HERE / script), *argv]


def merge_flags(*argvs: list[str]) -> list[str]:
    """`--flag [value]` lists merged, a later list's value replacing an earlier one's (in the earlier place)."""
    merged: dict[str, list[str]] = {}
    for argv in argvs:
        i = 0
        while i < len(argv):
            if not argv[i].startswith("--"):
                raise ValueError(f"expected a --flag, got {argv[i]!r} in {argv}")
            flag, value = argv[i].partition("=")[0], []
            if "=" in argv[i]:
                value = [argv[i].partition("=")[2]]
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = [argv[i + 1]], i + 1
            merged[flag] = value
            i += 1
    return [a for flag, value in merged.items() for a in (flag, *value)]


def last_json(text: str) -> Any:
    """The JSON document that ends the output (a step may print JSON lines or progress before its report)."""
    decoder, last = json.JSONDecoder(), None
    for m in re.finditer(r"^[{\[]", text, flags=re.M):
        try:
            value, end = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if not text[end:].strip():
            return value
        last = value
    if last is None:
        raise ValueError("no JSON document in the output")
    return last


def echo_progress(step: str, lines: Any) -> list[str]:
    """Pass a step's stdout to our stderr as it comes, leaving out JSON documents (they are its report)."""
    kept, in_json = [], False
    for line in lines:
        kept.append(line)
        if line.startswith(("{", "[")) and not line.rstrip().endswith(("}", "]")):
            in_json = True
        elif in_json:
            in_json = not line.startswith(("}", "]"))
        elif not line.startswith(("{", "[")):
            sys.stderr.write(f"   [{step}] {line}")
            sys.stderr.flush()
    return kept


def run_step(step: str, cmd: list[str], report_path: Path, timeout: float) -> dict[str, Any]:
    """Run one step (its stderr goes to ours, its stdout is read); the step's entry for the merged results."""
    print(f"== {step}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        output = "".join(echo_progress(step, proc.stdout))
        code = proc.wait()
    finally:
        timer.cancel()
    seconds = round(time.perf_counter() - start, 1)
    entry: dict[str, Any] = {"command": shlex.join(cmd), "seconds": seconds, "returncode": code,
                             "finished": now(), "loadavg_end": os.getloadavg()}
    try:
        if code != 0:
            raise RuntimeError(f"exit status {code}" + (f" (killed after {timeout:g} s)" if code == -9 else ""))
        if REPORT_FLAG[step] is None:
            report = last_json(output)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
        else:
            report = json.loads(report_path.read_text())
        entry["report"] = report
        entry["report_path"] = str(report_path)
    except (RuntimeError, ValueError, OSError) as exc:
        entry["error"] = f"{exc}; stdout ended with: {output[-1000:]}"
        print(f"== {step} FAILED: {exc} (its stderr is above)", file=sys.stderr, flush=True)
    print(f"== {step}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return entry


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    """CPU model, cores and the instruction-set features that matter for bf16 (from /proc/cpuinfo on Linux)."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "platform": platform.platform(), "python": platform.python_version()}
    try:
        usable = len(os.sched_getaffinity(0))
        if usable != info["cores"]:
            info["usable_cores"] = usable
    except AttributeError:
        pass
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor is enough
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        info["cpu"] = fields.get("model name", info["cpu"])
        if "cpu family" in fields:
            info["family_model"] = f"family {fields['cpu family']} model {fields.get('model', '?')}"
        flags = set(fields.get("flags", "").split())
        info["features"] = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                                                    ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"))
                            if flag in flags]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def describe_machine(m: dict[str, Any]) -> str:
    parts = [m.get("cpu", "?") + (f" ({m['family_model']})" if m.get("family_model") else ""),
             f"{m.get('usable_cores', m.get('cores'))} cores"]
    if m.get("features"):
        parts.append(", ".join(m["features"]))
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The table.


def x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}x"


def met(value: float | None, ok: bool | None) -> str:
    if value is None or ok is None:
        return "—"
    return "yes" if ok else "**no**"


def row(benchmark: str, ratio: str, figures: str, target: str = "—", ok: bool | None = None,
        value: float | None = None, summary: bool = True) -> dict[str, Any]:
    return {"benchmark": benchmark, "ratio": ratio, "figures": figures, "target": target,
            "met": met(value, ok) if target != "—" else "—", "summary": summary}


def train_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, spec in report.items():
        m = re.fullmatch(r"speed (\w+)@(\d+)px", key)
        if not m or not isinstance(spec, dict):
            continue
        cfg, res = m.group(1), m.group(2)
        spk = spec.get("sec_per_kimg", {})
        official = statistics.median(spk["official"]) if spk.get("official") else None
        for side, precision in (("ours", "fp32"), ("ours_bf16", "bf16")):
            speedup = spec.get(f"speedup_median {side}")
            if speedup is None:
                continue
            ours = statistics.median(spk[side]) if spk.get(side) else None
            figures = f"{ours:.0f} vs {official:.0f} sec/kimg, " if ours and official else ""
            figures += (f"batch {spec.get('batch')}, median of {len(spk.get(side, []))} block(s) of "
                        f"{spec.get('iters_per_block')} iteration(s)")
            target = TARGET_TRAIN[precision]
            rows.append(row(f"training {cfg} {res} px, {precision}", x(speedup), figures,
                            f"≥ {target}x", speedup >= target, speedup))
    return rows


def d_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for case in report.get("cases", {}).values():
        rates, base = case["img_s"], case["baseline"]
        parity = case.get("parity_fp32_vs_official")
        for variant, precision in (("ours_fp32", "fp32"), ("ours_bf16", "bf16")):
            speedup = case["speedup"].get(variant)
            label = f"D fwd+bwd {case['cfg']} {case['resolution']} px, {precision}"
            if base != "official_fp32":
                if variant == base:
                    continue
                rows.append(row(label + " (vs ours fp32: no official checkout)", x(speedup),
                                f"{rates[variant]:.1f} vs {rates[base]:.1f} img/s, batch {case['batch']}"))
                continue
            figures = f"{rates[variant]:.1f} vs {rates[base]:.1f} img/s, batch {case['batch']}"
            if precision == "fp32" and parity:
                worst = max(parity["logits_max_abs"], parity["dimg_max_abs"], parity["param_grad_max_abs"])
                figures += f"; fp32 parity (logits, dD/dimg, grads) max abs {worst:.2g}"
            if precision == "bf16":
                figures += f"; grads {case['bf16_vs_ours_fp32']['param_grad_rel_l2']:.2g} rel. L2 from fp32"
            target = TARGET_D[precision]
            rows.append(row(label, x(speedup), figures, f"≥ {target}x", speedup >= target, speedup))
    return rows


INFERENCE_COLUMNS = (("ours_fp32", "ours fp32"), ("ours_bf16", "ours bf16"), ("onnxruntime_fp32", "onnxruntime"),
                     ("openvino_fp32", "OpenVINO fp32"), ("openvino_bf16", "OpenVINO bf16"))


def inference_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    cases = report.get("cases", [])
    summary_res = 128 if any(c["resolution"] == 128 for c in cases) else max((c["resolution"] for c in cases),
                                                                            default=0)
    for case in cases:
        base = case["baseline"]
        for key in (k for k in case if re.fullmatch(r"batch\d+", k)):
            rates, batch = case[key]["img_s"], int(key.removeprefix("batch"))
            cells = [f"{name} {rates[col] / rates[base]:.2f}x" for col, name in INFERENCE_COLUMNS
                     if col in rates and col != base]
            vs = "official fp32" if base == "official_fp32" else "ours fp32 (no official checkout)"
            rows.append(row(f"G inference {case['resolution']} px, batch {batch}", " · ".join(cells),
                            f"vs {vs} {rates[base]:.2f} img/s", summary=case["resolution"] == summary_res
                            and batch == 8))
    return rows


def prepare_rows(report: dict[str, Any], out_res: int = 256) -> list[dict[str, Any]]:
    rows = []
    for r in report.get("results", []):
        ours, off = r["ours"], r.get("official")
        rss = ours["peak_rss_mib"]
        mem = f"peak RSS {rss:.0f} MiB (process tree {ours['peak_tree_rss_mib']:.0f} MiB)"
        if off is None:
            rows.append(row(f"prepare {r['images']:,} photos → {out_res} px (no official checkout)", "—",
                            f"{ours['seconds']:.1f} s; {mem}", f"RSS < {TARGET_PREPARE_RSS_MIB:.0f} MiB",
                            rss < TARGET_PREPARE_RSS_MIB, rss))
            continue
        speedup = r["speedup"]
        ok = speedup >= TARGET_PREPARE_SPEEDUP and rss < TARGET_PREPARE_RSS_MIB
        rows.append(row(f"prepare {r['images']:,} photos → {out_res} px", x(speedup),
                        f"{ours['seconds']:.1f} vs {off['seconds']:.1f} s; {mem}",
                        f"≥ {TARGET_PREPARE_SPEEDUP}x and RSS < {TARGET_PREPARE_RSS_MIB:.0f} MiB", ok, speedup))
    return rows


SERVE_BACKENDS = {"onnx": "onnxruntime fp32", "bf16": "eager bf16"}


def serve_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    by = {(r["backend"], r["mode"], r["clients"]): r for r in report.get("rows", [])}
    most = max((r["clients"] for r in report.get("rows", [])), default=0)
    for backend in dict.fromkeys(r["backend"] for r in report.get("rows", [])):
        u, b = by.get((backend, "unbatched", most)), by.get((backend, "batched", most))
        if u is None or b is None:
            continue
        ratio = b["images_per_s"] / u["images_per_s"] if u["images_per_s"] else None
        errors = u["errors"] + b["errors"]
        figures = (f"{b['images_per_s']:.1f} vs {u['images_per_s']:.1f} img/s; p99 {b['p99_ms']} vs {u['p99_ms']} ms;"
                   f" mean batch {b.get('mean_batch')}" + (f"; {errors} errors" if errors else ""))
        label = f"serve {most} clients, {SERVE_BACKENDS.get(backend, backend)}: batched / unbatched"
        if most == SERVE_TARGET_CLIENTS:
            rows.append(row(label, x(ratio), figures, f"≥ {TARGET_SERVE_BATCHING}x",
                            ratio is not None and ratio >= TARGET_SERVE_BATCHING and not errors, ratio))
        else:
            rows.append(row(label, x(ratio), figures))
    return rows


ROWS = {"train": train_rows, "d": d_rows, "inference": inference_rows, "prepare": prepare_rows, "serve": serve_rows}


def table_rows(results: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of every step that has a report, and a note per step that has none (failed, skipped, not run)."""
    rows, notes = [], []
    steps = results.get("steps", {})
    for step in STEPS:
        entry = steps.get(step)
        if entry is None:
            notes.append(f"{step}: not run")
        elif "report" in entry:
            try:
                got = ROWS[step](entry["report"])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                got, entry = [], {**entry, "error": f"report not understood ({type(exc).__name__}: {exc})"}
                notes.append(f"{step}: {entry['error']}")
            if not got and "error" not in entry:
                notes.append(f"{step}: no figures in its report")
            rows += got
        elif "skipped" in entry:
            notes.append(f"{step}: skipped ({entry['skipped']})")
        else:
            notes.append(f"{step}: failed ({entry.get('error', '?').splitlines()[0][:200]})")
    return rows, notes


def markdown(rows: list[dict[str, Any]], summary: bool = False) -> str:
    cols = (("benchmark", "benchmark"), ("ratio", "ratio"), ("target", "target (issue 26)"), ("met", "met"))
    if not summary:
        cols = (*cols[:2], ("figures", "ours vs baseline"), *cols[2:])
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        if summary and not r["summary"]:
            continue
        lines.append("| " + " | ".join(str(r[k]).replace("|", "\\|") for k, _ in cols) + " |")
    return "\n".join(lines)


def provenance(results: dict[str, Any], short: bool = False) -> str:
    meta = results.get("meta", {})
    dates = sorted({e["finished"][:10] for e in results.get("steps", {}).values() if e.get("finished")})
    when = dates[0] if len(dates) == 1 else (f"{dates[0]} to {dates[-1]}" if dates else meta.get("date", "?")[:10])
    if short:
        return f"Measured {when} on {describe_machine(meta.get('machine', {}))} by `make bench`" + \
            (" (--quick)." if meta.get("quick") else ".")
    load = meta.get("loadavg_start")
    load_text = f", load average {load[0]:.2f} at the start" if load else ""
    text = (f"Measured {when} on {describe_machine(meta.get('machine', {}))}{load_text}"
            + (" (**--quick settings**)" if meta.get("quick") else "")
            + (" (**--smoke settings: meaningless figures**)" if meta.get("smoke") else "")
            + f": `{meta.get('command', '?')}`.")
    runs: dict[str, list[str]] = {}
    for step, entry in results.get("steps", {}).items():
        runs.setdefault(entry.get("run_by", meta.get("command", "?")), []).append(step)
    earlier = {cmd: steps for cmd, steps in runs.items() if cmd != meta.get("command")}
    for cmd, steps in earlier.items():
        text += f" Kept from an earlier run, {', '.join(steps)}: `{cmd}`."
    return text


def render(results: dict[str, Any], style: str = "full") -> str:
    rows, notes = table_rows(results)
    head = ("Ratios are ours over the official code's speed (higher is faster), measured side by side in the same "
            "run on the same machine, unless the row says otherwise.")
    parts = [provenance(results, short=style == "summary"), "", head, "", markdown(rows, summary=style == "summary")]
    if notes:
        parts += ["", "Not in this table: " + "; ".join(notes) + "."]
    if style == "summary":
        parts += ["", "Figures and settings: [docs/benchmarks.md](docs/benchmarks.md)."]
    return "\n".join(parts)


def replace_sections(text: str, results: dict[str, Any]) -> tuple[str, int]:
    """Replace every `<!-- bench:begin [style] -->` ... `<!-- bench:end -->` section; (new text, sections)."""
    out, pos, count = [], 0, 0
    while (m := BEGIN.search(text, pos)) is not None:
        end = text.find(END, m.end())
        if end < 0:
            raise ValueError(f"{m.group(0)} at offset {m.start()} has no {END}")
        style = m.group(1) or "full"
        if style not in ("full", "summary"):
            raise ValueError(f"unknown bench section style {style!r} (full or summary)")
        note = "<!-- generated by tests/benchmarks/bench_all.py --write-docs from its JSON; edits are overwritten -->"
        out += [text[pos:m.end()], "\n", note, "\n", render(results, style), "\n", END]
        pos, count = end + len(END), count + 1
    out.append(text[pos:])
    return "".join(out), count


def write_docs(results: dict[str, Any], paths: list[Path]) -> None:
    for path in paths:
        if not path.is_file():
            print(f"{path}: missing, not written", file=sys.stderr)
            continue
        new, count = replace_sections(path.read_text(encoding="utf-8"), results)
        if not count:
            print(f"{path}: no <!-- bench:begin --> section, not written", file=sys.stderr)
            continue
        path.write_text(new, encoding="utf-8")
        print(f"wrote {count} section(s) of {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------


def parse_step_args(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        step, sep, rest = v.partition("=")
        if not sep or step not in STEPS:
            raise SystemExit(f"--step-args {v!r}: expected STEP=\"ARGS\" with STEP one of {', '.join(STEPS)}")
        out[step] = (out.get(step, "") + " " + rest).strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-repo", help="checkout of NVlabs/stylegan2-ada-pytorch (default: $SG2_OFFICIAL_REPO, "
                    "else .official/stylegan2-ada-pytorch); needed for every official column")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma list of steps to run: {', '.join(STEPS)}")
    ap.add_argument("--quick", action="store_true", help="smaller settings (~10-15 min instead of ~30-40)")
    ap.add_argument("--smoke", action="store_true", help="tiniest settings: checks the harness, figures meaningless")
    ap.add_argument("--threads", type=int, default=2, help="torch/onnxruntime/OpenVINO threads of every step")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"merged results (default {DEFAULT_OUT.relative_to(REPO_ROOT)}; with --smoke {SMOKE_OUT})")
    ap.add_argument("--from-json", type=Path, help="render the table from these saved results; run nothing")
    ap.add_argument("--write-docs", action="store_true", help="regenerate the bench sections of docs/benchmarks.md "
                    "and README.md")
    ap.add_argument("--docs", type=Path, nargs="+", default=list(DOCS),
                    help="files whose bench sections --write-docs regenerates (default docs/benchmarks.md README.md)")
    ap.add_argument("--step-args", action="append", default=[], metavar='STEP="ARGS"',
                    help="flags for one step's script, replacing the values it is given here (repeatable)")
    ap.add_argument("--step-timeout", type=float, default=3600, help="seconds before a step is killed")
    args = ap.parse_args()
    args.step_args = parse_step_args(args.step_args)

    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(only) - set(STEPS))
        if unknown:
            ap.error(f"--only: unknown step(s) {unknown}; steps: {', '.join(STEPS)}")
        out = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
        official = find_official(args.official_repo)
        if official is None:
            print("no official checkout (--official-repo, $SG2_OFFICIAL_REPO, .official/stylegan2-ada-pytorch): "
                  "the official columns are left out", file=sys.stderr)
        previous: dict[str, Any] = {}
        kept: list[str] = []
        if set(only) != set(STEPS) and out.is_file():
            previous = json.loads(out.read_text()).get("steps", {})
            kept = [s for s in STEPS if s in previous and s not in only]
            if kept:
                print(f"keeping the earlier results of {', '.join(kept)} from {out}", file=sys.stderr)
        results = {"meta": {"date": now(), "machine": machine(), "quick": args.quick, "smoke": args.smoke,
                            "official_repo": str(official) if official else None, "threads": args.threads,
                            "loadavg_start": os.getloadavg(),
                            "command": shlex.join(["python", "tests/benchmarks/bench_all.py", *sys.argv[1:]])},
                   "steps": {k: v for k, v in previous.items() if k not in only}}
        report_dir = out.with_suffix("")
        for step in (s for s in STEPS if s in only):
            if step == "train" and official is None:
                results["steps"][step] = {"skipped": "needs --official-repo", "finished": now()}
            else:
                cmd = step_command(step, args, report_dir / f"{step}.json", official)
                results["steps"][step] = run_step(step, cmd, report_dir / f"{step}.json", args.step_timeout)
            results["steps"][step]["run_by"] = results["meta"]["command"]  # steps kept by --only name their run
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")  # after every step: a crash keeps what ran
        results["meta"]["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)

    print(render(results))
    if args.write_docs:
        if results.get("meta", {}).get("smoke"):
            print("--write-docs refused: these are --smoke results (meaningless figures)", file=sys.stderr)
            return 1
        write_docs(results, args.docs)
    failed = [s for s, e in results.get("steps", {}).items() if "error" in e]
    return 1 if failed and not args.from_json else 0


if __name__ == "__main__":
    sys.exit(main())
