"""`python -m stages.demo_data`: write the built-in digits as a labelled image folder (the demo's raw data).

    python -m stages.demo_data --out data/raw/digits

Reads the `demo:` section of params.yaml. A folder this stage did not write is never replaced (exit 2)
unless --force is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from stages.common.cli import config_command
from stages.demo_data.digits import HELP, DemoDataConfig, write_digits


def _run(cfg: DemoDataConfig) -> None:
    summary = write_digits(cfg.out, invert=cfg.invert, force=cfg.force)
    print(f"wrote {summary['images']} digits in {summary['classes']} classes to {summary['path']}")


def main(argv: Sequence[str] | None = None) -> int:
    return config_command("python -m stages.demo_data", __doc__, DemoDataConfig, HELP, argv, _run)
