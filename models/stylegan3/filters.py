"""Lowpass filter design for the alias-free generator (Karras et al. 2021, Sec. 3.2 and Appendix C).

Every StyleGAN3 layer resamples its signal with windowed-sinc lowpass filters whose cutoff and
transition band follow the layer schedule (`models.stylegan3.schedule`). Two designs:

- separable: a 1-D Kaiser-windowed sinc applied along each axis (a square passband);
- radial (StyleGAN3-R, "rotation equivariance"): a 2-D jinc, the impulse response of an ideal
  lowpass with a *circular* passband, under a separable Kaiser window, so that the filter itself
  has no preferred orientation.

The results are stored as buffers (`up_filter`, `down_filter`) of the layers and therefore travel
with the weights; the design only runs when a network is built.
"""

from __future__ import annotations

import numpy as np
import scipy.signal
import scipy.special
import torch


def kaiser_beta_for(numtaps: int, width: float, fs: float) -> float:
    """Kaiser window shape giving the stopband attenuation that `numtaps` taps allow for a
    transition band of `width` (Kaiser's empirical formulas, as `scipy.signal.firwin` uses them)."""
    attenuation_db = scipy.signal.kaiser_atten(numtaps, width / (fs / 2))
    return float(scipy.signal.kaiser_beta(attenuation_db))


def _jinc_lowpass(numtaps: int, cutoff: float, fs: float) -> np.ndarray:
    """Ideal circular lowpass with cutoff `cutoff` (cycles per unit) sampled at `fs` on a centred
    `numtaps` x `numtaps` grid: h(r) = J1(2 pi fc r) / r, up to a constant that normalisation removes."""
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs  # tap positions, centred on the origin
    r = np.hypot(*np.meshgrid(x, x))  # [numtaps, numtaps]
    safe_r = np.where(r > 0, r, 1.0)
    # J1(z) ~ z / 2 near 0, so the centre tap (odd numtaps only) has the limit pi * fc.
    return np.where(r > 0, scipy.special.j1(2 * np.pi * cutoff * safe_r) / safe_r, np.pi * cutoff)


def design_lowpass_filter(
    numtaps: int,         # filter length (per axis); 1 = no filtering
    cutoff: float,        # cutoff frequency f_c
    width: float,         # transition band width (2 f_h)
    fs: float,            # sampling rate the filter runs at
    radial: bool = False,  # circular 2-D passband instead of a separable one
) -> torch.Tensor | None:
    """Kaiser-windowed lowpass filter as float32 taps: `[numtaps]` (separable), `[numtaps, numtaps]`
    (radial), or None for the identity (`numtaps == 1`). Normalised to unit DC gain."""
    if numtaps < 1:
        raise ValueError(f"numtaps must be >= 1, got {numtaps}")
    if numtaps == 1:
        return None
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)  # Kaiser-windowed sinc
        return torch.as_tensor(taps, dtype=torch.float32)
    window = np.kaiser(numtaps, kaiser_beta_for(numtaps, width, fs))
    taps = _jinc_lowpass(numtaps, cutoff, fs) * np.outer(window, window)
    taps /= taps.sum()
    return torch.as_tensor(taps, dtype=torch.float32)
