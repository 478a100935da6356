"""Adaptive discriminator augmentation: the augmentation pipeline of StyleGAN2-ADA.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data", Appendix B.
Every image the discriminator sees (real or generated) goes through `AugmentPipe`, where each
transform fires independently per sample with probability ``p * multiplier``. The transforms are
chosen so that they do not *leak* (Sec. 2.2): as long as ``p < 1`` enough of the original
distribution remains that G cannot satisfy D by producing augmented-looking images. Leak-free also
means that the geometric transforms must not blur or alias, hence the wavelet-filtered 2x domain
below.

Stages, in the order they run (and in the paper's order):

1. pixel blitting   -- x-flip, 90-degree rotations, integer translation;
2. general geometry -- isotropic scale, rotation, anisotropic scale, rotation, fractional translation,
   composed into one 3x3 matrix per sample and resampled once (with the integer shift);
3. color            -- brightness, contrast, luma flip, hue rotation, saturation as one 4x4 matrix;
4. image-space filtering -- random gains for four frequency bands;
5. corruptions      -- additive RGB noise, cutout.

Constructor arguments, buffer names (``p``, ``Hz_geom``, ``Hz_fbank``), random distributions and the
`debug_percentile` semantics follow the official implementation, so official pickles' augment
kwargs and state dicts map 1:1 and the same parameters give the same images. The order in which
random numbers are drawn is not the official one.

Deliberate deviations from the official code:
- x-flips and quarter turns are exact pixel permutations. The official pipe folds them into the
  resampling matrix, where the asymmetric sym6 filter meets itself reversed: its flipped images are
  off by ~1e-2 on smooth content (a sub-pixel shift) and ~0.7 on white noise. Everything else agrees
  with the official pipe to ~1e-6 for the same parameters;
- with ``p == 0`` (and no `debug_percentile`), or when no sample drew a geometric transform, nothing
  is resampled; the official pipe still runs the identity resampling (costs time, moves ~1e-6);
- image-space filtering works on images smaller than its 43-tap filter (the official reflect
  padding needs at least 22 px) by reflecting repeatedly, which is the same symmetric extension;
- `grid_sample` comes straight from PyTorch, which supports double backward nowadays.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ops import downsample2d, setup_filter, upsample2d

# Low-pass decomposition filters of two Daubechies symlets (published coefficients, e.g. as
# tabulated by PyWavelets). sym6 does the 2x resampling of the geometric transforms: an orthogonal
# filter, so upsampling and then downsampling with it is the identity. sym2 seeds the filter bank.
WAVELETS: dict[str, tuple[float, ...]] = {
    "sym2": (
        -0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025,
    ),
    "sym6": (
        0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
    ),
}  # fmt: skip

# Relative power of the four filter-bank bands in natural images (roughly 1/f: the lowest octave
# holds most of it). Used to renormalise the random band gains so the total power stays put.
_EXPECTED_BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)

# The presets of the official train.py (--augpipe): probability multipliers, all other
# arguments at their defaults. Letters in order: b(lit), g(eom), c(olor), f(ilter), n(oise),
# c(utout).
_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
AUGPIPE_SPECS: dict[str, dict[str, float]] = {
    "blit": dict(_BLIT),
    "geom": dict(_GEOM),
    "color": dict(_COLOR),
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": {**_BLIT, **_GEOM},
    "bgc": {**_BLIT, **_GEOM, **_COLOR},
    "bgcf": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1},
    "bgcfn": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1},
    "bgcfnc": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1, "cutout": 1},
}

_BLIT_KEYS = ("xflip", "rotate90", "xint")
_GEOM_KEYS = ("scale", "rotate_pre", "aniso", "rotate_post", "xfrac")
_COLOR_KEYS = ("brightness", "contrast", "lumaflip", "hue", "saturation")


# ---------------------------------------------------------------------------------------------
# Filters


def octave_filter_bank(lowpass: tuple[float, ...] | np.ndarray, num_bands: int = 4) -> np.ndarray:
    """Symmetric FIR filters that split a signal into `num_bands` octaves, lowest band first.

    With H(z) an orthogonal wavelet low-pass, L(z) = H(z) H(1/z) / 2 and B(z) = H(-z) H(-1/z) / 2 are
    a power-complementary half-band pair (L + B = 1). Octave k, counted from the top, is the
    high-pass dilated to that scale after the low-passes of all finer scales:
    top = B(z), next = L(z) B(z^2), next = L(z) L(z^2) B(z^4), ..., and the lowest band is the
    product of all the low-passes. The bands telescope, so they sum to a unit impulse: all-ones
    gains leave an image unchanged. Returns [num_bands, taps], float64, each row centred.
    """
    h = np.asarray(lowpass, dtype=np.float64)
    h_mirror = h * (-1.0) ** np.arange(h.size)  # H(-z): the quadrature-mirror high-pass
    half_lo = np.convolve(h, h[::-1]) / 2
    half_hi = np.convolve(h_mirror, h_mirror[::-1]) / 2

    def dilate(f: np.ndarray, factor: int) -> np.ndarray:  # f(z) -> f(z^factor)
        out = np.zeros((f.size - 1) * factor + 1)
        out[::factor] = f
        return out

    bands = []  # highest octave first
    smooth = np.ones(1)
    for level in range(num_bands - 1):
        bands.append(np.convolve(smooth, dilate(half_hi, 2**level)))
        smooth = np.convolve(smooth, dilate(half_lo, 2**level))
    bands.append(smooth)
    taps = max(b.size for b in bands)
    bank = np.zeros([num_bands, taps])
    for row, band in enumerate(reversed(bands)):
        start = (taps - band.size) // 2
        bank[row, start : start + band.size] = band
    return bank


def _reflect_pad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """Reflect-pad [x0, x1, y0, y1], also by more than the image size (mirror repeatedly)."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"reflection padding needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    pads = list(pads)
    while any(pads):
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


