"""Write the built-in demo dataset: scikit-learn's handwritten digits as a labelled image folder.

scikit-learn ships the 1,797 8x8 grayscale digits (UCI "Optical Recognition of Handwritten Digits")
inside its wheel, so the demo needs no download. The prepare stage scales them up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out_dir: str | os.PathLike, invert: bool = True) -> dict:
    """Write `out_dir/<class>/<index>.png` plus `dataset.json` labels; atomic (temp dir, then rename)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # the demo extra brings scikit-learn
        raise SystemExit("the demo data needs scikit-learn: pip install -e '.[pipeline]'") from exc
    digits = load_digits()
    # Values are ink counts 0..16; white background with dark ink reads like handwriting.
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    if invert:
        pixels = 255 - pixels
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        labels = []
        for i, (img, label) in enumerate(zip(pixels, digits.target)):
            name = f"{int(label)}/{i:04d}.png"
            (tmp / str(int(label))).mkdir(exist_ok=True)
            Image.fromarray(img, mode="L").save(tmp / name)
            labels.append([name, int(label)])
        (tmp / "dataset.json").write_text(json.dumps({"labels": labels}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": len(labels), "classes": int(digits.target.max()) + 1, "path": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/raw/digits", help="folder to write (replaced if present)")
    parser.add_argument("--no-invert", action="store_true", help="keep white ink on black")
    args = parser.parse_args(argv)
    summary = write_digits(args.out, invert=not args.no_invert)
    print(f"wrote {summary['images']} digits in {summary['classes']} classes to {summary['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
