"""`python -m stages.evaluate`: GAN metrics of a network snapshot (reads `evaluate:` in params.yaml, flags override).

Examples:
  python -m stages.evaluate --network runs/demo --metrics fid50k_full,kid50k_full
  python -m stages.evaluate --network https://.../ffhq.pkl --metrics fid50k_full --data ffhq.zip --mirror
  accelerate launch --num_processes 2 -m stages.evaluate --network runs/demo   # split over processes

Writes `<run_dir>/metric-<name>.jsonl` (official line format) and the flat `--out` JSON (DVC metrics).
Exit status: 0 ok (or detectors missing with --skip-missing-detectors), 1 detector missing or environment,
2 bad input (options, network file, dataset).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.common.cli import add_config_flags, load_config, run_stage, stage_parser
from stages.evaluate.config import HELP, EvaluateConfig


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m stages.evaluate", __doc__)
    add_config_flags(parser, EvaluateConfig, HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> None:
        from stages.evaluate.evaluation import evaluate

        evaluate(load_config(EvaluateConfig, "evaluate", args))

    return run_stage(build_parser(), argv, body)
