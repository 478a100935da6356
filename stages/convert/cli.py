"""Convert a network (official StyleGAN2-ADA pickle, URL or snapshot) into a native, code-free snapshot.

    python -m stages.convert --source network-snapshot-001000.pkl --dest ffhq.safetensors
    python -m stages.convert --source https://.../ffhq.pkl --dest ffhq.safetensors

The official pickle is read by the restricted importer (`models.serialization.official_pickle`): code stored in it is never
executed, and anything outside the allowlist of pickle globals is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.serialization.loading import load_network
from models.serialization.official_pickle import UnsafePickleError, UnsupportedPickleError
from models.serialization.snapshot import SnapshotError, save_snapshot


def describe(networks: dict[str, Any]) -> list[str]:
    """One line per converted group: class, resolution and parameter count."""
    lines = []
    for name in ("G", "D", "G_ema", "augment_pipe"):
        net = networks.get(name)
        if net is None:
            continue
        if isinstance(net, torch.nn.Module):
            n_params = sum(p.numel() for p in net.parameters())
            res = getattr(net, "img_resolution", None)
            extra = f", {res}x{res}x{getattr(net, 'img_channels', '?')}" if res else ""
            extra += f", c_dim={net.c_dim}" if hasattr(net, "c_dim") else ""
            lines.append(f"  {name:<13} {type(net).__name__}{extra}, {n_params:,} parameters")
        else:  # a tensor group (e.g. the official AugmentPipe before ours exists)
            n = sum(t.numel() for t in net["state_dict"].values())
            lines.append(f"  {name:<13} {net['class_name']} (settings + {n:,} buffer values)")
    return lines


def convert(source: str, dest: str | Path, cache_dir: str | None = None) -> dict[str, Any]:
    """Load `source` with `load_network` and write it to `dest` as a snapshot; returns the networks."""
    networks = load_network(source, cache_dir=cache_dir)
    groups = {k: networks.get(k) for k in ("G", "D", "G_ema", "augment_pipe") if k in networks}
    save_snapshot(dest, groups, training_set_kwargs=networks.get("training_set_kwargs"),
                  meta={"converted_from": str(source)})
    return networks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.convert",
        description="Convert an official StyleGAN2-ADA network pickle (or URL, or snapshot) to a code-free "
                    ".safetensors snapshot. No code stored in the pickle is executed.",
    )
    parser.add_argument("--source", required=True, help="network pickle, snapshot, or http(s)/file URL")
    parser.add_argument("--dest", required=True, help="output .safetensors path (written atomically)")
    parser.add_argument("--cache-dir", default=None, help="download cache (default $SG2_CACHE_DIR or "
                                                          "~/.cache/sg2ada-mlops/networks)")
    args = parser.parse_args(argv)
    try:
        networks = convert(args.source, args.dest, cache_dir=args.cache_dir)
    except (OSError, UnsafePickleError, UnsupportedPickleError, SnapshotError) as exc:
        # Expected failures get one line, not a traceback: they are about the input, not a bug.
        print(f"convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.source} -> {args.dest}")
    for line in describe(networks):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
