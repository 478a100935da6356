"""prepare: convert raw images into the official StyleGAN2-ADA dataset archive.

    python -m stages.prepare --source data/raw/cats --dest data/datasets/cats.zip \\
        --transform center-crop --width 256 --height 256

Flags match the official ``dataset_tool.py`` (``--source --dest --max-images --transform --width
--height --resize-filter``) and the output is its format: an uncompressed ZIP (or folder) of PNGs
``00000/img00000000.png`` (1000 per folder) plus ``dataset.json`` with ``{"labels": [[name, int],
...]}`` or ``{"labels": null}``. Clean inputs give the same pixels and labels as the official tool.

What differs, on purpose:

* Bad inputs (corrupt, truncated, empty, not an image, decompression bombs, too small, of another
  size, unlabelled in a labelled set) are skipped and listed with their reason in
  ``<dest>.report.json`` instead of aborting or being silently dropped; ``--on-error fail`` makes
  any of them fatal. Pixel-format conversions (alpha, palette, CMYK, 16-bit, EXIF rotation, gray
  in an RGB set) follow the rules in ``stages/prepare/image_ops.py`` and are listed as ``fixed``.
* Output names are consecutive over the images actually written (the official tool leaves gaps
  where its wide crop drops an image), and ``--max-images`` counts written images.
* Channel count (``channels: 0``): colour wins - if any image is colour the dataset is RGB and
  grayscale images are replicated to 3 channels; only an all-grayscale source gives a 1-channel
  dataset. Resolution without ``--width/--height``: the first usable image fixes it, images of
  another size are skipped (``size_mismatch``), and it must be a square power of two.
* The destination is written atomically and the ZIP is byte-for-byte reproducible.
* Decode, crop, resize and PNG encoding run in ``--workers`` processes over a bounded window, so
  memory does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from stages.common.config import ConfigError, add_params_argument, config_from_args
from stages.prepare import image_ops
from stages.prepare.destination import archive_name, open_destination, write_atomic_text
from stages.prepare.sources import Source, SourceError, Task, open_source

log = logging.getLogger("stages.prepare")

FATAL_SEVERITIES = ("skip",)  # "fixed" and "ignored" issues never stop a run, even with on_error=fail
MAX_LISTED_FIXES = 1000  # per reason; skipped inputs are always listed in full


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
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


class PrepareError(RuntimeError):
    """The run cannot produce a dataset (empty result, --on-error fail, unreconcilable inputs)."""


class _ColourFound(Exception):
    """A colour image arrived after grayscale ones were written: redo the pass as RGB."""


# ---------------------------------------------------------------------------------------------
# Report


class Report:
    """Counts and names of every input that was skipped, fixed or ignored, by reason."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        severities = ("skip", "fixed", "ignored")
        self.counts: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in severities}
        self.items: dict[str, dict[str, list[dict[str, str]]]] = {s: {} for s in self.counts}
        self.images_fixed = 0

    def issue(self, reason: str, name: str, detail: str, severity: str) -> None:
        self.counts[severity][reason] += 1
        listed = self.items[severity].setdefault(reason, [])
        if severity != "fixed" or len(listed) < MAX_LISTED_FIXES:
            listed.append({"name": name, "detail": detail})
        log.debug("%s %s: %s %s", severity, reason, name, detail)
        if severity in FATAL_SEVERITIES and self.on_error == "fail":
            raise PrepareError(f"{reason}: {name}: {detail} (--on-error fail)")

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_skipped": sum(self.counts["skip"].values()),
            "num_fixed": self.images_fixed,
            "num_ignored": sum(self.counts["ignored"].values()),
            "skipped": dict(sorted(self.counts["skip"].items())),
            "fixed": dict(sorted(self.counts["fixed"].items())),
            "ignored": dict(sorted(self.counts["ignored"].items())),
            "items": {
                "skipped": dict(sorted(self.items["skip"].items())),
                "fixed": dict(sorted(self.items["fixed"].items())),
                "ignored": dict(sorted(self.items["ignored"].items())),
            },
        }


# ---------------------------------------------------------------------------------------------
# Worker side. The spec is installed once per process by the pool initializer.

_SPEC: image_ops.ImageSpec | None = None


def _init_worker(spec: image_ops.ImageSpec) -> None:
    global _SPEC
    _SPEC = spec
    # Our header check (spec.max_pixels) is the bomb guard; Pillow's own would fire mid-decode.
    image_ops.PIL.Image.MAX_IMAGE_PIXELS = None


def _work(task: Task) -> image_ops.ImageResult | tuple[str, str]:
    assert _SPEC is not None
    try:
        return image_ops.process(task.kind, task.payload, _SPEC)
    except image_ops.ImageSkip as skip:
        return (skip.reason, skip.detail)


