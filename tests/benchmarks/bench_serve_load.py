"""Load on `python -m stages.export serve`: 1, 4 and 16 concurrent clients, ONNX fp32 and bf16 eager, with and
without dynamic batching. Loopback only, bounded in requests and time; run it on an idle machine.

    python tests/benchmarks/bench_serve_load.py                         # demo-size generator, ~4 min
    python tests/benchmarks/bench_serve_load.py --network runs/demo     # a trained snapshot / run folder
    python tests/benchmarks/bench_serve_load.py --smoke                 # tiny and short: checks the harness

For each backend (`onnx`: generator_uint8.onnx exported here, fp32 through onnxruntime; `bf16`: the snapshot in
PyTorch with bf16 synthesis blocks) and each mode (`unbatched`: --batch-window-ms 0, every request runs the
model on its own handler thread, as the server did before batching; `batched`: requests within the window share
one run of at most --max-batch images), one server process is started on 127.0.0.1 and warmed up, then each
client count runs for --duration seconds (or --max-requests requests, whichever ends first). A client is a
thread with one keep-alive connection sending GET /png?seed=..&psi=..&class=.. back to back (closed loop).

Per row: images/s (200 answers over the wall time), p50/p99 latency, errors (non-200 or no answer), mean batch
(the server's /stats), and the server's RSS (VmRSS of its process) after warm-up and after the last client count.
Prints a table; writes everything to --out (reports/bench/serve_load.json).

The server runs with the machine's default thread pools (onnxruntime, torch), unless --threads N; the clients
share the machine with it, equally for both modes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

MODES = {"unbatched": 0.0}  # the batched mode's window comes from --window-ms


def serve_child(args: argparse.Namespace) -> None:
    """The server process: stages.export.serve with explicit batching options; prints its port, then serves."""
    from stages.export.config import ServeConfig
    from stages.export.serve import make_server
    from stages.serving.batching import BatchOptions

    cfg = ServeConfig(model=args.model, port=0, precision=args.precision, max_batch=args.max_batch)
    srv = make_server(cfg, BatchOptions(window_ms=args.window, max_queue=args.max_queue,
                                        max_connections=args.max_connections))
    print(f"PORT {srv.server_address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown, daemon=True).start())
    try:
        srv.serve_forever(poll_interval=0.05)
    finally:
        srv.server_close()


# ---------------------------------------------------------------------------------------------
# network and export


def demo_generator(res: int, channel_max: int, c_dim: int, channels: int) -> Any:
    """The demo's `tiny` preset shape (channel_base 2048, z/w 64, 2 mapping layers, no fp16), random weights."""
    import torch

    from models import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=c_dim, w_dim=64, img_resolution=res, img_channels=channels,
                  mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 2048, "channel_max": channel_max, "num_fp16_res": 0})
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A snapshot (given, or the demo-size generator saved) and its uint8 ONNX graph."""
    from models import load_generator, save_snapshot
    from models.serialization.loading import resolve_network_path
    from stages.export import onnx_export as ox

    if args.network:
        snapshot = Path(resolve_network_path(args.network))
        G = load_generator(snapshot)
    else:
        G = demo_generator(args.res, args.channel_max, args.c_dim, args.channels)
        snapshot = save_snapshot(workdir / "generator.safetensors", {"G_ema": G})
    onnx_path = workdir / "generator_uint8.onnx"
    ox.save_model(ox.add_uint8_output(ox.export_generator(G, opset=18)), onnx_path)
    return {"snapshot": snapshot, "onnx": onnx_path, "c_dim": int(G.c_dim), "resolution": int(G.img_resolution),
            "channels": int(G.img_channels), "params": int(sum(p.numel() for p in G.parameters()))}


# ---------------------------------------------------------------------------------------------
# server process and clients


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, model: Path, precision: str, window: float, args: argparse.Namespace) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--serve-child", "--model", str(model), "--precision", precision,
               "--window", str(window), "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
               "--max-connections", str(args.max_connections)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=REPO_ROOT)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.port = int(line.split()[1])

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/stats")
        out = json.loads(conn.getresponse().read())
        conn.close()
        return out

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def run_clients(port: int, clients: int, duration: float, max_requests: int, c_dim: int, seed0: int
                ) -> dict[str, Any]:
    """Closed-loop clients for `duration` s or `max_requests` requests in all; latencies and errors."""
    latencies: list[float] = []
    errors = [0]
    sent = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rng = np.random.RandomState(seed0 + k)
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            query = f"/png?seed={rng.randint(2**31)}&psi={rng.choice([1.0, 0.7])}"
            if c_dim:
                query += f"&class={rng.randint(c_dim)}"
            start = time.perf_counter()
            try:
                conn.request("GET", query)
                reply = conn.getresponse()
                reply.read()
                ok = reply.status == 200
                if reply.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)
    wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies) + errors[0], "images": len(latencies),
            "errors": errors[0], "wall_s": round(wall, 3), "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None}


def bench_server(name: str, model: Path, precision: str, mode: str, window: float, info: dict[str, Any],
                 args: argparse.Namespace) -> list[dict[str, Any]]:
    server = Server(model, precision, window, args)
    rows = []
    try:
        run_clients(server.port, max(args.clients), args.warmup, 10 * args.max_batch, info["c_dim"], 10_000)
        before = server.rss()
        stats0 = server.stats()
        for n in args.clients:
            row = run_clients(server.port, n, args.duration, args.max_requests, info["c_dim"], 1000 * n)
            stats = server.stats()
            batches = stats["batches"] - stats0["batches"]
            row["mean_batch"] = round((stats["images"] - stats0["images"]) / batches, 2) if batches else None
            row["rss_mb"] = round(server.rss(), 1)
            stats0 = stats
            row.update(backend=name, mode=mode, window_ms=window)
            rows.append(row)
            print(f"  {name:5s} {mode:9s} {n:3d} clients: {row['images_per_s']:9.1f} img/s  p50 {row['p50_ms']} ms  "
                  f"p99 {row['p99_ms']} ms  errors {row['errors']}  batch {row['mean_batch']}", flush=True)
        after = server.rss()
        for row in rows:
            row.update(rss_before_mb=round(before, 1), rss_after_mb=round(after, 1),
                       rss_growth=round(after / before - 1, 4))
    finally:
        server.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'backend':8s} {'clients':>7s} | {'unbatched img/s':>15s} {'p50':>8s} {'p99':>8s} {'err':>4s} | "
            f"{'batched img/s':>13s} {'p50':>8s} {'p99':>8s} {'err':>4s} {'batch':>5s} | {'speedup':>7s} | "
            f"{'RSS MB before -> after (unbatched; batched)':s}")
    lines = [head, "-" * len(head)]
    by = {(r["backend"], r["mode"], r["clients"]): r for r in rows}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for n in dict.fromkeys(r["clients"] for r in rows):
            u, b = by.get((backend, "unbatched", n)), by.get((backend, "batched", n))
            if u is None or b is None:
                continue
            speed = b["images_per_s"] / u["images_per_s"] if u["images_per_s"] else float("nan")
            lines.append(
                f"{backend:8s} {n:7d} | {u['images_per_s']:15.1f} {u['p50_ms']!s:>8s} {u['p99_ms']!s:>8s} "
                f"{u['errors']:4d} | {b['images_per_s']:13.1f} {b['p50_ms']!s:>8s} {b['p99_ms']!s:>8s} "
                f"{b['errors']:4d} {b['mean_batch']!s:>5s} | {speed:6.2f}x | "
                f"{u['rss_before_mb']} -> {u['rss_after_mb']}; {b['rss_before_mb']} -> {b['rss_after_mb']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default=None, help="snapshot or run folder (default: a demo-size random generator)")
    p.add_argument("--res", type=int, default=32, help="demo generator: resolution")
    p.add_argument("--channel-max", type=int, default=64, help="demo generator: channels at every resolution")
    p.add_argument("--c-dim", type=int, default=10, help="demo generator: classes (the digits demo: 10)")
    p.add_argument("--channels", type=int, default=1, help="demo generator: image channels (the digits: 1)")
    p.add_argument("--backends", default="onnx,bf16", help="onnx (fp32, onnxruntime) and/or bf16 (PyTorch eager)")
    p.add_argument("--clients", default="1,4,16", help="concurrent client counts")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per client count")
    p.add_argument("--max-requests", type=int, default=20000, help="requests per client count at most")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server")
    p.add_argument("--window-ms", type=float, default=5.0, help="batched mode: the batch window")
    p.add_argument("--max-batch", type=int, default=16, help="images per run at most (and per request)")
    p.add_argument("--max-queue", type=int, default=256, help="images queued at most (more: 503)")
    p.add_argument("--max-connections", type=int, default=64, help="open connections at most (more: 503)")
    p.add_argument("--threads", type=int, default=0, help="server thread pools (0 = the libraries' default)")
    p.add_argument("--out", default=str(REPO_ROOT / "reports" / "bench" / "serve_load.json"))
    p.add_argument("--smoke", action="store_true", help="tiny network, 1 s per level: checks the harness only")
    # the server process
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--window", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_child:
        serve_child(args)
        return
    args.clients = [int(c) for c in str(args.clients).split(",")]
    if args.smoke:
        args.res, args.channel_max, args.duration, args.warmup, args.max_requests = 16, 16, 1.0, 0.5, 400
    if args.duration > 120 or args.max_requests > 1_000_000:
        p.error("--duration at most 120 s and --max-requests at most 1000000 per level")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"onnx", "bf16"}:
        p.error("--backends: onnx and/or bf16")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        info = prepare(args, Path(tmp))
        print(f"network: {info['resolution']} px, {info['channels']} channels, c_dim {info['c_dim']}, "
              f"{info['params'] / 1e6:.2f} M parameters; clients {args.clients}, {args.duration:g} s per level; "
              f"batched window {args.window_ms:g} ms, max batch {args.max_batch}", flush=True)
        rows: list[dict[str, Any]] = []
        for backend in backends:
            model, precision = (info["onnx"], "fp32") if backend == "onnx" else (info["snapshot"], "bf16")
            for mode, window in {**MODES, "batched": args.window_ms}.items():
                rows += bench_server(backend, model, precision, mode, window, info, args)
    report = {
        "rows": rows,
        "network": {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items() if k not in ("onnx",)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("serve_child", "model", "precision", "window")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg": os.getloadavg()},
    }
    try:
        import onnxruntime
        import torch

        report["machine"].update(torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                                 torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
