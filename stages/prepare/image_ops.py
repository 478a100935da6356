"""Decode one input image, normalise its pixel format, crop/resize it, and encode it as PNG.

Everything here runs inside worker processes and is a pure function of (payload, spec), so the
same input gives the same bytes whatever the worker count. The crop/resize arithmetic reproduces
the official StyleGAN2-ADA ``dataset_tool.py`` exactly (same Pillow filter, same integer crop
boxes, same rounding of the wide-crop height), so clean inputs decode to the same pixels.

Pixel-format rules (each applied conversion is returned as a note and lands in the report):

* RGB and L (grayscale) are kept as they are.
* ``1`` (bilevel) becomes L (0/255).
* RGBA / LA / PA / P-with-transparency are composited over a solid background
  (``background``, white by default) - dropping alpha would expose whatever colour the
  transparent pixels happen to store, usually black or garbage.
* P (palette) becomes RGB; the official tool silently stored palette *indices* as grayscale.
* CMYK, YCbCr, LAB, HSV become RGB with Pillow's conversion (no ICC colour management).
* 16-bit grayscale (I;16*, I) becomes 8-bit by keeping the high byte (``v >> 8``); Pillow itself
  already reduces 16-bit RGB PNGs that way, so both kinds follow one rule.
* EXIF orientation is applied by default (``exif_transpose``): a phone photo stored sideways
  would otherwise train sideways. The official tool ignores EXIF, so only EXIF-rotated files
  differ from its output; each one is reported as ``exif_rotated``.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from typing import Any, Literal

import numpy as np
import PIL.Image
import PIL.ImageOps

from stages.common.dataset import ArchiveReader, DatasetError
from stages.prepare.png import encode_png

RESAMPLE = {"box": PIL.Image.Resampling.BOX, "lanczos": PIL.Image.Resampling.LANCZOS}
PIL_BOMB_LIMIT = 2 * 89_478_485  # Pillow's own DecompressionBombError threshold

_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How every image of one run is converted; shipped once to each worker."""

    transform: str | None = None  # None | "center-crop" | "center-crop-wide"
    width: int | None = None  # output width (None = keep input width, scale mode only)
    height: int | None = None  # output height
    resize_filter: str = "lanczos"  # "box" | "lanczos", as in the official tool
    channels: int = 0  # 0 = keep 1 or 3 as decoded; 1 or 3 = convert to that count
    too_small: Literal["upscale", "skip"] = "upscale"  # what to do with images smaller than the target
    exif_transpose: bool = True  # apply the EXIF orientation tag
    background: int = 255  # gray level that alpha is composited over
    max_pixels: int = PIL_BOMB_LIMIT  # header width*height above this is refused before decoding
    compress_level: int = 0  # PNG deflate level; 0 = stored (the official format)


