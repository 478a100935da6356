"""The built-in demo dataset: scikit-learn's handwritten digits as a labelled image folder.

scikit-learn ships the 1,797 8x8 grayscale digits (UCI "Optical Recognition of Handwritten Digits")
inside its wheel, so the demo needs no download. The prepare stage scales them up.

The folder carries a marker file: the stage replaces only a folder it wrote itself (or an empty one),
never a folder of the user's, unless told to with `force`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from stages.common.config import ConfigError
from stages.common.errors import BadInput, EnvironmentFault
from stages.common.fileio import fsync_dir

MARKER = ".sg2ada-demo-digits"


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    SECTION: ClassVar[str] = "demo"

    out: str = "data/raw/digits"   # folder to write; replaced only if this stage wrote it (or it is empty)
    invert: bool = True            # dark ink on white, like handwriting (false: white ink on black)
    force: bool = False            # replace `out` even if this stage did not write it

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("--out is required")


HELP = {
    "out": "folder to write; replaced only if this stage wrote it before, or it is empty",
    "invert": "dark ink on a white background",
    "force": "replace --out even when this stage did not write it (its contents are deleted)",
}


def check_replaceable(out: Path, force: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a folder; choose another --out")
    if force or (out / MARKER).is_file() or not any(out.iterdir()):
        return
    raise BadInput(f"--out {out} holds files this stage did not write; it is not replaced (choose another --out, "
                   "or pass --force to delete its contents)")


def write_digits(out_dir: str | os.PathLike, invert: bool = True, force: bool = False) -> dict[str, Any]:
    """Write `out_dir/<class>/<index>.png` plus `dataset.json` labels; atomic (temp dir, then rename)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise EnvironmentFault("the demo data needs scikit-learn: pip install -e '.[pipeline]'") from exc
    out = Path(out_dir)
    check_replaceable(out, force)
    digits = load_digits()
    # Values are ink counts 0..16; white background with dark ink reads like handwriting.
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    if invert:
        pixels = 255 - pixels
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
        (tmp / MARKER).write_text("written by python -m stages.demo_data; safe to replace\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": len(labels), "classes": int(digits.target.max()) + 1, "path": str(out)}
