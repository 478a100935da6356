"""`load_clip(name_or_path)`: a CLIP with its tokenizer, from a folder, a file or a published model's name.

    load_clip("ViT-B/32")                       # OpenAI's release file + BPE vocabulary, cached once
    load_clip("openai/clip-vit-base-patch32")   # the Hugging Face copy of the same model
    load_clip("~/models/my-clip")               # a folder: weights + config.json + tokenizer files

A name is looked up, in order: a local file or folder of that name; the cache folder
`$SG2_CACHE_DIR/clip/<model>/` (default `~/.cache/sg2ada-mlops/clip/<model>/`); the caches of the
official tools (OpenAI's `~/.cache/clip/`, the Hugging Face hub cache), read in place; and only then a
download into the cache (temp file + rename; OpenAI's files are checked against the sha256 in their URL).
`SG2_OFFLINE=1` forbids the download. When a file cannot be had the error names it, its URL and the folder
to put it in, on one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from models.clip.model import CLIP
from models.clip.tokenizer import HF_MERGES_FILE, HF_VOCAB_FILE, OPENAI_BPE_FILE, CLIPTokenizer
from models.clip.weights import CONFIG_FILE, ClipFormatError, build_clip, read_state_dict
from models.fileio import atomic_open, file_sha256
from models.serialization.loading import CACHE_ENV, NetworkDownloadError, download_to

OFFLINE_ENV = "SG2_OFFLINE"
DEFAULT_CACHE_ROOT = Path("~/.cache/sg2ada-mlops")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "*.safetensors", "*.pt", "*.pth", "*.bin")


class ClipNotFoundError(NetworkDownloadError):
    """The CLIP model (or one of its files) is not here and could not be downloaded. An OSError like every
    absent download, so command lines report it as an environment problem (exit 1)."""


class ClipSourceError(FileNotFoundError):
    """What `--clip` names is not a CLIP model here (no such file, folder or name; a folder without weights):
    the user's input (exit 2), unlike a known name that cannot be downloaded (ClipNotFoundError, exit 1)."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str | None = None       # known checksum (OpenAI publishes it in the URL)
    # Where an official tool caches the same file, read in place: (folder, glob pattern inside it).
    elsewhere: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class NamedClip:
    folder: str                     # sub-folder of the cache
    files: tuple[RemoteFile, ...]


_OPENAI = "https://openaipublic.azureedge.net/clip/models/{sha}/{file}"
_OPENAI_BPE = RemoteFile(OPENAI_BPE_FILE, "https://github.com/openai/CLIP/raw/main/clip/" + OPENAI_BPE_FILE)


def _openai(file: str, sha: str) -> NamedClip:
    weights = RemoteFile(file, _OPENAI.format(sha=sha, file=file), sha, ("~/.cache/clip", file))
    return NamedClip(file.removesuffix(".pt"), (weights, _OPENAI_BPE))


def _hub(repo: str) -> NamedClip:
    base = f"https://huggingface.co/{repo}/resolve/main/"
    snapshots = f"{{hub}}/models--{repo.replace('/', '--')}/snapshots"
    return NamedClip(repo.replace("/", "--"), tuple(
        RemoteFile(f, base + f, None, (snapshots, f"*/{f}")) for f in (CONFIG_FILE, HF_VOCAB_FILE, HF_MERGES_FILE,
                                                                       "pytorch_model.bin")))


# The ViT models of OpenAI's `clip.available_models()` (URLs and checksums from its clip.py) and their Hugging
# Face copies. OpenAI's ResNet models (RN50, ...) are not supported.
NAMED_MODELS: dict[str, NamedClip] = {
    "ViT-B/32": _openai("ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    "ViT-B/16": _openai("ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    "ViT-L/14": _openai("ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
    "ViT-L/14@336px": _openai("ViT-L-14-336px.pt",
                              "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"),
    **{repo: _hub(repo) for repo in ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch16",
                                     "openai/clip-vit-large-patch14")},
}


def available_models() -> list[str]:
    return list(NAMED_MODELS)


def clip_cache_dir(override: str | os.PathLike | None = None) -> Path:
    """`override`, else `$SG2_CACHE_DIR/clip`, else `~/.cache/sg2ada-mlops/clip`."""
    if override is not None:
        return Path(override).expanduser()
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else DEFAULT_CACHE_ROOT).expanduser() / "clip"


def _named(name: str) -> NamedClip | None:
    if name in NAMED_MODELS:
        return NAMED_MODELS[name]
    # `ViT-B-32` (the file's spelling) means `ViT-B/32`.
    return next((spec for key, spec in NAMED_MODELS.items() if key.replace("/", "-") == name), None)


