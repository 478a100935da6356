"""The `train` stage: StyleGAN2-ADA training loop, full-state checkpoints, statistics and tracking.

`stages.train` is the command line; `stages.training.loop.train(TrainConfig)` does the work.
"""

from stages.training.config import TrainConfig, resolve_options

__all__ = ["TrainConfig", "resolve_options"]
