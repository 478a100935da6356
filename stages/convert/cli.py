"""`python -m stages.convert`: an official StyleGAN2(-ADA) network pickle (PyTorch or TensorFlow), URL or
snapshot -> a native, code-free `.safetensors` snapshot. No code stored in the pickle is executed.

    python -m stages.convert --source network-snapshot-001000.pkl --dest ffhq.safetensors
    python -m stages.convert --source https://.../ffhq.pkl --dest ffhq.safetensors

Also `python -m stages.generate convert` (same flags). Exit status: 0 converted, 1 environment (download,
disk), 2 bad input (missing file, refused or unsupported pickle).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.common.cli import add_config_flags, load_config, run_stage, stage_parser
from stages.convert.converter import HELP, ConvertConfig


def add_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, ConvertConfig, HELP)


def run(args: argparse.Namespace) -> None:
    """Convert per the parsed flags, print what was written, log it to MLflow when asked."""
    from stages.common.tracking import make_tracker
    from stages.convert.converter import convert_network, describe

    cfg = load_config(ConvertConfig, "convert", args)
    networks = convert_network(cfg.source, cfg.dest, cache_dir=cfg.cache_dir)
    print(f"converted {cfg.source} -> {cfg.dest}")
    for line in describe(networks):
        print(line)
    tracker, note = make_tracker(cfg.mlflow)
    if note:
        print(f"note: {note}")
    tracker.start("convert", params={"source": cfg.source, "dest": cfg.dest}, tags={"stage": "convert"})
    tracker.log_artifact(cfg.dest, "convert")
    tracker.end("FINISHED")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m stages.convert", __doc__)
    add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(build_parser(), argv, run)