def _elsewhere(where: tuple[str, str] | None) -> Path | None:
    """An existing copy in an official tool's cache (the newest hub snapshot), if any."""
    if where is None:
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    folder = Path(os.path.expanduser(where[0].replace("{hub}", hub)))
    found = sorted(p for p in folder.glob(where[1]) if p.is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def _fetch(name: str, remote: RemoteFile, folder: Path, allow_download: bool) -> Path:
    """The local path of one file of a named model: cache, official caches, then a download."""
    target = folder / remote.name
    if target.is_file():
        return target
    if (found := _elsewhere(remote.elsewhere)) is not None:
        return found
    hint = f"put {remote.name} in {folder} (cache: ${CACHE_ENV}/clip), or give a local folder holding the model"
    if not allow_download:
        raise ClipNotFoundError(f"CLIP model {name!r}: {remote.name} not found and download disabled "
                                f"(${OFFLINE_ENV}); {hint}")
    try:
        with atomic_open(target, "wb") as fh:
            download_to(remote.url, fh)
    except OSError as exc:
        raise ClipNotFoundError(f"CLIP model {name!r}: cannot download {remote.url} ({type(exc).__name__}); "
                                f"{hint}") from exc
    if remote.sha256 is not None and (actual := file_sha256(target)) != remote.sha256:
        target.unlink()
        raise ClipNotFoundError(f"CLIP model {name!r}: {remote.url} has sha256 {actual}, expected {remote.sha256}")
    return target


def _pick(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def _tokenizer_files(folder: Path) -> dict[str, Path]:
    return {n: folder / n for n in (HF_VOCAB_FILE, HF_MERGES_FILE, OPENAI_BPE_FILE) if (folder / n).is_file()}


def make_tokenizer(files: dict[str, Path], vocab_size: int | None, where: str) -> CLIPTokenizer:
    """From `vocab.json` + `merges.txt` (Hugging Face), else OpenAI's `bpe_simple_vocab_16e6.txt.gz`."""
    if HF_VOCAB_FILE in files and HF_MERGES_FILE in files:
        return CLIPTokenizer.from_vocab_merges(files[HF_VOCAB_FILE], files[HF_MERGES_FILE])
    if OPENAI_BPE_FILE in files:
        return CLIPTokenizer.from_openai_bpe(files[OPENAI_BPE_FILE], vocab_size)
    raise ClipNotFoundError(f"no CLIP tokenizer files in {where} ({HF_VOCAB_FILE} + {HF_MERGES_FILE}, or "
                            f"{OPENAI_BPE_FILE})")


def _assemble(weights: Path, tokenizer_files: dict[str, Path], config: Path | None, what: str) -> CLIP:
    state = read_state_dict(weights)
    try:
        cfg = json.loads(config.read_text()) if config is not None and config.is_file() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClipFormatError(f"{config}: not a JSON config ({exc})") from exc
    model = build_clip(state, cfg, what=what)
    try:
        tokenizer = make_tokenizer(tokenizer_files, model.config.vocab_size, what)
    except (ValueError, KeyError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ClipFormatError(f"{what}: unreadable tokenizer files ({exc})") from exc
    if tokenizer.eot != max(tokenizer.encoder.values()) or tokenizer.eot >= model.config.vocab_size:
        # The text features are read at the highest token id; a vocabulary for another model breaks that.
        raise ClipFormatError(f"{what}: the tokenizer's end token ({tokenizer.eot}) is not the last id of the "
                              f"model's {model.config.vocab_size}-token vocabulary")
    model.tokenizer = tokenizer
    return model


def load_clip(
    name_or_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,   # default $SG2_CACHE_DIR/clip or ~/.cache/sg2ada-mlops/clip
    allow_download: bool | None = None,            # None = unless $SG2_OFFLINE is set
) -> CLIP:
    """A CLIP in eval mode, without gradients, with its tokenizer attached (`model.tokenizer`).

    `name_or_path`: a folder (weights `model.safetensors` / `pytorch_model.bin` / `*.pt`, an optional
    `config.json`, tokenizer files), a weight file (tokenizer files beside it), or a name of
    `available_models()`. Raises ClipNotFoundError (absent, offline) or ClipFormatError (unreadable).
    """
    source = os.fspath(name_or_path)
    path = Path(source).expanduser()
    if path.is_dir():
        weights = _pick(path, WEIGHT_NAMES)
        if weights is None:
            raise ClipSourceError(f"no CLIP weights in {path} (model.safetensors, pytorch_model.bin or *.pt)")
        model = _assemble(weights, _tokenizer_files(path), path / CONFIG_FILE, str(path))
    elif path.is_file():
        model = _assemble(path, _tokenizer_files(path.parent), path.parent / CONFIG_FILE, str(path))
    elif (spec := _named(source)) is not None:
        if allow_download is None:
            allow_download = os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes", "on")
        folder = clip_cache_dir(cache_dir) / spec.folder
        files = {f.name: _fetch(source, f, folder, allow_download) for f in spec.files}
        weights = next(p for name, p in files.items() if name.endswith((".pt", ".bin")))
        model = _assemble(weights, files, files.get(CONFIG_FILE), f"CLIP model {source!r}")
    else:
        raise ClipSourceError(f"CLIP model not found: {source} is neither a file, a folder nor a known name "
                                f"(known: {', '.join(available_models())})")
    return model.to(device)


__all__ = ["ClipFormatError", "ClipNotFoundError", "available_models", "clip_cache_dir", "load_clip"]
