"""Equivariance metrics of the alias-free generator (Karras et al. 2021, Sec. 4 and Appendix E).

    EQ-T        integer translation: the image rendered with the input shifted by whole pixels vs the
                original image shifted by the same pixels (App. E.1)
    EQ-T_frac   fractional translation: as EQ-T with a shift of any size, the original image resampled
                with a Lanczos-windowed sinc, a = 3 (App. E.2)
    EQ-R        rotation: the original rotated by an angle through an oriented band-limit filter vs the
                image rendered rotated and passed through the same band limit without rotating (App. E.3)

Each is a PSNR in dB over the pixels both images define (a validity mask), for images in [-1, 1]:

    PSNR = 20 log10(2) - 10 log10(MSE),   MSE = sum(mask * (ref - img)^2) / sum(mask)     (App. E)

with the squared errors and mask counts summed over every sample before the ratio, as the official code.
Translations are uniform in [-1/8, 1/8] of the image width and angles uniform in [-180°, 180°], one draw
per batch of 4 (the official batch). The transform reaches the generator through
`G.synthesis.input.transform` (the inverse of the wanted image transform), so only StyleGAN3 networks
can be measured.

Samples are seeded per global batch like `features.generator_features` (z, labels and the transform
from `numpy.random.default_rng([seed, batch])`), so a result does not depend on the number of processes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ops.upfirdn2d import filter2d, upsample2d
from stages.common.errors import BadInput
from stages.metrics.distributed import ProcessGroup, SingleProcess, is_main, my_batches, sum_arrays
from stages.metrics.features import _progress, batch_latents, seeded_torch

EqKind = Literal["eqt_int", "eqt_frac", "eqr"]
OFFICIAL_BATCH = 4          # images per transform draw (official metric_main)
TRANSLATE_MAX = 0.125       # |t| <= 1/8 of the image per axis
ROTATE_MAX = 1.0            # |angle| <= ROTATE_MAX * pi
LANCZOS_A = 3               # Lanczos window size of the resampling filters


# ------------------------------------------------------------------------------------------------
# Kernels.


def sinc(x: torch.Tensor) -> torch.Tensor:
    """Normalised sinc, sin(pi x) / (pi x), with sinc(0) = 1."""
    px = x * math.pi
    small = px.abs() < 1e-30
    px = torch.where(small, 1.0, px)
    return torch.where(small, 1.0, torch.sin(px) / px)


def lanczos_window(x: torch.Tensor, a: int) -> torch.Tensor:
    """sinc(x / a) inside |x| < a, 0 outside (the window only, not multiplied by sinc(x))."""
    return torch.where(x.abs() < a, sinc(x / a), 0.0)


def rotation_matrix(angle: float | torch.Tensor) -> torch.Tensor:
    """[3, 3] float32 [[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]] (angle in radians, the official sign)."""
    a = torch.as_tensor(angle, dtype=torch.float32)
    c, s = a.cos(), a.sin()
    m = torch.eye(3)
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = c, s, -s, c
    return m


def translation_matrix(tx: float | torch.Tensor, ty: float | torch.Tensor) -> torch.Tensor:
    """[3, 3] float32 inverse of a translation by (tx, ty) image widths: what the generator's transform takes."""
    m = torch.eye(3)
    m[0, 2], m[1, 2] = -torch.as_tensor(tx, dtype=torch.float32), -torch.as_tensor(ty, dtype=torch.float32)
    return m


