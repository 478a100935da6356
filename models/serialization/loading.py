"""`load_network`: one entry point for this project's snapshots, official pickles and URLs.

The format is decided by the file's first bytes, not its extension: a network pickle starts with the
PROTO opcode (0x80); a safetensors file starts with an 8-byte little-endian header length followed by
`{`. URLs (http, https, file) are fetched once into a cache directory and read from there afterwards.
NVIDIA's published networks can be named instead of given by URL (`ffhq256`, `stylegan3-r-afhqv2-512x512`,
... see `PRETRAINED`); a local file or folder of the same name wins.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

import torch

from models.fileio import atomic_open
from models.serialization.official_pickle import load_official_pickle
from models.serialization.snapshot import SnapshotError, load_snapshot

CACHE_ENV = "SG2_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/sg2ada-mlops/networks")
RESULT_KEYS = ("G", "D", "G_ema", "augment_pipe", "training_set_kwargs")


class NetworkDownloadError(OSError):
    """A network URL could not be fetched (offline, HTTP error); says which URL and where to put the file."""

    blame = "environment"  # whose fault, for the command-line error boundary (exit codes)


class UnknownNetworkError(FileNotFoundError):
    """Neither a file, a folder, a URL nor a known network name; lists the names."""


# NVIDIA's published networks by name -> URL (official pickles, imported code-free).
_SG2ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/{family}/versions/1/files/"
PRETRAINED: dict[str, str] = {
    # StyleGAN2-ADA transfer-learning sources: the official train.py `--resume` names (resume_specs).
    "ffhq256": _SG2ADA + "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
    "ffhq512": _SG2ADA + "transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl",
    "ffhq1024": _SG2ADA + "transfer-learning-source-nets/ffhq-res1024-mirror-stylegan2-noaug.pkl",
    "celebahq256": _SG2ADA
    + "transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
    "lsundog256": _SG2ADA + "transfer-learning-source-nets/lsundog-res256-paper256-kimg100000-noaug.pkl",
    # StyleGAN2-ADA paper networks (stylegan2-ada-pytorch README), by their file names.
    **{name: f"{_SG2ADA}{name}.pkl" for name in ("ffhq", "metfaces", "afhqcat", "afhqdog", "afhqwild", "cifar10",
                                                  "brecahad")},
    # StyleGAN3 release (stylegan3 README): config T and R networks on NGC.
    **{name: _NGC.format(family="stylegan3") + f"{name}.pkl" for name in (
        "stylegan3-t-ffhq-1024x1024", "stylegan3-t-ffhqu-1024x1024", "stylegan3-t-ffhqu-256x256",
        "stylegan3-r-ffhq-1024x1024", "stylegan3-r-ffhqu-1024x1024", "stylegan3-r-ffhqu-256x256",
        "stylegan3-t-metfaces-1024x1024", "stylegan3-t-metfacesu-1024x1024",
        "stylegan3-r-metfaces-1024x1024", "stylegan3-r-metfacesu-1024x1024",
        "stylegan3-t-afhqv2-512x512", "stylegan3-r-afhqv2-512x512")},
    # StyleGAN2 networks republished with the StyleGAN3 release (same README), on NGC.
    **{name: _NGC.format(family="stylegan2") + f"{name}.pkl" for name in (
        "stylegan2-ffhq-1024x1024", "stylegan2-ffhq-512x512", "stylegan2-ffhq-256x256",
        "stylegan2-ffhqu-1024x1024", "stylegan2-ffhqu-256x256", "stylegan2-metfaces-1024x1024",
        "stylegan2-metfacesu-1024x1024", "stylegan2-afhqv2-512x512", "stylegan2-afhqcat-512x512",
        "stylegan2-afhqdog-512x512", "stylegan2-afhqwild-512x512", "stylegan2-brecahad-512x512",
        "stylegan2-cifar10-32x32", "stylegan2-celebahq-256x256", "stylegan2-lsundog-256x256")},
}


def pretrained_url(name: str) -> str | None:
    """The URL of a published network by its exact name, else None. `ffhq.pkl` stays a file name: a mistyped
    local path must not start a download."""
    return PRETRAINED.get(name)


def _looks_like_name(source: str) -> bool:
    """A bare word (no folder, no extension): what a user means as a network name."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", source) is not None


def unknown_network_message(source: str) -> str:
    return (f"network file not found: {source} (nor a known network name; known: {', '.join(sorted(PRETRAINED))})")


