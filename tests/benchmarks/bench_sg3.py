"""StyleGAN3 generator speed on CPU: ours vs the official reference path, side by side in one run.

    python tests/benchmarks/bench_sg3.py --official-repo /path/to/stylegan3 [--res 64,128] [--json out.json]

For the official -t (3x3 convs, channel_base 32768, channel_max 512) and -r (1x1 convs, radial filters,
channel_base 65536, channel_max 1024) generators with z/w 512 and a 2-layer mapping network, at each
resolution: the official G is built, its state copied into ours, and G(z, c) forward passes (batch --batch,
float32, no gradients) are timed alternately, ours then official, for --rounds rounds of at least
--min-time seconds; the best rate of each is kept. Reports images/s, the speed-up and the largest output
difference. The official ops take their reference (plain PyTorch) formulations on CPU. Prints one JSON
document (each case also goes to stderr as it finishes: the default run, -t and -r at 64 and 128 px at full
width, takes about 17 minutes on 2 CPU cores). Run by hand on an idle machine; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_official_sg3 import REPO_ROOT, import_official
from timing import best_rates

sys.path.insert(0, str(REPO_ROOT))
import ops
from models.serialization.snapshot import load_state_strict
from models.stylegan3.generator import StyleGAN3Generator

CONFIGS = {  # the official train.py --cfg option sets
    "t": dict(channel_base=32768, channel_max=512),
    "r": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}


@torch.no_grad()
def bench_case(off: Any, cfg: str, res: int, batch: int, rounds: int, min_time: float, width: float
               ) -> dict[str, Any]:
    kw: dict[str, Any] = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=2), conv_clamp=256, **CONFIGS[cfg])
    kw["channel_base"] = int(kw["channel_base"] * width)
    kw["channel_max"] = int(kw["channel_max"] * width)
    torch.manual_seed(0)
    Go = off.networks.Generator(**kw).eval().requires_grad_(False)
    G = StyleGAN3Generator(**kw).eval().requires_grad_(False)
    load_state_strict(G, Go.state_dict(), what="ours <- official")
    z = torch.randn([batch, 512], generator=torch.Generator().manual_seed(1))
    c = torch.zeros([batch, 0])
    rates = best_rates({"ours": lambda: G(z, c, force_fp32=True), "official": lambda: Go(z, c, force_fp32=True)},
                       batch, rounds, min_time)
    diff = float((G(z, c, force_fp32=True) - Go(z, c, force_fp32=True)).abs().max())
    return {
        "config": f"stylegan3-{cfg}", "resolution": res,
        "params_M": round(sum(p.numel() for p in G.parameters()) / 1e6, 2),
        "img/s ours": round(rates["ours"], 3), "img/s official": round(rates["official"], 3),
        "speedup": round(rates["ours"] / rates["official"], 3), "max_abs_diff": diff,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="checkout of NVlabs/stylegan3")
    parser.add_argument("--configs", default="t,r", help="comma-separated: t, r")
    parser.add_argument("--res", default="64,128", help="comma-separated resolutions")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement (at least one pass)")
    parser.add_argument("--width", type=float, default=1.0, help="scale channel_base/channel_max (e.g. 0.25)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    off = import_official(args.official_repo.resolve())
    cases = []
    for cfg in args.configs.split(","):
        for res in args.res.split(","):
            cases.append(bench_case(off, cfg, int(res), args.batch, args.rounds, args.min_time, args.width))
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)  # progress: a full run takes ~15 min
    result = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=args.batch, width=args.width,
                  machine=platform.processor() or platform.machine(), ops=ops.implementations_in_use(), cases=cases)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
