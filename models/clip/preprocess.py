"""CLIP's image preprocessing, reproducing OpenAI's torchvision pipeline with PIL and numpy:

    Resize(n, BICUBIC) -> CenterCrop(n) -> convert("RGB") -> ToTensor() -> Normalize(CLIP_MEAN, CLIP_STD)

Resize scales the shorter side to n (the longer to int(n * long / short)), on the image in its own mode,
as torchvision does for PIL images; the crop offsets are torchvision's `int(round((size - n) / 2))`. So a
PNG written by `generate` and the same image straight from the generator give the same pixels here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import PIL.Image
import torch

from models.image_grid import as_uint8_nhwc, to_pil

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter_side(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), PIL.Image.Resampling.BICUBIC)


def center_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    w, h = image.size
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # round half to even, as torchvision
    return image.crop((left, top, left + size, top + size))


def preprocess_pil(image: PIL.Image.Image, size: int) -> torch.Tensor:
    """One PIL image -> [3, size, size] float32, normalized with CLIP's mean and std."""
    image = center_crop(resize_shorter_side(image, size), size).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [HWC] -> [CHW]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _as_pil_list(images: Any) -> list[PIL.Image.Image]:
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, torch.Tensor | np.ndarray):
        arr = images
        if arr.ndim == 3:  # one image: [C, H, W] float or [H, W, C] uint8
            arr = arr[None]
        return [to_pil(img) for img in as_uint8_nhwc(arr)]
    if isinstance(images, Iterable):
        out: list[PIL.Image.Image] = []
        for item in images:
            out += _as_pil_list(item)
        return out
    raise TypeError(f"cannot preprocess {type(images).__name__}: expected PIL images, uint8 NHWC or float NCHW")


def preprocess(images: Any, size: int) -> torch.Tensor:
    """[N, 3, size, size] CLIP input from PIL image(s), uint8 [N, H, W, C] arrays/tensors, or generator output
    (float [N, C, H, W] in [-1, 1], rounded to uint8 first as the saved PNGs are)."""
    pils = _as_pil_list(images)
    if not pils:
        return torch.zeros([0, 3, size, size])
    return torch.stack([preprocess_pil(img, size) for img in pils])