def get_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The download cache: `override`, else $SG2_CACHE_DIR, else ~/.cache/sg2ada-mlops/networks."""
    raw = override if override is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(raw).expanduser()


def is_url(s: str) -> bool:
    return re.match(r"^(https?|file)://", s, flags=re.IGNORECASE) is not None


def _cache_path(url: str, directory: Path) -> Path:
    # Keyed by a hash of the full URL (two URLs ending in the same name must not collide); the readable
    # tail only helps a human browsing the cache.
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.urlparse(url).path).name)[-80:] or "network"
    return directory / f"{digest}_{tail}"


def download_to(url: str, fh: Any) -> None:
    """Stream `url` into the open file `fh` with a progress bar."""
    import requests
    from tqdm import tqdm

    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}", leave=False) as bar:
                for chunk in resp.iter_content(chunk_size=1 << 20):
                    fh.write(chunk)
                    bar.update(len(chunk))
    except requests.HTTPError as exc:
        raise NetworkDownloadError(f"cannot download {url}: HTTP {exc.response.status_code}") from exc
    except requests.RequestException as exc:
        raise NetworkDownloadError(
            f"cannot download {url} ({type(exc).__name__}); are you offline? Download the file by other means "
            f"and pass its local path, or place it in the cache (${CACHE_ENV})"
        ) from exc


def cache_path(url: str, cache: str | os.PathLike | None = None) -> Path:
    """Where `fetch_url` keeps (or looks for) the file of `url`."""
    return _cache_path(url, get_cache_dir(cache))


def fetch_url(url: str, cache: str | os.PathLike | None = None) -> Path:
    """Local path of `url`, downloading it into the cache on first use only (atomic: temp file + rename)."""
    directory = get_cache_dir(cache)
    target = _cache_path(url, directory)
    if target.is_file():
        return target
    with atomic_open(target, "wb") as fh:
        if url.lower().startswith("file://"):
            src = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
            if not src.is_file():
                raise FileNotFoundError(f"no such file: {src} (from {url})")
            with open(src, "rb") as sf:
                shutil.copyfileobj(sf, fh, length=1 << 20)
        else:
            download_to(url, fh)
    return target


def detect_format(path: str | os.PathLike) -> str:
    """'pickle' or 'safetensors', from the first bytes of the file."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return "safetensors"
    if head[:2] == b"PK":
        raise SnapshotError(f"{path}: a zip archive (torch.save checkpoint?), not a network snapshot or pickle")
    raise SnapshotError(f"{path}: neither a network pickle nor a safetensors snapshot")


# `network-snapshot-000012.safetensors` (official), or `...-000000.512...` for snapshots under 1 kimg apart.
_SNAPSHOT_NAME = re.compile(r"^network-snapshot-(\d+(?:\.\d+)?)\.(safetensors|pkl)$")


def resolve_network_path(path_or_url: str | os.PathLike) -> str:
    """A training run folder means its newest `network-snapshot-<kimg>.*`; a published network's name (that is
    no local path) its URL; files and URLs pass through."""
    source = os.fspath(path_or_url)
    folder = Path(source)
    if not is_url(source) and not folder.exists() and (url := pretrained_url(source)) is not None:
        return url
    if is_url(source) or not folder.is_dir():
        return source
    snaps = sorted((float(m[1]), f.name) for f in folder.iterdir() if (m := _SNAPSHOT_NAME.match(f.name)))
    if not snaps:
        raise FileNotFoundError(f"no network-snapshot-*.safetensors|pkl in run folder {folder}")
    return str(folder / snaps[-1][1])


def load_network(path_or_url: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load networks as a dict with keys among 'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'.

    Accepts this project's `.safetensors` snapshots, official StyleGAN2-ADA network pickles and
    TensorFlow StyleGAN2(-ADA) pickles (both imported without executing any code they carry) and
    http(s)/file URLs (downloaded once to the cache dir). A training run folder stands for its newest
    `network-snapshot-*`. Modules are on CPU, in eval mode, with gradients disabled.
    """
    name = os.fspath(path_or_url)
    source = resolve_network_path(path_or_url)
    if is_url(source):
        try:
            path = fetch_url(source, cache_dir)
        except NetworkDownloadError as exc:
            if source == name:
                raise
            # A named network: say which name, and where the file may be put by hand.
            raise NetworkDownloadError(f"{name}: {exc}; or place the file at {cache_path(source, cache_dir)}") \
                from exc
    else:
        path = Path(source)
    if not path.is_file():
        if source == name and not path.exists() and _looks_like_name(name):
            raise UnknownNetworkError(unknown_network_message(name))
        raise FileNotFoundError(f"network file not found: {path}")
    if detect_format(path) == "pickle":
        from models.serialization.tf_pickle import (  # TF-era pickles: rarer, imported lazily
            is_tf_pickle,
            load_tf_network,
        )

        data = load_tf_network(path) if is_tf_pickle(path) else load_official_pickle(path)
    else:
        data = load_snapshot(path)
    result = {k: data[k] for k in RESULT_KEYS if k in data}
    for value in result.values():
        if isinstance(value, torch.nn.Module):
            value.cpu().eval().requires_grad_(False)
    return result


def load_network_pkl(f: IO[bytes]) -> dict[str, Any]:
    """`load_network` for an open binary file, as the official `legacy.load_network_pkl(f)` is called:

        with open("ffhq.pkl", "rb") as f:          # or the official dnnlib.util.open_url(url)
            G = models.load_network_pkl(f)["G_ema"]

    Reads from the file's current position to its end; the format is decided by the first bytes, as for
    paths (network pickle, TensorFlow pickle or safetensors snapshot). The bytes are spooled to a temporary
    file first: safetensors reads from a path, and the TF check peeks at the start, so one route serves all.
    """
    with tempfile.TemporaryDirectory(prefix="sg2-network-") as tmp:
        name = Path(str(getattr(f, "name", "") or "network")).name or "network"  # named in error messages
        path = Path(tmp) / name
        with open(path, "wb") as out:
            shutil.copyfileobj(f, out, length=1 << 20)
        if path.stat().st_size == 0:
            raise SnapshotError("load_network_pkl: the file is empty (or already read to its end)")
        return load_network(path)


def load_generator(path_or_url: str | os.PathLike, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The generator to render with: `G_ema` of a snapshot, pickle, URL or run folder (else `G`), on
    `device`, in eval mode, without gradients. What the official scripts render, in one call."""
    nets = load_network(path_or_url)
    G = nets.get("G_ema") if nets.get("G_ema") is not None else nets.get("G")
    if not isinstance(G, torch.nn.Module):
        raise SnapshotError(f"{path_or_url}: holds no generator (G_ema or G)")
    return G.to(device).eval().requires_grad_(False)