def _reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Fold integer positions into [0, size) by mirroring about the edge pixels, like reflect padding."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = torch.remainder(i, period)
    return torch.where(i < size, i, period - i)


def _debug_choice(q: torch.Tensor, num_choices: int) -> torch.Tensor:
    """Choice at percentile q of {0, ..., num_choices - 1}; q = 1 gives the last (the official
    floor(q * k) would give k there, e.g. an x-scale of -3 for the flip)."""
    return torch.clamp(torch.floor(q * num_choices), max=num_choices - 1)


# ---------------------------------------------------------------------------------------------
# Batched homogeneous matrices. Entries are Python numbers or [N] tensors.


def _matrix(rows: list[list[Any]], batch_size: int, device: torch.device) -> torch.Tensor:
    """[N, R, C] float32 from rows of scalars / [N] tensors."""
    entries = [torch.as_tensor(e, dtype=torch.float32, device=device).expand(batch_size) for row in rows for e in row]
    return torch.stack(entries, dim=-1).reshape(batch_size, len(rows), len(rows[0]))


def _scale2d(sx: Any, sy: Any, n: int, device: torch.device) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n, device)


def _translate2d(tx: Any, ty: Any, n: int, device: torch.device) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n, device)


def _chain(*mats: torch.Tensor | None) -> torch.Tensor | None:
    """Product of the given matrices, skipping None; None if all are None."""
    out = None
    for m in mats:
        if m is not None:
            out = m if out is None else out @ m
    return out


def _rotate2d(theta: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], n, device)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class AugmentParams:
    """Per-sample random choices of one `AugmentPipe` call.

    `values` holds the strengths in the units the transforms use (identity where a sample did not
    draw the transform); `applied` says which samples drew it ([N] bool). Only enabled transforms
    (multiplier > 0) have entries. Keys: xflip (0/1), rotate90 (quarter turns 0-3), xint ([N, 2],
    relative to the image size, rounded to whole pixels when applied), scale, rotate_pre /
    rotate_post (radians), aniso, xfrac ([N, 2], relative to the image size), brightness,
    contrast, lumaflip (0/1), hue (radians), saturation, imgfilter (band gains [N, 4]), noise (sigma),
    cutout_size / cutout_center ([N, 2], relative to the image size).
    """

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    applied: dict[str, torch.Tensor] = field(default_factory=dict)


