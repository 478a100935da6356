"""`python -m stages.prepare`: convert raw images into the official StyleGAN2-ADA dataset archive.

    python -m stages.prepare --source data/raw/cats --dest data/datasets/cats.zip \
        --transform center-crop --width 256 --height 256

Flags match the official `dataset_tool.py` (--source --dest --max-images --transform --width --height
--resize-filter) and the output is its format: an uncompressed ZIP (or folder) of PNGs
`00000/img00000000.png` (1000 per folder) plus `dataset.json` with {"labels": [[name, int], ...]} or
{"labels": null}. Clean inputs give the same pixels and labels as the official tool.

What differs, on purpose:
- Bad inputs (corrupt, truncated, empty, not an image, decompression bombs, too small, of another size,
  unlabelled in a labelled set, labels outside [0, 65536)) are skipped and listed with their reason in
  `<dest>.report.json` instead of aborting or being silently dropped; --on-error fail makes any of them
  fatal. Pixel-format conversions (alpha, palette, CMYK, 16-bit, EXIF rotation, gray in an RGB set) are
  listed as `fixed`.
- Output names are consecutive over the images actually written, and --max-images counts written images.
- Channels (`channels: 0`): colour wins - one colour image makes the dataset RGB.
- The destination is written atomically, the ZIP is byte-for-byte reproducible, and an existing --dest
  that is not a dataset (no dataset.json) is never replaced. A failed run leaves the earlier dataset and
  its report alone and writes `<dest>.report.failed.json`; `<dest>.log` keeps every run's log.
- Decode, crop, resize and PNG encoding run in --workers processes over a bounded window.

Exit status: 0 written, 1 environment (disk full, read-only, permissions), 2 bad input (source, options,
nothing usable, --on-error fail).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from stages.common.cli import config_command
from stages.prepare.config import HELP, PrepareConfig


def _run(config: PrepareConfig) -> None:
    from stages.prepare.conversion import prepare_dataset, report_path

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)  # per-image lines and the run summary go to <dest>.log
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("stages.prepare").addHandler(console)
    try:
        summary = prepare_dataset(config)
    finally:
        logging.getLogger("stages.prepare").removeHandler(console)
    res, ch = summary["resolution"], summary["channels"]
    print(f"wrote {summary['num_written']} images {res}x{res}x{ch} to {config.dest} ({summary['num_skipped']} "
          f"skipped, {summary['num_fixed']} fixed; {summary['images_per_second']:.1f} img/s); "
          f"report: {report_path(config.dest)}")


def main(argv: Sequence[str] | None = None) -> int:
    return config_command("python -m stages.prepare", __doc__, PrepareConfig, HELP, argv, _run)
