"""Frozen configs of the spectra commands, read from `spectra: {<command>: {...}}` in params.yaml (optional;
flags override it), mirroring the options of the official avg_spectra.py."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from stages.common.config import ConfigError

COMMANDS = ("stats", "calc", "heatmap", "slices")


@dataclasses.dataclass(frozen=True)
class SpectraConfig:
    """`stats`: the whitening mean and standard deviation of a source (the options shared with `calc`)."""

    SECTION: ClassVar[str] = "spectra"

    source: str | None = None   # dataset ZIP / image folder, or a network (snapshot, pickle, URL, run folder, name)
    num: int | None = None      # images to use; None = the whole dataset (required for a network)
    seed: int = 0               # dataset: random subset; network: first seed
    out: str | None = None      # also write the whitening {"mean", "std", "num_images"} to this JSON file
    batch_size: int = 16        # images per read / forward pass
    device: str = "cpu"         # cpu | cuda | cuda:N | auto

    def __post_init__(self) -> None:
        if self.num is not None and self.num < 1:
            raise ConfigError(f"--num must be >= 1, got {self.num}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if not 1 <= self.batch_size <= 4096:
            raise ConfigError(f"--batch-size must be in 1..4096, got {self.batch_size}")

    def require_source(self) -> str:
        if not self.source:
            raise ConfigError("--source is required: a dataset ZIP or folder, or a network")
        return self.source


@dataclasses.dataclass(frozen=True)
class CalcConfig(SpectraConfig):
    """`calc`: the mean power spectrum of a source -> .npz ({'spectrum' [S, S] float64, 'image_size'})."""

    dest: str = "out/spectra/spectrum.npz"
    mean: float | None = None   # whitening mean of the pixel values (0..255); None = measured first (as `stats`)
    std: float | None = None    # whitening standard deviation; None = measured first
    beta: float = 8.0           # Kaiser window shape
    interp: int = 4             # zero padding factor = frequency-domain interpolation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std is not None and not self.std > 0:
            raise ConfigError(f"--std must be > 0, got {self.std}")
        if self.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")
        if not 1 <= self.interp <= 16:
            raise ConfigError(f"--interp must be in 1..16, got {self.interp}")
        if not self.dest.lower().endswith(".npz"):
            raise ConfigError(f"--dest must end in .npz, got {self.dest!r}")


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """`heatmap` (one .npz) and `slices` (one or more .npz of the same size): a figure of saved spectra."""

    SECTION: ClassVar[str] = "spectra"

    npz: tuple[str, ...] = ()   # spectra written by `calc` (also given as positional arguments)
    save: str | None = None     # figure file (.png/.pdf/.svg); None = heatmap: <npz>.png, slices: slices.png beside
    dpi: float = 100
    smooth: float | None = None  # Gaussian smoothing in input pixels; None = 1.25 (heatmap) / 0 (slices), official

    def __post_init__(self) -> None:
        if not 1 <= self.dpi <= 2400:
            raise ConfigError(f"--dpi must be in 1..2400, got {self.dpi}")
        if self.smooth is not None and self.smooth < 0:
            raise ConfigError(f"--smooth must be >= 0, got {self.smooth}")


CONFIGS: dict[str, type[Any]] = {"stats": SpectraConfig, "calc": CalcConfig, "heatmap": PlotConfig,
                                 "slices": PlotConfig}

HELP = {
    "source": "dataset ZIP or image folder, or a network: snapshot, official pickle, URL, run folder or name",
    "num": "number of images (default: the whole dataset; required for a network)",
    "seed": "dataset: seed of the random subset; network: first seed",
    "out": "also write the whitening mean and std (and the image count) to this JSON file",
    "batch_size": "images per read / forward pass",
    "device": "cpu | cuda | cuda:N | auto",
    "dest": "where to write the spectrum (.npz)",
    "mean": "whitening mean (from `stats`; default: measured first)",
    "std": "whitening standard deviation (from `stats`; default: measured first)",
    "beta": "shape of the Kaiser window",
    "interp": "frequency-domain interpolation (zero padding) factor",
    "npz": "spectra written by `calc`, comma-separated (or as positional arguments)",
    "save": "figure file, .png/.pdf/.svg (default: heatmap <npz>.png, slices slices.png next to the first npz)",
    "dpi": "figure resolution",
    "smooth": "Gaussian smoothing in input pixels (default: heatmap 1.25, slices 0)",
}
