"""DiffAugment: differentiable augmentations applied to reals and fakes alike inside D's forward.

    x = diff_augment(x, "color,translation,cutout")                  # global RNG
    x = diff_augment(x, "color,translation,cutout", generator=g)     # repeatable for a seeded `g`

Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (NeurIPS 2020), Section 3.
Projected GAN (Sauer et al. 2021) uses the policy "color,translation,cutout" for every dataset. Every operation
is differentiable in the image, so G receives gradients through the augmented fakes.

Ratios and formulas are the official ones: brightness U(-0.5, 0.5) added, saturation U(0, 2) and
contrast U(0.5, 1.5) scaling around the per-pixel channel mean and the per-image mean, translation by up
to 1/8 of the side with zero fill, one cutout square of 1/5 of the side. The random numbers are drawn in
the official order (brightness, saturation, contrast, rows shift, columns shift, cutout row, cutout column),
so for one seed the augmented images are those of the official code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

PROJECTED_GAN_POLICY = "color,translation,cutout"
TRANSLATION_RATIO = 0.125   # largest shift as a fraction of the side
CUTOUT_RATIO = 0.2          # side of the cutout square as a fraction of the image side


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U(0, 1) number per image, shaped to broadcast over [NCHW]."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device, generator=generator)


def random_brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + b with b ~ U(-0.5, 0.5) per image."""
    return x + (_uniform(x, generator) - 0.5)


def random_saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each pixel's deviation from its channel mean by s ~ U(0, 2) per image (0 = grey)."""
    mean = x.mean(dim=1, keepdim=True)  # [N1HW]
    return (x - mean) * (_uniform(x, generator) * 2) + mean


def random_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale the deviation from the image mean by k ~ U(0.5, 1.5) per image."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)  # [N111]
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def max_shift(size: int, ratio: float = TRANSLATION_RATIO) -> int:
    """Largest translation in pixels along a side of `size` (rounded half up, as official)."""
    return int(size * ratio + 0.5)


def random_translation(x: torch.Tensor, generator: torch.Generator | None = None,
                       ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by an integer (dy, dx), |d| <= max_shift(side); uncovered pixels become 0.

    out[n, :, i, j] = x[n, :, i + dy, j + dx] where that index is inside the image, else 0.
    """
    n, _, h, w = x.shape
    sh, sw = max_shift(h, ratio), max_shift(w, ratio)
    dy = torch.randint(-sh, sh + 1, size=[n, 1], device=x.device, generator=generator)  # [N1]
    dx = torch.randint(-sw, sw + 1, size=[n, 1], device=x.device, generator=generator)  # [N1]
    # Index into a copy with a one-pixel zero border: every source index that falls outside the image is
    # clamped onto that border, so it reads a zero.
    rows = (torch.arange(h, device=x.device) + dy + 1).clamp(0, h + 1)  # [NH]
    cols = (torch.arange(w, device=x.device) + dx + 1).clamp(0, w + 1)  # [NW]
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)                 # [N, H+2, W+2, C]
    batch = torch.arange(n, device=x.device)[:, None, None]             # [N11]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]             # [NHWC]
    return out.permute(0, 3, 1, 2)


def cutout_size(size: int, ratio: float = CUTOUT_RATIO) -> int:
    """Side in pixels of the cutout square along a side of `size` (rounded half up, as official)."""
    return int(size * ratio + 0.5)


def random_cutout(x: torch.Tensor, generator: torch.Generator | None = None,
                  ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one cutout_size(H) x cutout_size(W) rectangle per image, centred anywhere (clipped at the border).

    The centre (official offset) is uniform in [0, side] for an even square side and [0, side) for an odd
    one; the square spans [centre - side // 2, centre - side // 2 + side).
    """
    n, _, h, w = x.shape
    ch, cw = cutout_size(h, ratio), cutout_size(w, ratio)
    cy = torch.randint(0, h + (1 - ch % 2), size=[n, 1, 1], device=x.device, generator=generator)  # [N11]
    cx = torch.randint(0, w + (1 - cw % 2), size=[n, 1, 1], device=x.device, generator=generator)  # [N11]
    top, left = cy - ch // 2, cx - cw // 2
    r = torch.arange(h, device=x.device)[None, :, None]  # [1H1]
    c = torch.arange(w, device=x.device)[None, None, :]  # [11W]
    inside = (r >= top) & (r < top + ch) & (c >= left) & (c < left + cw)  # [NHW]
    return x * (~inside).to(x.dtype)[:, None]


Augmentation = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]

# Each policy is a fixed sequence; the order matters because it fixes the order of the random draws.
DIFFAUGMENT_POLICIES: dict[str, tuple[Augmentation, ...]] = {
    "color": (random_brightness, random_saturation, random_contrast),
    "translation": (random_translation,),
    "cutout": (random_cutout,),
}


def parse_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    """'color,translation' or ['color', 'translation'] -> ('color', 'translation'); '' -> ()."""
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown[0]!r}; choose from {sorted(DIFFAUGMENT_POLICIES)}")
    return tuple(names)


def diff_augment(
    x: torch.Tensor,                          # [NCHW]
    policy: str | Sequence[str] = PROJECTED_GAN_POLICY,
    generator: torch.Generator | None = None, # on x's device; None = the global RNG of that device
) -> torch.Tensor:                            # [NCHW], same shape and dtype
    """Apply the policies in order, each with fresh per-image random parameters."""
    if x.ndim != 4:
        raise ValueError(f"diff_augment expects [N, C, H, W], got {tuple(x.shape)}")
    for name in parse_policy(policy):
        for fn in DIFFAUGMENT_POLICIES[name]:
            x = fn(x, generator)
    return x.contiguous()
