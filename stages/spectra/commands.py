"""The four commands as functions of their config: `stats`, `calc`, `heatmap`, `slices`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stages.common.device import resolve_device
from stages.common.errors import BadInput
from stages.common.fileio import atomic_open, write_json_atomic
from stages.spectra.analysis import heatmap_db, image_moments, mean_power_spectrum
from stages.spectra.config import CalcConfig, PlotConfig, SpectraConfig
from stages.spectra.sources import ImageSource, open_source

HEATMAP_SMOOTH = 1.25   # official defaults
SLICES_SMOOTH = 0.0


def _open(cfg: SpectraConfig) -> ImageSource:
    return open_source(cfg.require_source(), cfg.num, cfg.seed, cfg.batch_size, resolve_device(cfg.device))


def _progress(src: ImageSource, desc: str, enabled: bool) -> Any:
    bar = tqdm(total=src.num_images, desc=desc, unit="img", disable=not enabled, leave=False, file=sys.stderr)
    for batch in src.batches:
        yield batch
        bar.update(batch.shape[0])
    bar.close()


def run_stats(cfg: SpectraConfig, progress: bool = True) -> dict[str, float]:
    """Mean and standard deviation of every pixel value of the source; prints the official `--mean --std` line."""
    mean, std, n = image_moments(_progress(_open(cfg), "stats", progress))
    print(f"--mean={mean:g} --std={std:g}")
    result = {"mean": mean, "std": std, "num_images": n}
    if cfg.out:
        write_json_atomic(cfg.out, result)
    return result


def save_spectrum(path: str | os.PathLike, spectrum: np.ndarray, image_size: int) -> Path:
    """The official .npz layout ('spectrum' [S, S] float64, 'image_size'), written atomically."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, spectrum=spectrum, image_size=np.int64(image_size))
    return Path(path)


def load_spectrum(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(spectrum, image_size) of a `calc` output; a missing or foreign file is a one-line BadInput."""
    try:
        with np.load(path, allow_pickle=False) as data:  # data only: never unpickle
            spectrum, image_size = np.asarray(data["spectrum"], np.float64), int(data["image_size"])
    except FileNotFoundError:
        raise BadInput(f"spectrum file not found: {path}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"{path}: not a spectrum .npz from `calc` ({type(exc).__name__}: {exc})") from None
    if spectrum.ndim != 2 or spectrum.shape[0] != spectrum.shape[1] or image_size < 1:
        raise BadInput(f"{path}: 'spectrum' must be a square 2-D array, got shape {list(spectrum.shape)}")
    return spectrum, image_size


def run_calc(cfg: CalcConfig, progress: bool = True) -> Path:
    """Mean power spectrum of the source -> cfg.dest. Without --mean/--std they are measured in a first pass."""
    mean, std = cfg.mean, cfg.std
    if mean is None or std is None:
        measured = run_stats(SpectraConfig(source=cfg.source, num=cfg.num, seed=cfg.seed, batch_size=cfg.batch_size,
                                           device=cfg.device), progress)
        mean = measured["mean"] if mean is None else mean
        std = measured["std"] if std is None else std
        if std <= 0:
            raise BadInput(f"{cfg.source}: every pixel has the same value; no spectrum to whiten")
    spectrum, image_size, n = mean_power_spectrum(_progress(_open(cfg), "spectrum", progress), mean, std,
                                                  beta=cfg.beta, interp=cfg.interp)
    if cfg.out:
        write_json_atomic(cfg.out, {"mean": mean, "std": std, "num_images": n})
    return save_spectrum(cfg.dest, spectrum, image_size)


def _smooth(cfg: PlotConfig, default: float) -> float:
    return default if cfg.smooth is None else cfg.smooth


def run_heatmap(cfg: PlotConfig) -> Path:
    if len(cfg.npz) != 1:
        raise BadInput(f"heatmap takes exactly one .npz, got {len(cfg.npz)}")
    from stages.spectra.plots import save_heatmap

    spectrum, image_size = load_spectrum(cfg.npz[0])
    hmap = heatmap_db(spectrum, image_size, _smooth(cfg, HEATMAP_SMOOTH))
    return save_heatmap(hmap, image_size, cfg.save or Path(cfg.npz[0]).with_suffix(".png"), cfg.dpi)


def run_slices(cfg: PlotConfig) -> Path:
    if not cfg.npz:
        raise BadInput("slices needs at least one .npz")
    from stages.spectra.plots import save_slices

    hmaps: dict[str, np.ndarray] = {}
    sizes = set()
    for path in cfg.npz:
        spectrum, image_size = load_spectrum(path)
        sizes.add((image_size, spectrum.shape[0]))
        label = Path(path).stem if Path(path).stem not in hmaps else str(path)  # the legend names each file once
        hmaps[label] = heatmap_db(spectrum, image_size, _smooth(cfg, SLICES_SMOOTH))
    if len(sizes) > 1:
        raise BadInput(f"all .npz files must have the same resolution; got (image size, spectrum size) {sorted(sizes)}")
    (image_size, _), = sizes
    return save_slices(hmaps, image_size, cfg.save or Path(cfg.npz[0]).with_name("slices.png"), cfg.dpi)
