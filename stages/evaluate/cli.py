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

from collections.abc import Sequence

from stages.common.cli import config_command
from stages.evaluate.config import HELP, EvaluateConfig


def _run(cfg: EvaluateConfig) -> None:
    from stages.evaluate.evaluation import evaluate

    evaluate(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return config_command("python -m stages.evaluate", __doc__, EvaluateConfig, HELP, argv, _run)
