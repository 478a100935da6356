"""`python -m stages.demo_data`: write the built-in digits as a labelled image folder (the demo's raw data).

    python -m stages.demo_data --out data/raw/digits

Reads the `demo:` section of params.yaml. A folder this stage did not write is never replaced (exit 2)
unless --force is given.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.common.cli import add_config_flags, load_config, run_stage, stage_parser
from stages.demo_data.digits import HELP, DemoDataConfig, write_digits


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m stages.demo_data", __doc__)
    add_config_flags(parser, DemoDataConfig, HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> None:
        cfg = load_config(DemoDataConfig, "demo", args)
        summary = write_digits(cfg.out, invert=cfg.invert, force=cfg.force)
        print(f"wrote {summary['images']} digits in {summary['classes']} classes to {summary['path']}")

    return run_stage(build_parser(), argv, body)
