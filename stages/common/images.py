"""Images out of networks: float [-1, 1] to uint8, tiles of many images, PNG files written atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TypeVar

import numpy as np
import PIL.Image
import torch

from stages.common.errors import BadInput
from stages.common.fileio import write_bytes_atomic

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def to_uint8(images: ArrayT, drange: tuple[float, float] = (-1.0, 1.0)) -> ArrayT:
    """Map `drange` to 0..255 and round: for [-1, 1] this is the official `(x * 127.5 + 128).clamp(0, 255)`
    then truncation, i.e. round half up. Same layout and array type as the input (torch or numpy)."""
    lo, hi = drange
    scale = 255 / (hi - lo)
    if isinstance(images, torch.Tensor):
        return ((images.float() - lo) * scale + 0.5).clamp(0, 255).to(torch.uint8)
    return np.clip((np.asarray(images, np.float32) - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, H, W, C] numpy (on CPU)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


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