def _work_chunk(chunk: list[Task]) -> list[image_ops.ImageResult | tuple[str, str]]:
    return [_work(task) for task in chunk]


def _chunks(tasks: Iterator[Task], size: int) -> Iterator[list[Task]]:
    chunk: list[Task] = []
    for task in tasks:
        chunk.append(task)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_map(
    tasks: Iterator[Task], spec: image_ops.ImageSpec, workers: int, chunk_size: int
) -> Iterator[tuple[Task, image_ops.ImageResult | tuple[str, str]]]:
    """Process tasks in worker processes, yielding results in input order with bounded memory.

    Pool.imap would do the ordering, but its feeder thread drains the whole input iterator and its
    result queue grows without limit when the writer falls behind. A window of at most
    ``2 * workers + 2`` in-flight chunks keeps both ends bounded, so peak memory is independent of
    the dataset size.
    """
    if workers <= 1:
        _init_worker(spec)
        for task in tasks:
            yield task, _work(task)
        return
    pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(spec,))
    try:
        window: collections.deque[tuple[list[Task], Any]] = collections.deque()
        chunks = _chunks(tasks, chunk_size)
        exhausted = False
        while True:
            while not exhausted and len(window) < 2 * workers + 2:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                else:
                    window.append((chunk, pool.apply_async(_work_chunk, (chunk,))))
            if not window:
                break
            chunk, pending = window.popleft()
            yield from zip(chunk, pending.get())
    finally:
        pool.terminate()
        pool.join()


# ---------------------------------------------------------------------------------------------
# The conversion


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _run_pass(config: PrepareConfig, source: Source, channels: int, report: Report, workers: int) -> dict[str, Any]:
    """One pass over the source into a fresh temporary destination; commits only on success."""
    from tqdm import tqdm

    spec = config.image_spec(channels)
    chunk_size = config.chunk_size or (256 if source.kind.startswith("cifar") else 8)
    total = source.total if config.max_images is None else min(source.total, config.max_images)
    labels = array("q")
    target: tuple[int, int] | None = None  # (width, height) of the dataset once known
    dataset_channels = channels or None
    written = 0
    seen = 0
    with open_destination(config.dest) as dest:
        bar = tqdm(total=total, unit="img", disable=None if config.progress else True, file=sys.stderr, desc="prepare")
        try:
            results = _ordered_map(source.tasks(report.issue), spec, workers, chunk_size)
            for task, result in results:
                seen += 1
                if isinstance(result, tuple):
                    report.issue(result[0], task.name, result[1], "skip")
                    continue
                size = (result.width, result.height)
                if target is None:
                    if result.width != result.height or not _is_pow2(result.width):
                        report.issue(
                            "bad_resolution",
                            task.name,
                            f"{result.width}x{result.height} is not a square power of two; "
                            "use --width/--height or --transform",
                            "skip",
                        )
                        continue
                    target = size
                elif size != target:
                    report.issue(
                        "size_mismatch",
                        task.name,
                        f"{size[0]}x{size[1]} but the dataset is {target[0]}x{target[1]}; use --width/--height",
                        "skip",
                    )
                    continue
                png, notes = result.png, result.notes
                if dataset_channels is None:
                    dataset_channels = result.channels
                elif result.channels != dataset_channels:
                    if dataset_channels == 1:
                        raise _ColourFound(task.name)
                    png = image_ops.gray_png_to_rgb(png, config.compress_level)
                    notes = [*notes, "gray_to_rgb"]
                for note in notes:
                    report.issue(note, task.name, "", "fixed")
                report.images_fixed += bool(notes)
                dest.add(archive_name(written), png)
                if source.labelled:
                    assert task.label is not None
                    labels.append(task.label)
                written += 1
                bar.update(1)
                if config.max_images is not None and written >= config.max_images:
                    break
            if written == 0:
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.counts["skip"].items())) or "no inputs"
                raise PrepareError(f"no images written from {config.source} ({reasons}); see the report for names")
            entries = [[archive_name(i), int(lab)] for i, lab in enumerate(labels)] if source.labelled else None
            dest.add("dataset.json", json.dumps({"labels": entries}))
            dest.commit()
        finally:
            bar.close()
    assert target is not None and dataset_channels is not None
    return {
        "num_inputs_seen": seen,
        "num_written": written,
        "resolution": target[0],
        "channels": dataset_channels,
        "labelled": source.labelled,
        "num_classes": (max(labels) + 1) if len(labels) else 0,
    }


def _report_path(dest: str) -> Path:
    return Path(str(Path(dest)) + ".report.json")