class AugmentPipe(torch.nn.Module):
    """The ADA augmentation pipeline; every transform is off until its multiplier is set > 0.

    The buffer ``p`` is the overall probability that ADA tunes; a transform with multiplier m fires
    per sample with probability ``m * p``. Like the official class, ``p`` starts at 1 (the training
    loop overwrites it); `make_augment_pipe` sets it explicitly.
    """

    def __init__(
        self,
        # Pixel blitting.
        xflip: float = 0,                   # Probability multiplier for x-flip.
        rotate90: float = 0,                # Probability multiplier for 90-degree rotations.
        xint: float = 0,                    # Probability multiplier for integer translation.
        xint_max: float = 0.125,            # Range of integer translation, relative to image size.
        # General geometric transforms.
        scale: float = 0,                   # Probability multiplier for isotropic scaling.
        rotate: float = 0,                  # Probability multiplier for arbitrary rotation.
        aniso: float = 0,                   # Probability multiplier for anisotropic scaling.
        xfrac: float = 0,                   # Probability multiplier for fractional translation.
        scale_std: float = 0.2,             # Log2 standard deviation of isotropic scaling.
        rotate_max: float = 1,              # Range of arbitrary rotation, 1 = full circle.
        aniso_std: float = 0.2,             # Log2 standard deviation of anisotropic scaling.
        xfrac_std: float = 0.125,           # Std of fractional translation, relative to image size.
        # Color transforms.
        brightness: float = 0,              # Probability multiplier for brightness.
        contrast: float = 0,                # Probability multiplier for contrast.
        lumaflip: float = 0,                # Probability multiplier for luma flip.
        hue: float = 0,                     # Probability multiplier for hue rotation.
        saturation: float = 0,              # Probability multiplier for saturation.
        brightness_std: float = 0.2,        # Standard deviation of the brightness offset.
        contrast_std: float = 0.5,          # Log2 standard deviation of contrast.
        hue_max: float = 1,                 # Range of hue rotation, 1 = full circle.
        saturation_std: float = 1,          # Log2 standard deviation of saturation.
        # Image-space filtering.
        imgfilter: float = 0,               # Probability multiplier for image-space filtering.
        imgfilter_bands: tuple[float, ...] | list[float] = (1, 1, 1, 1),  # Multipliers per frequency band.
        imgfilter_std: float = 1,           # Log2 standard deviation of the band gains.
        # Image-space corruptions.
        noise: float = 0,                   # Probability multiplier for additive RGB noise.
        cutout: float = 0,                  # Probability multiplier for cutout.
        noise_std: float = 0.1,             # Standard deviation of additive RGB noise.
        cutout_size: float = 0.5,           # Side of the cutout square, relative to image size.
    ) -> None:  # fmt: skip
        super().__init__()
        args = {name: value for name, value in locals().items() if name in _INIT_DEFAULTS}
        args["imgfilter_bands"] = list(imgfilter_bands)
        # Like the official pickles, remember only what differs from the defaults: for a preset
        # that is exactly its AUGPIPE_SPECS entry, and AugmentPipe(**init_kwargs) rebuilds the pipe.
        self.init_kwargs: dict[str, Any] = {k: v for k, v in args.items() if v != _INIT_DEFAULTS[k]}
        for name, value in args.items():
            setattr(self, name, [float(b) for b in value] if name == "imgfilter_bands" else float(value))

        self.register_buffer("p", torch.ones([]))
        # sym6, normalised and separable (12 taps), as ops.upsample2d / downsample2d want it.
        self.register_buffer("Hz_geom", setup_filter(list(WAVELETS["sym6"])))
        self.register_buffer("Hz_fbank", torch.as_tensor(octave_filter_bank(WAVELETS["sym2"]), dtype=torch.float32))
        if len(self.imgfilter_bands) != self.Hz_fbank.shape[0]:
            raise ValueError(f"imgfilter_bands needs {self.Hz_fbank.shape[0]} entries, got {len(self.imgfilter_bands)}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.init_kwargs.items())

    # -----------------------------------------------------------------------------------------
    # Random choices

    def sample_params(
        self,
        batch_size: int,
        num_channels: int,
        device: torch.device | str | None = None,
        debug_percentile: float | torch.Tensor | None = None,
    ) -> AugmentParams:
        """Draw every enabled transform's strength for `batch_size` samples.

        With `debug_percentile` in [0, 1] every enabled transform fires for every sample, at the
        strength at that percentile of its range (the official convention, kept for visual checks;
        e.g. normal draws use erfinv(2q - 1) * std).
        """
        device = torch.device(device) if device is not None else self.p.device
        n = batch_size
        q = None if debug_percentile is None else torch.as_tensor(debug_percentile, dtype=torch.float32, device=device)
        params = AugmentParams()

        def draw(
            name: str, multiplier: float | torch.Tensor, value: torch.Tensor, identity: float, debug: Any = None
        ) -> None:
            # A sample draws the transform with probability multiplier * p; the others keep the
            # identity value. p stays a tensor, so nothing here waits for the device.
            prob = multiplier * self.p if not isinstance(multiplier, torch.Tensor) else multiplier
            gate = torch.rand([n], device=device) < prob  # [N]
            if q is not None:
                value = torch.as_tensor(debug, dtype=torch.float32, device=device).expand_as(value).clone()
                gate = torch.ones_like(gate)
            mask = gate.reshape([n] + [1] * (value.ndim - 1))
            params.values[name] = torch.where(mask, value, torch.full_like(value, identity))
            params.applied[name] = gate

        def uniform(*shape: int) -> torch.Tensor:  # U(-1, 1)
            return torch.rand([n, *shape], device=device) * 2 - 1

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn([n, *shape], device=device)

        # Debug strengths: percentile q of the range ("uniform" draws) or erfinv(2q - 1) ("normal").
        qu = None if q is None else q * 2 - 1
        qn = None if q is None else torch.erfinv(q * 2 - 1)

        # Pixel blitting.
        if self.xflip > 0:
            draw("xflip", self.xflip, torch.randint(0, 2, [n], device=device).float(), 0,
                 None if q is None else _debug_choice(q, 2))  # fmt: skip
        if self.rotate90 > 0:
            draw("rotate90", self.rotate90, torch.randint(0, 4, [n], device=device).float(), 0,
                 None if q is None else _debug_choice(q, 4))  # fmt: skip
        if self.xint > 0:
            # Drawn relative to the size; rounded to whole pixels when the matrix is built.
            draw("xint", self.xint, uniform(2) * self.xint_max, 0, None if q is None else qu * self.xint_max)

        # General geometric transforms. Rotation is split into two independent draws (before and
        # after the anisotropic scale) whose union has probability rotate * p.
        if self.scale > 0:
            draw("scale", self.scale, torch.exp2(normal() * self.scale_std), 1,
                 None if q is None else torch.exp2(qn * self.scale_std))  # fmt: skip
        if self.rotate > 0:
            p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))  # 1 - (1 - p_rot)^2 = rotate * p
            theta_max = np.pi * self.rotate_max
            draw("rotate_pre", p_rot, uniform() * theta_max, 0, None if q is None else qu * theta_max)
        if self.aniso > 0:
            draw("aniso", self.aniso, torch.exp2(normal() * self.aniso_std), 1,
                 None if q is None else torch.exp2(qn * self.aniso_std))  # fmt: skip
        if self.rotate > 0:
            # Official debug convention: only the pre-rotation shows the percentile.
            draw("rotate_post", p_rot, uniform() * theta_max, 0, None if q is None else 0.0)
        if self.xfrac > 0:
            draw("xfrac", self.xfrac, normal(2) * self.xfrac_std, 0, None if q is None else qn * self.xfrac_std)

        # Color transforms; hue and saturation need three channels.
        if self.brightness > 0:
            draw("brightness", self.brightness, normal() * self.brightness_std, 0,
                 None if q is None else qn * self.brightness_std)  # fmt: skip
        if self.contrast > 0:
            draw("contrast", self.contrast, torch.exp2(normal() * self.contrast_std), 1,
                 None if q is None else torch.exp2(qn * self.contrast_std))  # fmt: skip
        if self.lumaflip > 0:
            draw("lumaflip", self.lumaflip, torch.randint(0, 2, [n], device=device).float(), 0,
                 None if q is None else _debug_choice(q, 2))  # fmt: skip
        if self.hue > 0 and num_channels > 1:
            hue_max = np.pi * self.hue_max
            draw("hue", self.hue, uniform() * hue_max, 0, None if q is None else qu * hue_max)
        if self.saturation > 0 and num_channels > 1:
            draw("saturation", self.saturation, torch.exp2(normal() * self.saturation_std), 1,
                 None if q is None else torch.exp2(qn * self.saturation_std))  # fmt: skip

        # Image-space filtering: each band is boosted or cut independently.
        if self.imgfilter > 0:
            gains = []
            for band, band_strength in enumerate(self.imgfilter_bands):
                debug_gain = None
                if q is not None:
                    debug_gain = torch.exp2(qn * self.imgfilter_std) if band_strength > 0 else torch.ones([])
                draw(f"imgfilter{band}", self.imgfilter * band_strength,
                     torch.exp2(normal() * self.imgfilter_std), 1, debug_gain)  # fmt: skip
                gains.append(params.values.pop(f"imgfilter{band}"))
            applied = [params.applied.pop(f"imgfilter{band}") for band in range(len(gains))]
            params.values["imgfilter"] = self._normalize_band_gains(torch.stack(gains, dim=1))
            params.applied["imgfilter"] = torch.stack(applied, dim=1).any(dim=1)

        # Corruptions.
        if self.noise > 0:
            # |N(0, 1)| * std; its debug quantile is that of the half-normal, erfinv(q) * std.
            draw("noise", self.noise, normal().abs() * self.noise_std, 0,
                 None if q is None else torch.erfinv(q) * self.noise_std)  # fmt: skip
        if self.cutout > 0:
            size = torch.full([n, 2], self.cutout_size, device=device)
            draw("cutout_size", self.cutout, size, 0, None if q is None else self.cutout_size)
            center = torch.rand([n, 2], device=device)
            params.values["cutout_center"] = center if q is None else q.expand_as(center).clone()
            params.applied["cutout"] = params.applied.pop("cutout_size")
        return params

    @staticmethod
    def _normalize_band_gains(t: torch.Tensor) -> torch.Tensor:
        """Combine per-band gains [N, B] so that a 1/f image keeps its expected power.

        Each band's boost is applied as its own gain vector (t_i at band i, 1 elsewhere) divided by
        that vector's RMS under the expected power spectrum e; multiplying those B vectors gives
        g_j = t_j / prod_i sqrt(1 - e_i + e_i t_i^2), since the e_i sum to one.
        """
        e = torch.as_tensor(_EXPECTED_BAND_POWER, dtype=t.dtype, device=t.device)
        norms = torch.sqrt(1 - e + e * t.square())  # [N, B]
        return t / norms.prod(dim=1, keepdim=True)

    # -----------------------------------------------------------------------------------------
    # Applying the choices

    def forward(self, images: torch.Tensor, debug_percentile: float | torch.Tensor | None = None) -> torch.Tensor:
        """Augment a batch [NCHW]; differentiable w.r.t. `images` (twice, for R1 on reals)."""
        if not (isinstance(images, torch.Tensor) and images.ndim == 4):
            raise ValueError("images must be a 4-D tensor [N, C, H, W]")
        # One host read of p per call: p == 0 (the start of ADA) costs nothing and changes nothing.
        if debug_percentile is None and float(self.p) == 0:
            return images
        n, c = images.shape[:2]
        params = self.sample_params(n, c, images.device, debug_percentile)
        return self.apply_params(images, params)

    def apply_params(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Run the transforms chosen in `params` on `images` [NCHW]."""
        v = params.values
        if any(k in v for k in _BLIT_KEYS + _GEOM_KEYS):
            images = self._spatial(images, v)
        if any(k in v for k in _COLOR_KEYS):
            images = self._color(images, self._color_matrix(v, images.shape[0], images.device))
        if "imgfilter" in v:
            images = self._filter(images, v["imgfilter"])
        if "noise" in v:
            sigma = v["noise"].to(images.dtype).reshape(-1, 1, 1, 1)
            images = images + torch.randn_like(images) * sigma
        if "cutout_size" in v:
            images = images * self._cutout_mask(v["cutout_size"], v["cutout_center"], images)
        return images

    def _spatial(self, images: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pixel blitting, then the general geometric transforms, resampling at most once.

        Flips and quarter turns are exact pixel permutations (a gather). They commute with
        reflection padding about the centre, so doing them first changes nothing else. The integer
        shift is a gather too when nothing needs resampling; otherwise it joins the resampler's
        matrix, exactly as in the official pipe (it commutes with the sym6 round trip, and what
        enters the frame is then the reflection of the original image, as there).
        """
        h, w = images.shape[-2:]
        device = images.device
        turn, shift = self._blit_matrices(v, h, w, device)
        g_inv = self._geometric_matrix(v, h, w, device)
        # Skipping an all-identity batch (common at small p) is exact; the resampler would wait
        # for the device anyway to size its padding.
        if g_inv is not None and torch.equal(g_inv, torch.eye(3, device=device).expand_as(g_inv)):
            g_inv = None
        if g_inv is None:
            return images if turn is None and shift is None else self._blit(images, _chain(turn, shift))
        if turn is not None:
            images = self._blit(images, turn)
        return self._geometric(images, _chain(shift, g_inv))

    @staticmethod
    def _blit_matrices(
        v: dict[str, torch.Tensor], height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Inverse maps [N, 3, 3] of (x-flip then quarter turns) and of the integer shift.

        Output pixel -> input pixel in centred coordinates; all entries are integers (the shift is
        rounded to whole pixels). None where the transform is disabled.
        """
        turn = shift = None
        if "xflip" in v:
            n = v["xflip"].shape[0]
            turn = _scale2d(1 - 2 * v["xflip"], 1, n, device)
        if "rotate90" in v:
            n = v["rotate90"].shape[0]
            turn = _chain(turn, _rotate2d(np.pi / 2 * v["rotate90"], n, device))
        if "xint" in v:
            t = v["xint"]
            shift = _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height), t.shape[0], device)
        return turn, shift

    @staticmethod
    def _blit(images: torch.Tensor, b_inv: torch.Tensor) -> torch.Tensor:
        """Move whole pixels of `images` [NCHW] as B_inv says; what enters the frame is reflected.

        A pure gather, so the result is exact: the official pipe folds the blits into the resampler
        below, where a flip or quarter turn meets the asymmetric sym6 filter reversed and picks up
        high-frequency errors (about 0.7 on unit white noise). Rotating a non-square image by a
        quarter turn reads reflected content where it does not fit.
        """
        n, c, h, w = images.shape
        device = images.device
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        cx, cy = (w - 1) / 2, (h - 1) / 2
        out_xy1 = torch.stack([xs.flatten() - cx, ys.flatten() - cy, torch.ones(h * w, device=device)])  # [3, HW]
        src = b_inv @ out_xy1  # [N, 3, HW]
        # Centred coordinates are integers or half-integers and stay so; round away float noise.
        sx = _reflect_index(torch.round(src[:, 0] + cx).long(), w)  # [N, HW]
        sy = _reflect_index(torch.round(src[:, 1] + cy).long(), h)
        index = (sy * w + sx)[:, None, :].expand(n, c, h * w)
        return images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)

    @staticmethod
    def _geometric_matrix(
        v: dict[str, torch.Tensor], height: int, width: int, device: torch.device
    ) -> torch.Tensor | None:
        """G_inv [N, 3, 3] of the general geometric transforms: output pixel -> input position.

        Each inverse multiplies on the right, so the last one listed (fractional translation) is
        the outermost forward transform. Coordinates are in pixels, centred on the image.
        """
        if not any(k in v for k in _GEOM_KEYS):
            return None
        n = next(v[k] for k in _GEOM_KEYS if k in v).shape[0]
        g = torch.eye(3, device=device).expand(n, 3, 3)
        if "scale" in v:
            g = g @ _scale2d(1 / v["scale"], 1 / v["scale"], n, device)
        if "rotate_pre" in v:
            g = g @ _rotate2d(v["rotate_pre"], n, device)
        if "aniso" in v:
            g = g @ _scale2d(1 / v["aniso"], v["aniso"], n, device)
        if "rotate_post" in v:
            g = g @ _rotate2d(v["rotate_post"], n, device)
        if "xfrac" in v:
            t = v["xfrac"]
            g = g @ _translate2d(-t[:, 0] * width, -t[:, 1] * height, n, device)
        return g

    def _geometric(self, images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
        """Resample `images` [NCHW] through G_inv once, in a 2x domain (App. B.2, "no leaks").

        Reflect-pad as far as the transformed image reaches, upsample 2x with sym6, bilinear
        sampling at the fine resolution, then low-pass and downsample with the same orthogonal
        filter. Identity parameters reproduce the input to float precision.
        """
        n, c, h, w = images.shape
        device = images.device
        filter_margin = self.Hz_geom.shape[0] // 4  # coarse pixels the 12-tap filter reaches (3)

        # How far the output's corners read outside the input (max over the batch), plus the
        # filter's reach; reflection cannot pad more than size - 1.
        cx, cy = (w - 1) / 2, (h - 1) / 2
        corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=device).t()  # [3, 4]
        reach = (g_inv @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * 4]
        reach = torch.cat([-reach, reach]).amax(dim=1)  # [left, top, right, bottom]
        reach = reach + torch.tensor([2 * filter_margin - cx, 2 * filter_margin - cy] * 2, device=device)
        upper = torch.tensor([w - 1, h - 1] * 2, dtype=reach.dtype, device=device)
        mx0, my0, mx1, my1 = (int(m) for m in reach.clamp(min=0).minimum(upper).ceil().tolist())

        # Reflect-pad; the padded image's centre moves, so shift the sampling positions to match.
        images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
        g_inv = _translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, n, device) @ g_inv

        # To the 2x domain: coordinates double, and the pivot moves by half a fine pixel to sit
        # where the even-length sym6 puts the fine samples (as in the official pipeline).
        images = upsample2d(images, self.Hz_geom, up=2)
        to_fine = _translate2d(-0.5, -0.5, n, device) @ _scale2d(2, 2, n, device)
        from_fine = _scale2d(0.5, 0.5, n, device) @ _translate2d(0.5, 0.5, n, device)
        g_inv = to_fine @ g_inv @ from_fine

        # Sample a fine output with the filter's margin around it, in grid_sample's [-1, 1] units
        # (align_corners=False: -1 and 1 are the outer pixel edges, 0 the centre).
        out_h, out_w = (h + 2 * filter_margin) * 2, (w + 2 * filter_margin) * 2
        in_h, in_w = images.shape[-2:]
        theta = _scale2d(2 / in_w, 2 / in_h, n, device) @ g_inv @ _scale2d(out_w / 2, out_h / 2, n, device)
        grid = F.affine_grid(theta[:, :2, :].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # Back to the original resolution; the time-reversed filter completes the orthogonal pair
        # and the negative padding crops the margin away.
        return downsample2d(images, self.Hz_geom, down=2, padding=-2 * filter_margin, flip_filter=True)

    @staticmethod
    def _color_matrix(v: dict[str, torch.Tensor], n: int, device: torch.device) -> torch.Tensor:
        """C [N, 4, 4] acting on homogeneous RGB (App. B.3); later transforms multiply on the left."""
        eye = torch.eye(4, device=device)
        luma = torch.tensor([1, 1, 1, 0], dtype=torch.float32, device=device) / np.sqrt(3)  # grey axis
        luma_proj = torch.outer(luma, luma)  # projection onto the grey axis
        m = eye.expand(n, 4, 4)
        if "brightness" in v:
            b = v["brightness"]
            m = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], n, device) @ m
        if "contrast" in v:
            # Scales about zero, the mid-grey of the [-1, 1] pixel range.
            s = v["contrast"]
            m = _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], n, device) @ m
        if "lumaflip" in v:
            # Householder reflection across the plane orthogonal to the grey axis: inverts luma,
            # keeps chroma.
            i = v["lumaflip"].reshape(n, 1, 1)
            m = (eye - 2 * luma_proj * i) @ m
        if "hue" in v:
            # Rotation about the grey axis (Rodrigues: I + sin K + (1 - cos) K^2, K = [axis]x).
            a = luma[:3].tolist()
            k = torch.tensor(
                [[0, -a[2], a[1], 0], [a[2], 0, -a[0], 0], [-a[1], a[0], 0, 0], [0, 0, 0, 0]], device=device
            )
            theta = v["hue"].reshape(n, 1, 1)
            m = (eye + torch.sin(theta) * k + (1 - torch.cos(theta)) * (k @ k)) @ m
        if "saturation" in v:
            # Keep the grey component, scale the chroma (orthogonal to grey) by s.
            s = v["saturation"].reshape(n, 1, 1)
            chroma_proj = eye - luma_proj
            chroma_proj[3, 3] = 0  # the homogeneous coordinate is not chroma
            m = (luma_proj + eye[3:4].t() @ eye[3:4] + chroma_proj * s) @ m
        return m

    @staticmethod
    def _color(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        m = m.to(images.dtype)
        flat = images.reshape(n, c, h * w)
        if c == 3:
            flat = m[:, :3, :3] @ flat + m[:, :3, 3:]
        elif c == 1:
            # Greyscale acts as R = G = B: average the three output rows, sum the input weights.
            row = m[:, :3, :].mean(dim=1, keepdim=True)  # [N, 1, 4]
            flat = flat * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
        else:
            raise ValueError(f"color transforms need RGB (3 channels) or greyscale (1 channel) images, got {c}")
        return flat.reshape(n, c, h, w)

    def _filter(self, images: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        """Equalise `images` [NCHW] with per-sample band `gains` [N, B] (App. B.4), separably."""
        n, c, h, w = images.shape
        taps = gains.to(images.dtype) @ self.Hz_fbank.to(images.dtype)  # [N, T]; symmetric taps
        taps = taps.repeat_interleave(c, dim=0)  # [N * C, T]: one filter per (sample, channel)
        r = self.Hz_fbank.shape[1] // 2
        x = _reflect_pad(images.reshape(1, n * c, h, w), [r, r, r, r])
        x = F.conv2d(x, taps[:, None, None, :], groups=n * c)  # along x
        x = F.conv2d(x, taps[:, None, :, None], groups=n * c)  # along y
        return x.reshape(n, c, h, w)

    @staticmethod
    def _cutout_mask(size: torch.Tensor, center: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W] mask that zeroes a size x size rectangle (relative units) around center."""
        h, w = images.shape[-2:]
        x = (torch.arange(w, device=images.device) + 0.5) / w  # pixel centres in [0, 1]
        y = (torch.arange(h, device=images.device) + 0.5) / h
        outside_x = (x[None, :] - center[:, :1]).abs() >= size[:, :1] / 2  # [N, W]
        outside_y = (y[None, :] - center[:, 1:]).abs() >= size[:, 1:] / 2  # [N, H]
        keep = outside_x[:, None, :] | outside_y[:, :, None]  # [N, H, W]
        return keep[:, None].to(images.dtype)


# Constructor defaults (imgfilter_bands as a list, the way init_kwargs stores it).
_INIT_DEFAULTS: dict[str, Any] = {
    name: list(param.default) if name == "imgfilter_bands" else param.default
    for name, param in inspect.signature(AugmentPipe.__init__).parameters.items()
    if name != "self"
}


def make_augment_pipe(name: str, p: float = 0.0) -> AugmentPipe:
    """The official --augpipe preset `name` (see `AUGPIPE_SPECS`) with augmentation probability `p`."""
    if name not in AUGPIPE_SPECS:
        raise ValueError(f"unknown augment pipe {name!r}; choose one of {', '.join(AUGPIPE_SPECS)}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    pipe = AugmentPipe(**AUGPIPE_SPECS[name])
    pipe.p.fill_(p)
    return pipe
