"""`python -m stages.train`: train a GAN (reads the `train:` section of params.yaml, flags override).

Example (CPU, seconds):  python -m stages.train --data data/datasets/tiny.zip --cfg tiny --kimg 0.1 --aug noaug
Multi-GPU:               accelerate launch --config_file infra/accelerate/8gpu.yaml -m stages.train --data ...

Exit status: 0 done (or stopped by SIGTERM with a checkpoint), 1 environment (disk, permissions),
2 bad input (options, dataset, resume source), 3 training diverged (NaN/inf; last checkpoint kept).
"""

from __future__ import annotations

from collections.abc import Sequence

from stages.common.cli import config_command
from stages.train.config import HELP, TrainConfig


def _run(cfg: TrainConfig) -> None:
    from stages.train.loop import train  # networks and Accelerate load only once the flags are valid

    train(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return config_command("python -m stages.train", __doc__, TrainConfig, HELP, argv, _run)
