"""Heatmap and slice figures of mean power spectra, drawn with matplotlib's object API (no pyplot state, no
display) and written atomically; the format follows the file name (.png, .pdf, .svg)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.common.fileio import write_bytes_atomic
from stages.spectra.analysis import HEATMAP_LEVELS_DB, SLICE_RANGE_DB, frequency_axis, spectrum_slices

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(size: tuple[float, float], dpi: float) -> Figure:
    # matplotlib is imported here: the other commands, and importing the package, do not need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return write_bytes_atomic(path, buf.getvalue())


def save_heatmap(hmap: np.ndarray, image_size: int, path: str | os.PathLike, dpi: float = 100) -> Path:
    """Filled contours of the heatmap (dB) over frequencies in cycles per image, -40..20 dB in 5 dB steps."""
    fig = _figure((6, 4.8), dpi)
    ax = fig.add_subplot()
    freqs = frequency_axis(hmap.shape[0], image_size)
    ticks = np.linspace(freqs[0], freqs[-1], num=5)
    levels = np.linspace(*HEATMAP_LEVELS_DB, num=13)
    filled = ax.contourf(freqs, freqs, hmap, levels=levels, extend="both", cmap="Blues")
    ax.contour(freqs, freqs, hmap, levels=levels, linestyles="solid", linewidths=1, colors="midnightblue", alpha=0.2)
    ax.set_xlim(ticks[0], ticks[-1])
    ax.set_ylim(ticks[0], ticks[-1])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_aspect("equal")
    fig.colorbar(filled, ax=ax, ticks=levels, label="dB")
    return _save(fig, path)


def save_slices(hmaps: dict[str, np.ndarray], image_size: int, path: str | os.PathLike, dpi: float = 100) -> Path:
    """The 0° and 45° slices of each labelled heatmap side by side, -50..30 dB."""
    if not hmaps:
        raise ValueError("no heatmaps to plot")
    fig = _figure((12, 4.6), dpi)
    yticks = np.linspace(*SLICE_RANGE_DB, num=9)
    for col, angle in enumerate(("0", "45")):
        ax = fig.add_subplot(1, 2, col + 1)
        ax.set_title(f"{angle}\u00b0 slice")
        for label, hmap in hmaps.items():
            freqs, values = spectrum_slices(hmap, image_size)[angle]
            ax.plot(freqs, values, label=label)
        xticks = np.linspace(freqs[0], freqs[-1], num=9)
        ax.set_xticks(np.round(xticks) if angle == "45" else xticks)
        ax.set_xlim(xticks[0], xticks[-1])
        ax.set_ylim(*SLICE_RANGE_DB)
        ax.set_yticks(yticks)
        ax.grid(True)
        ax.legend(loc="upper right")
    return _save(fig, path)
