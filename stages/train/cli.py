"""`python -m stages.train`: train StyleGAN2-ADA (reads the `train:` section of params.yaml, flags override).

Example (CPU, seconds):  python -m stages.train --data data/datasets/tiny.zip --cfg tiny --kimg 0.1 --aug noaug
Multi-GPU:               accelerate launch --config_file infra/accelerate/8gpu.yaml -m stages.train --data ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from stages.common.config import ConfigError, add_dataclass_arguments, add_params_argument, config_from_args
from stages.train.checkpoint import CheckpointError
from stages.train.options import TrainConfig
from stages.train.setup import TrainingDiverged

HELP = {
    "data": "training data: dataset ZIP or folder (required)",
    "outdir": "parent folder of numbered run folders",
    "run_dir": "exact run folder instead of <outdir>/<id>-<desc>",
    "cfg": "preset: auto|stylegan2|paper256|paper512|paper1024|cifar|tiny",
    "cond": "condition on dataset labels",
    "mirror": "add x-flipped copies of the images",
    "subset": "train on a random subset of N images",
    "gamma": "R1 regularization weight (default: preset)",
    "pl_weight": "path-length regularization weight (default: preset; 0 = off)",
    "style_mixing": "style-mixing probability (default: preset; 0 = off)",
    "kimg": "training length in thousands of real images (fractions allowed)",
    "batch": "global minibatch over all processes",
    "batch_gpu": "samples per process per accumulation round",
    "snap": "network snapshot interval in ticks",
    "image_snapshot_ticks": "fakes grid interval in ticks (default: snap)",
    "checkpoint_ticks": "full-state checkpoint interval in ticks (default: snap)",
    "keep_checkpoints": "keep the newest K complete checkpoints",
    "seed": "random seed",
    "resume": ("'latest', 'auto' (latest, or a fresh run in run_dir when options changed), a checkpoint folder, "
               "or a snapshot/official pickle path or URL (transfer learning)"),
    "freezed": "Freeze-D: the first N discriminator layers are not trained",
    "freeze_mapping": "keep the generator's mapping network fixed",
    "fp32": "disable mixed precision",
    "nhwc": "channels-last memory format for fp16 layers",
    "allow_tf32": "allow TF32 matmuls/convolutions",
    "nobench": "disable cuDNN benchmarking",
    "workers": "DataLoader worker processes",
    "metrics": "comma-separated metrics computed on every network snapshot, e.g. fid50k_full (none: skip)",
    "detector_dir": "folder with inception-2015-12-05.pt / vgg16.pt for --metrics (also $SG2_DETECTOR_DIR)",
    "aug": "augmentation: noaug|ada|fixed",
    "p": "augmentation probability for aug=fixed",
    "target": "ADA target for the r_t heuristic (default 0.6)",
    "augpipe": "augmentation pipeline (e.g. bgc)",
    "ada_kimg": "kimg for ADA's p to move by one unit",
    "ada_interval": "ADA adjustment every N minibatches",
    "tick_kimg": "progress tick length in kimg",
    "grid_w": "image grid columns (0 = official layout)",
    "grid_h": "image grid rows (0 = official layout)",
    "cpu": "train on CPU even when CUDA is available",
    "mlflow": "log to MLflow (also: SG2_MLFLOW=1)",
    "dry_run": "print the resolved options and exit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_argument(parser)
    add_dataclass_arguments(parser, TrainConfig, HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(TrainConfig, "train", args, [f.name for f in dataclasses.fields(TrainConfig)])
        from stages.train.loop import train  # networks and Accelerate load only once the flags are valid

        train(cfg)
    except (ConfigError, CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
