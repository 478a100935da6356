"""Mean power spectra of images (Karras et al. 2021, "Alias-Free GANs", Sec. 4 and Fig. 3), as pure functions.

Each image is whitened with the dataset's mean and standard deviation (one pair for all pixels and
channels), multiplied by a separable 2-D Kaiser window of unit energy, zero-padded `interp` times, and its
squared FFT magnitude averaged over channels and images, in float64:

    P(u, v) = E_images mean_c |FFT_{interp * S}[ w(x, y) * (I_c(x, y) - mean) / std ](u, v)|^2

With unit window energy (sum w^2 = 1), whitened white noise has P = 1 (0 dB) at every frequency, so the
plots read as "power relative to white noise of the same variance". A heatmap shows 10 log10 P with the
zero frequency in the middle, optionally Gaussian-smoothed; slices follow it along 0° and 45°.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.ndimage
import torch

HEATMAP_LEVELS_DB = (-40.0, 20.0)   # official colour range of the heatmap
SLICE_RANGE_DB = (-50.0, 30.0)      # official y range of the slice plots
MAX_FFT_BYTES = 1 << 29             # complex128 FFT scratch per chunk (~512 MiB)


def kaiser_window_2d(size: int, beta: float = 8.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size, size] float64 outer product of a symmetric Kaiser window with itself, scaled to unit energy."""
    w = torch.kaiser_window(size, periodic=False, beta=beta, dtype=torch.float64, device=device)
    w = w / w.square().sum().sqrt()  # 1-D unit energy -> the outer product has unit energy too
    return torch.outer(w, w)


def image_moments(images: Iterable[torch.Tensor]) -> tuple[float, float, int]:
    """(mean, std, number of images) over every pixel and channel of batches [NCHW] (uint8 or float)."""
    count = total = total_sq = 0.0
    n = 0
    for batch in images:
        x = batch.to(torch.float64)
        count += x.numel()
        total += float(x.sum())
        total_sq += float(x.square().sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError("no images")
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean**2, 0.0))), n


def power_spectrum_sum(images: torch.Tensor, mean: float, std: float, window: torch.Tensor, interp: int
                       ) -> torch.Tensor:
    """[S, S] float64, S = interp * size: the channel-mean power spectra of a batch [NCHW], summed over images."""
    n, c, h, w = images.shape
    if h != w or window.shape != (h, w):
        raise ValueError(f"square images matching the window expected, got {h}x{w} and {tuple(window.shape)}")
    size = h * interp
    out = torch.zeros([size, size], dtype=torch.float64, device=images.device)
    chunk = max(1, MAX_FFT_BYTES // (16 * c * size * size))  # images per FFT call
    for start in range(0, n, chunk):
        x = (images[start:start + chunk].to(torch.float64) - mean) / std * window  # [nCHW]
        x = torch.nn.functional.pad(x, [0, size - w, 0, size - h])  # zero-pad to interp x the size
        out += torch.fft.fftn(x, dim=[2, 3]).abs().square().mean(dim=1).sum(dim=0)
    return out


def mean_power_spectrum(images: Iterable[torch.Tensor], mean: float, std: float, beta: float = 8.0,
                        interp: int = 4) -> tuple[np.ndarray, int, int]:
    """(spectrum [S, S] float64, image size, number of images) averaged over batches [NCHW] of one size."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    total: torch.Tensor | None = None
    window: torch.Tensor | None = None
    n = 0
    for batch in images:
        if window is None:
            window = kaiser_window_2d(batch.shape[-1], beta, device=batch.device)
        part = power_spectrum_sum(batch, mean, std, window, interp)
        total = part if total is None else total + part
        n += batch.shape[0]
    if total is None or window is None:
        raise ValueError("no images")
    return (total / n).cpu().numpy(), int(window.shape[0]), n


def heatmap_db(spectrum: np.ndarray, image_size: int, smooth: float = 1.25) -> np.ndarray:
    """[S+1, S+1] 10 log10 P with the zero frequency at the centre, axes running from -fs/2 to +fs/2 inclusive
    (the first row and column are repeated at the end), Gaussian-smoothed by `smooth` input pixels."""
    hmap = np.fft.fftshift(10 * np.log10(spectrum))
    hmap = np.concatenate([hmap, hmap[:1, :]], axis=0)
    hmap = np.concatenate([hmap, hmap[:, :1]], axis=1)
    if smooth > 0:
        sigma = spectrum.shape[0] / image_size * smooth  # in spectrum bins
        hmap = scipy.ndimage.gaussian_filter(hmap, sigma=sigma, mode="nearest")
    return hmap


def frequency_axis(hmap_size: int, image_size: int) -> np.ndarray:
    """Cycles per image of the heatmap rows/columns: -image_size/2 .. +image_size/2."""
    return np.linspace(-0.5, 0.5, num=hmap_size, endpoint=True) * image_size


def spectrum_slices(hmap: np.ndarray, image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'0': (freqs, dB), '45': (freqs, dB)}: the heatmap from the centre along +x and along the diagonal,
    frequencies in cycles per image (the diagonal reaches image_size / sqrt(2))."""
    centre = hmap.shape[0] // 2
    idx = np.arange(centre, hmap.shape[0])
    num = hmap.shape[0] // 2 + 1
    return {
        "0": (np.linspace(0, image_size / 2, num=num), hmap[centre, idx]),
        "45": (np.linspace(0, image_size / np.sqrt(2), num=num), hmap[idx, idx]),
    }
