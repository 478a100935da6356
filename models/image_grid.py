"""Images for people: generator output as uint8 and as one grid picture, for notebooks and scripts.

    img = G(z, c, truncation_psi=0.7, noise_mode="const")   # [N, C, H, W] float in [-1, 1]
    models.grid(img, nrow=8)                               # a PIL image, 8 per row (shown by Jupyter)
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import PIL.Image
import torch

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


def as_uint8_nhwc(images: Any) -> np.ndarray:
    """[N, H, W, C] uint8 from a float [N, C, H, W] tensor/array in [-1, 1] (the official conversion, as the
    saved PNGs are made) or a uint8 [N, H, W, C] tensor/array (taken as is)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = nhwc(to_uint8(images)) if images.ndim == 4 else images
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected [N, C, H, W] float or [N, H, W, C] uint8 images with 1, 3 or 4 channels, "
                         f"got shape {list(images.shape)}")
    return np.ascontiguousarray(images)


def to_pil(image: np.ndarray) -> PIL.Image.Image:
    """[H, W, C] uint8 -> PIL image ('L', 'RGB' or 'RGBA')."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
    return PIL.Image.fromarray(image[..., 0] if mode == "L" else image, mode)


def grid(images: Any, nrow: int = 8, padding: int = 0) -> PIL.Image.Image:
    """One picture of `images`, `nrow` per row (torchvision's `make_grid` meaning), row-major; cells past
    the last image stay black. `images`: generator output [N, C, H, W] in [-1, 1], or uint8 [N, H, W, C]."""
    arr = as_uint8_nhwc(images)
    n, h, w, c = arr.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    canvas = np.zeros([rows * (h + padding) + padding, cols * (w + padding) + padding, c], np.uint8)
    for i, img in enumerate(arr):
        y = padding + (i // cols) * (h + padding)
        x = padding + (i % cols) * (w + padding)
        canvas[y : y + h, x : x + w] = img
    return to_pil(canvas)