def _log_path(dest: str) -> Path:
    return Path(str(Path(dest)) + ".log")


def prepare_dataset(config: PrepareConfig) -> dict[str, Any]:
    """Convert ``config.source`` into ``config.dest``; returns the summary also written to the report.

    Raises SourceError (unreadable source), PrepareError (nothing usable, or --on-error fail) or
    ConfigError. The destination is untouched unless the whole conversion succeeds.
    """
    workers = config.workers or len(os.sched_getaffinity(0))
    Path(config.dest).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(_log_path(config.dest), mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.DEBUG)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "status": "failed",
        "error": None,
        "source": config.source,
        "dest": config.dest,
        "config": dataclasses.asdict(config),
        "workers": workers,
    }
    report = Report(config.on_error)
    try:
        log.info("prepare %s -> %s with %d workers", config.source, config.dest, workers)
        source = open_source(config.source)
        summary["source_kind"] = source.kind
        channels, restarts = config.channels, 0
        while True:
            try:
                result = _run_pass(config, source, channels, report, workers)
                break
            except _ColourFound as found:
                # Colour wins: a grayscale start cannot hold this image, so redo everything as RGB.
                log.info("colour image %s after grayscale ones: restarting as RGB", found)
                channels, restarts = 3, restarts + 1
                report = Report(config.on_error)
        summary.update(result, status="ok", restarts=restarts)
    except (PrepareError, SourceError, ConfigError, FileExistsError) as exc:
        summary["error"] = str(exc)
        log.info("error: %s", exc)  # main() prints it once; the log file keeps it too
        raise
    finally:
        seconds = time.perf_counter() - started
        summary.update(report.as_dict())
        summary["seconds"] = round(seconds, 3)
        summary["images_per_second"] = round(summary.get("num_written", 0) / max(seconds, 1e-9), 2)
        write_atomic_text(_report_path(config.dest), json.dumps(summary, indent=2) + "\n")
        log.info(
            "%s: %s written, %s skipped %s, %s fixed %s, %.1f s",
            summary["status"],
            summary.get("num_written", 0),
            summary["num_skipped"],
            summary["skipped"],
            summary["num_fixed"],
            summary["fixed"],
            seconds,
        )
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous_level)
    return summary


# ---------------------------------------------------------------------------------------------
# CLI

_FIELDS = [f.name for f in dataclasses.fields(PrepareConfig)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stages.prepare",
        description="Convert images (folder, ZIP, LMDB, CIFAR-10/100 tarball) into a StyleGAN2-ADA dataset ZIP.",
    )
    add_params_argument(p)
    p.add_argument("--source", help="input folder, .zip, LMDB dir, or cifar-10-python.tar.gz")
    p.add_argument("--dest", help="output .zip or folder")
    p.add_argument("--max-images", dest="max_images", type=int, help="stop after this many images are written")
    p.add_argument("--transform", choices=["center-crop", "center-crop-wide"], help="crop mode")
    p.add_argument("--width", type=int, help="output width")
    p.add_argument("--height", type=int, help="output height")
    p.add_argument("--resize-filter", dest="resize_filter", choices=["box", "lanczos"], help="default lanczos")
    p.add_argument("--channels", type=int, choices=[0, 1, 3], help="0 = auto (colour wins), 1, or 3")
    p.add_argument("--too-small", dest="too_small", choices=["upscale", "skip"], help="default upscale")
    p.add_argument("--alpha-background", dest="alpha_background", choices=["white", "black"])
    p.add_argument("--exif-transpose", dest="exif_transpose", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-pixels", dest="max_pixels", type=int, help="refuse larger images (bomb guard)")
    p.add_argument("--compress-level", dest="compress_level", type=int, help="PNG deflate level 0..9 (default 0)")
    p.add_argument("--workers", type=int, help="worker processes, 0 = all cores")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, help="images per worker task, 0 = auto")
    p.add_argument("--on-error", dest="on_error", choices=["skip", "fail"], help="default skip")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)  # per-image lines and the run summary go to <dest>.log
    console.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(console)
    try:
        config = config_from_args(PrepareConfig, "prepare", args, _FIELDS)
        summary = prepare_dataset(config)
    except (ConfigError, SourceError, FileExistsError) as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 2
    except PrepareError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 1
    rate = summary["images_per_second"]
    print(
        f"wrote {summary['num_written']} images {summary['resolution']}x{summary['resolution']}x{summary['channels']}"
        f" to {config.dest} ({summary['num_skipped']} skipped, {summary['num_fixed']} fixed;"
        f" {rate:.1f} img/s); report: {_report_path(config.dest)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
