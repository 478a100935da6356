"""Images out of networks: float [-1, 1] to uint8, tiles of many images, PNG files written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import PIL.Image

from models.image_grid import nhwc, to_uint8  # the one conversion, re-exported for the stages
from stages.common.errors import BadInput
from stages.common.fileio import write_bytes_atomic

__all__ = ["nhwc", "save_png", "tile", "to_pil", "to_uint8"]


def tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[N, H, W, C] -> one [rows*H, cols*W, C] image, row-major (image i at row i // cols); empty cells black."""
    n, h, w, c = images.shape
    if n > rows * cols:
        raise BadInput(f"a {cols}x{rows} grid (columns x rows) holds {rows * cols} images, got {n}")
    canvas = np.zeros([rows * cols, h, w, c], dtype=images.dtype)
    canvas[:n] = images
    return canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def to_pil(image: np.ndarray) -> PIL.Image.Image:
    """[H, W, C] uint8 -> PIL image; one channel is 8-bit grayscale ('L')."""
    if image.ndim == 3 and image.shape[2] == 1:
        return PIL.Image.fromarray(image[:, :, 0], "L")
    if image.ndim == 3 and image.shape[2] == 3:
        return PIL.Image.fromarray(image, "RGB")
    raise BadInput(f"cannot write an image of shape {image.shape} (1 or 3 channels expected)")


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write [H, W, C] uint8 as a PNG, atomically."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