# ------------------------------------------------------------------------------------------------
# Translation (App. E.1, E.2).


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[..., i, j] = x[..., i - dy, j - dx], zero where that falls outside the image."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _window_1d(length: int, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    """[length] float32: 1 on [max(lo, 0), min(hi, length)), 0 elsewhere."""
    idx = torch.arange(length, device=device)
    return ((idx >= lo) & (idx < hi)).to(torch.float32)


def integer_translation(x: torch.Tensor, tx: float, ty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Move images [NCHW] by (tx, ty) image sizes rounded to whole pixels -> (moved, mask of defined pixels)."""
    h, w = x.shape[-2:]
    dx, dy = round(float(tx) * w), round(float(ty) * h)
    mask = torch.zeros_like(x)
    if abs(dx) < w and abs(dy) < h:
        mask[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = 1
    return _shift(x, dx, dy), mask


def lanczos_taps(frac: float, a: int = LANCZOS_A) -> tuple[list[int], torch.Tensor]:
    """Offsets j = -(a-1)..a and their weights sinc(j - frac) * sinc((j - frac) / a), normalised to sum 1:
    out[n] = sum_j w_j * in[n - floor(t) - j] moves a signal by t = floor(t) + frac samples."""
    offsets = list(range(1 - a, a + 1))
    u = torch.tensor(offsets, dtype=torch.float64) - frac
    taps = sinc(u) * lanczos_window(u, a)
    return offsets, (taps / taps.sum()).to(torch.float32)


def fractional_translation(x: torch.Tensor, tx: float, ty: float, a: int = LANCZOS_A
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move images [NCHW] by (tx, ty) image sizes with separable Lanczos resampling -> (moved, mask).

    The mask keeps the pixels whose every tap reads inside the image (zero padding elsewhere)."""
    h, w = x.shape[-2:]
    out = x
    masks = []
    for t, size, axis in ((float(tx) * w, w, "x"), (float(ty) * h, h, "y")):
        whole = math.floor(t)
        offsets, taps = lanczos_taps(t - whole, a)
        moved = torch.zeros_like(out)
        for j, tap in zip(offsets, taps.to(x.device)):
            moved += tap * (_shift(out, whole + j, 0) if axis == "x" else _shift(out, 0, whole + j))
        out = moved
        masks.append(_window_1d(size, whole + a, size + whole - (a - 1), x.device))
    mask = masks[1][:, None] * masks[0][None, :]  # [HW]
    return out, mask.expand_as(x).clone()


# ------------------------------------------------------------------------------------------------
# Rotation (App. E.3): an oriented band limit.


def _fft_grid(half: int, up: int, device: torch.device) -> torch.Tensor:
    """2*half*up - 1 sample positions, 1/up apart, in FFT order (0 first, negatives wrapped to the end)."""
    n = 2 * half * up - 1
    centred = (torch.arange(n, device=device, dtype=torch.float32) - (half * up - 1)) / up
    return torch.fft.ifftshift(centred)


def affine_bandlimit_filter(
    mat: torch.Tensor,          # [3, 3] the affine transform; only its 2x2 part matters
    a: int = LANCZOS_A,         # Lanczos window size
    amax: int = 16,             # filter half-length in input samples
    aflt: int = 64,             # half-length of the grid the filter is designed on
    up: int = 4,                # samples per input sample (polyphase components)
    cutoff_in: float = 1,       # band limit in input coordinates (cycles per sample * 2)
    cutoff_out: float = 1,      # band limit in transformed coordinates
) -> torch.Tensor:              # [2*amax*up - 1, 2*amax*up - 1]
    """Low-pass filter that band-limits a signal both on the input grid and on the transformed grid.

    Ideal response: the separable sinc band limit of the input convolved with the same band limit in the
    transformed coordinates (x_o, y_o) = A (x_i, y_i); window: the product Lanczos window of each, convolved
    likewise. Both convolutions are circular (FFT) on a grid of half-length `aflt`, long enough that the
    wrap-around is negligible inside the `amax` half-length that is kept. Each of the up x up polyphase
    components is normalised to sum 1 / up^2, so `upsample2d(gain=up^2)` keeps a constant image constant.
    """
    if not a <= amax < aflt:
        raise ValueError(f"need a <= amax < aflt, got a={a}, amax={amax}, aflt={aflt}")
    mat = torch.as_tensor(mat, dtype=torch.float32)
    grid = _fft_grid(aflt, up, mat.device)  # [n]
    yi, xi = torch.meshgrid(grid, grid, indexing="ij")
    xo, yo = (torch.stack([xi, yi], dim=2) @ mat[:2, :2].t()).unbind(2)

    def circular_conv(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifftn(torch.fft.fftn(p) * torch.fft.fftn(q)).real

    # The input-frame factors are separable: evaluated on the 1-D grid and multiplied out (same values,
    # a fraction of the work on the n x n grid).
    ideal_in = sinc(grid * cutoff_in)
    window_in = lanczos_window(grid, a)
    ideal = circular_conv(torch.outer(ideal_in, ideal_in), sinc(xo * cutoff_out) * sinc(yo * cutoff_out))
    window = circular_conv(torch.outer(window_in, window_in), lanczos_window(xo, a) * lanczos_window(yo, a))
    f = torch.fft.fftshift(ideal * window)  # centre at index aflt*up - 1
    crop = (aflt - amax) * up
    f = f[crop:-crop, crop:-crop]  # [2*amax*up - 1]^2
    # Polyphase normalisation on a grid padded to 2*amax*up so it splits evenly into up x up phases.
    f = F.pad(f, [0, 1, 0, 1]).reshape(amax * 2, up, amax * 2, up)
    f = f / f.sum(dim=[0, 2], keepdim=True) / up**2
    return f.reshape(amax * 2 * up, amax * 2 * up)[:-1, :-1]


def affine_transformation(x: torch.Tensor, mat: torch.Tensor, up: int = 4, **filter_kwargs: Any
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images [NCHW] under the affine `mat` (image units, 1 = image width): band-limited
    upsampling by `up`, then bilinear sampling of the dense result -> (transformed, mask)."""
    _, _, h, w = x.shape
    mat = torch.as_tensor(mat, dtype=torch.float32, device=x.device)
    f = affine_bandlimit_filter(mat, up=up, **filter_kwargs).to(x.device)
    p = f.shape[0] // 2  # the upsampled image has p extra samples on every side

    # affine_grid maps output pixels to normalised input coordinates ([-1, 1] across the image), so the
    # inverse transform is used; translations double (image width 1 -> 2 normalised units); half an
    # upsampled pixel moves the upsampled sample grid onto the original pixel centres; and the scale
    # maps the original image's extent onto its share of the padded upsampled image.
    theta = torch.linalg.inv(mat)
    theta[:2, 2] *= 2
    theta[0, 2] += 1 / up / w
    theta[1, 2] += 1 / up / h
    theta[0, :] *= w / (w + p / up * 2)
    theta[1, :] *= h / (h + p / up * 2)
    grid = F.affine_grid(theta[:2, :3].unsqueeze(0).repeat([x.shape[0], 1, 1]), list(x.shape), align_corners=False)

    dense = upsample2d(x, f, up=up, padding=p)  # [N, C, h*up + 2p, w*up + 2p]
    out = F.grid_sample(dense, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Defined pixels: those sampled from the interior, away from the filter's reach into the zero padding.
    valid = torch.zeros_like(dense)
    edge = 2 * p + 1
    valid[:, :, edge:-edge, edge:-edge] = 1
    mask = F.grid_sample(valid, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out, mask


def fractional_rotation(x: torch.Tensor, angle: float, a: int = LANCZOS_A) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate images [NCHW] by `angle` radians through the oriented band limit (operator R_alpha)."""
    return affine_transformation(x, rotation_matrix(angle), a=a, amax=a * 2)


def pseudo_rotation(x: torch.Tensor, angle: float, a: int = LANCZOS_A) -> tuple[torch.Tensor, torch.Tensor]:
    """The frequency content of a rotation by `angle` without rotating (operator R*_alpha): the band limit
    of the rotated grid applied in place -> (filtered, mask away from the borders)."""
    f = affine_bandlimit_filter(rotation_matrix(-angle), a=a, amax=a * 2, up=1).to(x.device)
    out = filter2d(x, f)
    mask = torch.zeros_like(out)
    edge = f.shape[0] // 2
    mask[:, :, edge:-edge, edge:-edge] = 1
    return out, mask


# ------------------------------------------------------------------------------------------------
# The metric.


def psnr_from_sums(squared_error: float, mask_count: float) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) from summed masked squared errors and mask counts;
    identical images give +inf, as log10(0) does in the official computation."""
    if mask_count <= 0:
        raise ValueError("no pixel is defined in both images (empty mask)")
    if squared_error <= 0:
        return math.inf
    return 20 * math.log10(2) - 10 * math.log10(squared_error / mask_count)


def user_transform(G: torch.nn.Module, metric: str = "equivariance metrics") -> torch.Tensor:
    """`G.synthesis.input.transform`, or a one-line BadInput naming `metric` (StyleGAN2 has none)."""
    transform = getattr(getattr(getattr(G, "synthesis", None), "input", None), "transform", None)
    if not isinstance(transform, torch.Tensor) or tuple(transform.shape) != (3, 3):
        raise BadInput(f"{metric}: the generator has no synthesis.input.transform; equivariance metrics need a "
                       f"StyleGAN3 network ({type(G).__name__} given)")
    return transform


def _draw_translation(rng: np.random.Generator, max_shift: float) -> tuple[float, float]:
    tx, ty = (rng.random(2) * 2 - 1) * max_shift
    return float(tx), float(ty)


def batch_sums(G: torch.nn.Module, ws: torch.Tensor, kind: EqKind, rng: np.random.Generator,
               synthesis_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """[2] float64: (sum of masked squared errors, sum of mask) of one batch for one metric.

    `G` is the caller's private copy: its transform buffer is overwritten."""
    kw = dict(synthesis_kwargs or {}, noise_mode="const")  # both renders must see the same noise
    transform = user_transform(G)
    res = G.img_resolution
    transform.copy_(torch.eye(3))
    orig = G.synthesis(ws, **kw)
    if kind == "eqt_int":
        tx, ty = _draw_translation(rng, TRANSLATE_MAX)
        tx, ty = round(tx * res) / res, round(ty * res) / res  # whole pixels
        transform.copy_(translation_matrix(tx, ty))
        ref, mask = integer_translation(orig, tx, ty)
        img = G.synthesis(ws, **kw)
    elif kind == "eqt_frac":
        tx, ty = _draw_translation(rng, TRANSLATE_MAX)
        transform.copy_(translation_matrix(tx, ty))
        ref, mask = fractional_translation(orig, tx, ty)
        img = G.synthesis(ws, **kw)
    elif kind == "eqr":
        angle = float((rng.random() * 2 - 1) * ROTATE_MAX * math.pi)
        transform.copy_(rotation_matrix(-angle))
        ref, ref_mask = fractional_rotation(orig, angle)
        img, img_mask = pseudo_rotation(G.synthesis(ws, **kw), angle)
        mask = ref_mask * img_mask
    else:
        raise ValueError(f"unknown equivariance metric kind {kind!r}")
    err = ((ref.double() - img.double()).square() * mask.double()).sum()
    return np.array([float(err), float(mask.double().sum())])


def equivariance_psnr(
    G: torch.nn.Module,
    labels: np.ndarray | None,             # [L, c_dim] label vectors to draw c from (None: unconditional)
    kind: EqKind,
    num_samples: int,
    batch_size: int = OFFICIAL_BATCH,      # images per transform draw
    seed: int = 0,
    mapping_kwargs: dict[str, Any] | None = None,    # truncation_psi, truncation_cutoff (official: none)
    synthesis_kwargs: dict[str, Any] | None = None,  # e.g. force_fp32
    group: ProcessGroup | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    metric: str = "equivariance",
) -> float:
    """EQ-T / EQ-T_frac / EQ-R of `G` in dB over `num_samples` images (every process must call it)."""
    group = group or SingleProcess()
    user_transform(G, metric)  # refuse StyleGAN2 before any work
    G = copy.deepcopy(G).eval().requires_grad_(False).to(device)  # the transform buffer is overwritten
    noise = [buf for name, buf in G.named_buffers() if name.endswith(".noise_const")]
    sums = np.zeros(2)
    with _progress(num_samples, f"{metric} sampling", progress and is_main(group)) as bar:
        for b, s, e in my_batches(num_samples, batch_size, group):
            z, c, rng = batch_latents(seed, b, e - s, G.z_dim, labels)
            with torch.no_grad(), seeded_torch(seed, b, device):
                for buf in noise:  # fresh noise per batch, shared by both renders (official)
                    buf.copy_(torch.randn_like(buf))
                ws = G.mapping(torch.from_numpy(z).to(device), torch.from_numpy(c).to(device),
                               **(mapping_kwargs or {}))
                sums += batch_sums(G, ws, kind, rng, synthesis_kwargs)
            bar.update((e - s) * group.num_processes)
    (total,) = sum_arrays([sums], group)
    return psnr_from_sums(float(total[0]), float(total[1]))
