"""The `prepare:` section of params.yaml: how raw images become a dataset archive."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from stages.common.config import ConfigError
from stages.prepare import image_ops


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    SECTION: ClassVar[str] = "prepare"

    source: str = ""  # image folder, .zip, LMDB directory, or cifar-10/100-python.tar.gz
    dest: str = ""  # output .zip (or folder)
    max_images: int | None = None  # stop after this many images are written
    transform: Literal["center-crop", "center-crop-wide"] | None = None
    width: int | None = None  # output width
    height: int | None = None  # output height
    resize_filter: Literal["box", "lanczos"] = "lanczos"
    channels: int = 0  # 0 = auto (colour wins), 1 = grayscale, 3 = RGB
    too_small: Literal["upscale", "skip"] = "upscale"  # upscale = official behaviour, reported as fixed
    alpha_background: Literal["white", "black"] = "white"  # what transparent pixels become
    exif_transpose: bool = True  # apply EXIF orientation (the official tool does not)
    max_pixels: int = image_ops.PIL_BOMB_LIMIT  # larger headers are refused before decoding
    compress_level: int = 0  # PNG deflate level; 0 = uncompressed, as the official tool
    workers: int = 0  # decode/encode processes; 0 = all cores
    chunk_size: int = 0  # images per worker task; 0 = auto
    on_error: Literal["skip", "fail"] = "skip"  # fail = any skipped input aborts the run
    progress: bool = True  # tqdm bar on stderr (auto-off when not a terminal)

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("prepare.source is required")
        if not self.dest:
            raise ConfigError("prepare.dest is required")
        if self.max_images is not None and self.max_images <= 0:
            raise ConfigError("prepare.max_images must be positive")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"prepare.{name} must be positive")
        if self.transform is not None and (self.width is None or self.height is None):
            raise ConfigError(f"prepare: --transform {self.transform} needs both --width and --height")
        out = self.output_side
        if out is not None and (out & (out - 1)) != 0:
            raise ConfigError(f"prepare: output resolution {out} must be a power of two")
        if self.transform in (None, "center-crop") and self.width and self.height and self.width != self.height:
            raise ConfigError(f"prepare: output must be square, got --width {self.width} --height {self.height}")
        if self.transform == "center-crop-wide" and self.height > self.width:  # type: ignore[operator]
            raise ConfigError("prepare: center-crop-wide needs --height <= --width")
        if self.channels not in (0, 1, 3):
            raise ConfigError("prepare.channels must be 0 (auto), 1 or 3")
        if not 0 <= self.compress_level <= 9:
            raise ConfigError("prepare.compress_level must be in 0..9")
        if self.workers < 0 or self.chunk_size < 0:
            raise ConfigError("prepare.workers and prepare.chunk_size must be >= 0")
        if self.max_pixels <= 0:
            raise ConfigError("prepare.max_pixels must be positive")

    @property
    def output_side(self) -> int | None:
        """Side of the square output when the flags fix it, else None (decided by the first image)."""
        if self.transform is not None:
            return self.width
        if self.width is not None and self.height is not None:
            return self.width
        return None

    def image_spec(self, channels: int | None = None) -> image_ops.ImageSpec:
        return image_ops.ImageSpec(
            transform=self.transform,
            width=self.width,
            height=self.height,
            resize_filter=self.resize_filter,
            channels=self.channels if channels is None else channels,
            too_small=self.too_small,
            exif_transpose=self.exif_transpose,
            background=255 if self.alpha_background == "white" else 0,
            max_pixels=self.max_pixels,
            compress_level=self.compress_level,
        )


HELP = {
    "source": "input folder, .zip, LMDB dir, or cifar-10-python.tar.gz / cifar-100-python.tar.gz",
    "dest": "output .zip (or folder); an existing file must be a dataset ZIP",
    "max_images": "stop after this many images are written",
    "transform": "crop mode: center-crop | center-crop-wide",
    "width": "output width",
    "height": "output height",
    "resize_filter": "box | lanczos (official default)",
    "channels": "0 = auto (colour wins), 1 = grayscale, 3 = RGB",
    "too_small": "upscale (official) | skip",
    "alpha_background": "transparent pixels are composited over this",
    "exif_transpose": "apply the EXIF orientation (the official tool does not)",
    "max_pixels": "refuse larger images before decoding (bomb guard)",
    "compress_level": "PNG deflate level 0..9 (0 = uncompressed, official)",
    "workers": "worker processes, 0 = all cores",
    "chunk_size": "images per worker task, 0 = auto",
    "on_error": "skip (report) | fail (any skipped input aborts)",
    "progress": "progress bar on stderr",
}
