"""`python -m stages.train`: train a GAN (reads the `train:` section of params.yaml, flags override).

Example (CPU, seconds):  python -m stages.train --data data/datasets/tiny.zip --cfg tiny --kimg 0.1 --aug noaug
Multi-GPU:               accelerate launch --config_file infra/accelerate/8gpu.yaml -m stages.train --data ...

Exit status: 0 done (or stopped by SIGTERM with a checkpoint), 1 environment (disk, permissions),
2 bad input (options, dataset, resume source), 3 training diverged (NaN/inf; last checkpoint kept).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.common.cli import add_config_flags, load_config, run_stage, stage_parser
from stages.train.config import HELP, TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser("python -m stages.train", __doc__)
    add_config_flags(parser, TrainConfig, HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> None:
        cfg = load_config(TrainConfig, "train", args)
        from stages.train.loop import train  # networks and Accelerate load only once the flags are valid

        train(cfg)

    return run_stage(build_parser(), argv, body)