class ImageSkip(Exception):
    """The image cannot be used; ``reason`` is a stable report key, ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class ImageResult:
    png: bytes
    width: int
    height: int
    channels: int
    notes: list[str]  # conversions applied, e.g. ["alpha_composited", "upscaled"]


# Worker-local readers of ZIP sources (ArchiveReader re-opens after fork by itself).
_ZIP_READERS: dict[str, ArchiveReader] = {}


def read_payload(kind: str, payload: Any) -> bytes | np.ndarray:
    """Materialise a task payload: file path, (zip, member), raw bytes, or an HWC/HW uint8 array."""
    if kind == "path":
        with open(payload, "rb") as fh:
            return fh.read()
    if kind == "zip":
        zip_path, member = payload
        reader = _ZIP_READERS.get(zip_path) or _ZIP_READERS.setdefault(zip_path, ArchiveReader(zip_path))
        return reader.read(member)
    if kind in ("bytes", "array"):
        return payload
    raise ValueError(f"unknown payload kind {kind!r}")


def decode(data: bytes, spec: ImageSpec, notes: list[str]) -> PIL.Image.Image:
    """Decode encoded image bytes; every failure becomes an ImageSkip with a report reason."""
    if len(data) == 0:
        raise ImageSkip("empty_file", "zero bytes")
    try:
        img = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.UnidentifiedImageError as exc:
        raise ImageSkip("not_an_image", str(exc)) from None
    except Exception as exc:  # decoders raise many types (SyntaxError, struct.error, ...)
        raise ImageSkip("corrupt", f"{type(exc).__name__}: {exc}") from None
    # Header only so far: refuse decompression bombs before allocating the pixels.
    w, h = img.size
    if w * h > spec.max_pixels:
        raise ImageSkip("decompression_bomb", f"{w}x{h} = {w * h} pixels > max_pixels {spec.max_pixels}")
    if w == 0 or h == 0:
        raise ImageSkip("corrupt", f"empty image {w}x{h}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            img.load()
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc) else "corrupt"
        raise ImageSkip(reason, str(exc)) from None
    except Exception as exc:
        raise ImageSkip("corrupt", f"{type(exc).__name__}: {exc}") from None
    if spec.exif_transpose:
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a malformed EXIF block does not make the pixels unusable
            orientation = 1
        if orientation not in (1, None):
            img = PIL.ImageOps.exif_transpose(img)
            notes.append("exif_rotated")
    return img


def _composite(img: PIL.Image.Image, background: int) -> PIL.Image.Image:
    base_mode = "L" if img.mode in ("LA", "La") else "RGB"
    rgba = img.convert("LA" if base_mode == "L" else "RGBA")
    fill = background if base_mode == "L" else (background,) * 3
    out = PIL.Image.new(base_mode, img.size, fill)
    out.paste(rgba.convert(base_mode), mask=rgba.getchannel("A"))
    return out


def normalise_mode(img: PIL.Image.Image, spec: ImageSpec, notes: list[str]) -> PIL.Image.Image:
    """Bring any Pillow mode to L or RGB by the rules in the module docstring."""
    mode = img.mode
    if mode in ("RGB", "L"):
        pass
    elif mode == "1":
        img = img.convert("L")
        notes.append("bilevel_to_gray")
    elif mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in img.info):
        img = _composite(img.convert("RGBA") if mode in ("P", "PA") else img, spec.background)
        notes.append("alpha_composited")
    elif mode == "P":
        img = img.convert("RGB")
        notes.append("palette_to_rgb")
    elif mode == "CMYK":
        img = img.convert("RGB")
        notes.append("cmyk_to_rgb")
    elif mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
        notes.append(f"{mode.lower()}_to_rgb")
    elif mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img).astype(np.int64)
        img = PIL.Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
        notes.append("16bit_to_8bit")
    else:
        raise ImageSkip("unsupported_mode", f"Pillow mode {mode}")
    if spec.channels == 3 and img.mode == "L":
        img = img.convert("RGB")
        notes.append("gray_to_rgb")
    elif spec.channels == 1 and img.mode == "RGB":
        img = img.convert("L")  # ITU-R 601-2 luma, Pillow's rule
        notes.append("rgb_to_gray")
    return img


def transform(img: PIL.Image.Image, spec: ImageSpec, notes: list[str]) -> PIL.Image.Image:
    """Crop and resize exactly as the official tool does for the same flags."""
    resample = RESAMPLE[spec.resize_filter]
    w, h = img.size
    if spec.transform is None:
        ww = spec.width if spec.width is not None else w
        hh = spec.height if spec.height is not None else h
        if (ww, hh) == (w, h):
            return img
        if ww > w or hh > h:
            _too_small(spec, notes, f"{w}x{h} is smaller than {ww}x{hh}")
        return img.resize((ww, hh), resample)
    assert spec.width is not None and spec.height is not None
    if spec.transform == "center-crop":
        crop = min(w, h)
        if crop < spec.width or crop < spec.height:
            _too_small(spec, notes, f"{w}x{h} center crop {crop} < {spec.width}x{spec.height}")
        box = ((w - crop) // 2, (h - crop) // 2, (w + crop) // 2, (h + crop) // 2)
        return img.crop(box).resize((spec.width, spec.height), resample)
    if spec.transform == "center-crop-wide":
        # Python's round() on a float is round-half-even, the same as np.round in the official tool.
        ch = round(spec.width * h / w)
        if w < spec.width or ch < spec.height:
            # The official tool drops these too; no upscaling path exists for the wide crop.
            raise ImageSkip("too_small", f"{w}x{h} cannot fill {spec.width}x{spec.height} wide crop")
        img = img.crop((0, (h - ch) // 2, w, (h + ch) // 2)).resize((spec.width, spec.height), resample)
        canvas = PIL.Image.new(img.mode, (spec.width, spec.width), 0)  # black letterbox bars
        canvas.paste(img, (0, (spec.width - spec.height) // 2))
        return canvas
    raise ValueError(f"unknown transform {spec.transform!r}")


def _too_small(spec: ImageSpec, notes: list[str], detail: str) -> None:
    if spec.too_small == "skip":
        raise ImageSkip("too_small", detail)
    notes.append("upscaled")


def process(kind: str, payload: Any, spec: ImageSpec) -> ImageResult:
    """Full per-image pipeline: read, decode, normalise, transform, encode. Raises ImageSkip."""
    notes: list[str] = []
    try:
        data = read_payload(kind, payload)
    except (OSError, KeyError, DatasetError) as exc:
        raise ImageSkip("unreadable", f"{type(exc).__name__}: {exc}") from None
    if isinstance(data, np.ndarray):
        img = PIL.Image.fromarray(data, "RGB" if data.ndim == 3 else "L")
    else:
        img = decode(data, spec, notes)
    img = normalise_mode(img, spec, notes)
    img = transform(img, spec, notes)
    pixels = np.asarray(img)  # [H, W] or [H, W, 3]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return ImageResult(encode_png(pixels, spec.compress_level), img.width, img.height, channels, notes)


def gray_png_to_rgb(png: bytes, compress_level: int = 0) -> bytes:
    """Re-encode one of our grayscale PNGs as RGB (rare path: a gray image in an RGB dataset)."""
    with PIL.Image.open(io.BytesIO(png)) as img:
        return encode_png(np.asarray(img.convert("RGB")), compress_level)
