"""Native, code-free network snapshots: one `.safetensors` file plus a JSON header.

Layout of a snapshot file:

- tensors keyed `<group>.<state_dict name>`, e.g. `G.mapping.fc0.weight`, `G_ema.synthesis.b4.const`,
  `D.b16.fromrgb.weight`, `augment_pipe.p`;
- the safetensors string metadata holds one entry, `sg2ada_mlops`, a JSON document:
  `{"format": "sg2ada-mlops.snapshot", "version": 1, "groups": {name: {"class_name", "init_kwargs"} | null},
  "training_set_kwargs": ..., "meta": {...}}`.

Nothing in the file is ever executed or imported: a group's `class_name` is only a key into a small
registry of this project's classes, and the module is rebuilt from its JSON `init_kwargs`, then its
state is loaded strictly. This replaces the official pickles, which carry their own source and `exec`
it on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.fileio import atomic_path

FORMAT_NAME = "sg2ada-mlops.snapshot"
FORMAT_VERSION = 1
METADATA_KEY = "sg2ada_mlops"

# Group names become the first component of a dotted tensor key, so they must not contain dots.
_GROUP_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class SnapshotError(ValueError):
    """A snapshot file is not ours, is from an unknown format version, or does not fit the networks."""

    blame = "input"  # whose fault, for the command-line error boundary (exit codes)


class StateMismatchError(SnapshotError):
    """Tensors in a file do not match the module rebuilt from its init kwargs (names them)."""


# ----------------------------------------------------------------------------------------------------
# Class registry: a fixed name -> class table instead of resolving class-name strings by import.

_REGISTRY: dict[str, type[torch.nn.Module]] = {}
_DEFAULTS_LOADED = False


def register_class(cls: type[torch.nn.Module], name: str | None = None) -> type[torch.nn.Module]:
    """Allow `cls` in snapshots under `name` (default: its class name). Usable as a decorator."""
    _REGISTRY[name or cls.__name__] = cls
    return cls


def _load_default_classes() -> None:
    # Imported lazily so that `models.serialization.snapshot` itself never depends on import order inside `models`.
    global _DEFAULTS_LOADED
    if _DEFAULTS_LOADED:
        return
    from models.projected.discriminator import ProjectedDiscriminator
    from models.projected.fastgan import FastGANGenerator
    from models.stylegan2.discriminator import Discriminator
    from models.stylegan2.generator import Generator
    from models.stylegan2.mapping import MappingNetwork
    from models.stylegan2.synthesis import SynthesisNetwork
    from models.stylegan3.generator import StyleGAN3Generator
    from models.stylegan3.mapping import StyleGAN3MappingNetwork
    from models.stylegan3.synthesis import StyleGAN3SynthesisNetwork

    # Snapshot class names are the Python class names, so every family's classes must have distinct
    # ones: StyleGAN2's "Generator" (the official name, kept for existing snapshots) and
    # "StyleGAN3Generator" for the alias-free one.
    for cls in (Generator, Discriminator, MappingNetwork, SynthesisNetwork,
                StyleGAN3Generator, StyleGAN3MappingNetwork, StyleGAN3SynthesisNetwork, FastGANGenerator,
                ProjectedDiscriminator):
        _REGISTRY.setdefault(cls.__name__, cls)
    from models.augment import AugmentPipe

    _REGISTRY.setdefault("AugmentPipe", AugmentPipe)
    _DEFAULTS_LOADED = True


def lookup_class(name: str) -> type[torch.nn.Module] | None:
    """The registered class for `name`, or None."""
    _load_default_classes()
    return _REGISTRY.get(name)


# ----------------------------------------------------------------------------------------------------
# Strict state loading shared with the legacy importer.


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str = "module") -> None:
    """Copy `state` into `module`, refusing any missing, unexpected or differently shaped tensor.

    `torch.nn.Module.load_state_dict(strict=True)` would also refuse, but stops at the first shape error
    and prints long lists; here every difference is named so a config mismatch is obvious.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{label} ({len(items)}): {shown}")
        raise StateMismatchError(f"{what}: state does not match the rebuilt network; " + "; ".join(parts))
    with torch.no_grad():
        module.load_state_dict(dict(state), strict=True)


# ----------------------------------------------------------------------------------------------------
# JSON helpers.


def _jsonable(value: Any, where: str) -> Any:
    """Convert init kwargs and metadata to plain JSON types, failing loudly on anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SnapshotError(f"{where}: only string keys can be stored, got {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise SnapshotError(f"{where}: value of type {type(value).__name__} cannot be stored as JSON")


def _init_kwargs_of(module: torch.nn.Module, name: str) -> dict[str, Any]:
    kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(kwargs, Mapping):
        raise SnapshotError(f"{name}: {type(module).__name__} has no `init_kwargs` dict; cannot rebuild it from a file")
    return _jsonable(kwargs, f"{name}.init_kwargs")


# ----------------------------------------------------------------------------------------------------
# Save.


def _is_tensor_group(value: Any) -> bool:
    """A `TensorGroup` is a plain dict `{"class_name", "init_kwargs", "state_dict"}`.

    It stands in for a module whose class is not part of this project (a file written by a newer version, or
    an official pickle's object without a class here): its tensors and settings are kept, not lost.
    """
    return isinstance(value, Mapping) and "state_dict" in value and "class_name" in value


def save_snapshot(
    path: str | os.PathLike,
    networks: Mapping[str, torch.nn.Module | Mapping[str, Any] | None],
    training_set_kwargs: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write `networks` (e.g. {'G', 'D', 'G_ema', 'augment_pipe'}) to one safetensors file, atomically.

    The file appears under its final name only when complete: a crash mid-write leaves the previous file
    untouched and no temporary file behind.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    seen_storage: set[int] = set()
    for name, net in networks.items():
        if not name or not set(name) <= _GROUP_NAME_CHARS:
            raise SnapshotError(f"group name {name!r} must be non-empty and use only letters, digits, '_' or '-'")
        if net is None:
            groups[name] = None
            continue
        if isinstance(net, torch.nn.Module):
            cls_name = type(net).__name__
            if lookup_class(cls_name) is not type(net):
                raise SnapshotError(f"{name}: class {type(net).__module__}.{cls_name} is not registered for snapshots")
            groups[name] = {"class_name": cls_name, "init_kwargs": _init_kwargs_of(net, name)}
            state = net.state_dict()
        elif _is_tensor_group(net):
            groups[name] = {
                "class_name": str(net["class_name"]),
                "init_kwargs": _jsonable(net.get("init_kwargs") or {}, f"{name}.init_kwargs"),
            }
            state = net["state_dict"]
        else:
            raise SnapshotError(f"{name}: expected a torch.nn.Module, a tensor group dict or None, got {type(net)}")
        for key, tensor in state.items():
            t = tensor.detach().cpu().contiguous()
            # safetensors refuses tensors sharing memory; copy the rare aliased one instead of failing.
            if t.numel() > 0 and t.untyped_storage().data_ptr() in seen_storage:
                t = t.clone()
            seen_storage.add(t.untyped_storage().data_ptr())
            tensors[f"{name}.{key}"] = t

    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "groups": groups,
        "training_set_kwargs": _jsonable(training_set_kwargs, "training_set_kwargs"),
        "meta": _jsonable(dict(meta or {}), "meta"),
    }
    metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------------------
# Load.


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate the JSON header of a snapshot without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise SnapshotError(f"{path}: not a readable safetensors file ({exc})") from exc
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise SnapshotError(
            f"{path}: safetensors file without '{METADATA_KEY}' metadata; not a sg2ada-mlops snapshot"
        )
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{path}: snapshot metadata is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise SnapshotError(f"{path}: metadata format is not '{FORMAT_NAME}'")
    version = header.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "written by a newer version of this project; upgrade to read it" if newer else "unknown version"
        raise SnapshotError(f"{path}: snapshot format version {version!r} is not supported ({hint}); "
                            f"this build reads version {FORMAT_VERSION}")
    if not isinstance(header.get("groups"), dict):
        raise SnapshotError(f"{path}: snapshot metadata has no 'groups' table")
    return header


def load_snapshot(path: str | os.PathLike) -> dict[str, Any]:
    """Rebuild the networks of a snapshot: {'G', 'D', 'G_ema', ..., 'training_set_kwargs', 'meta'}.

    Modules come back on CPU in eval mode with gradients disabled, as the official loader returns them.
    A group whose class is not registered comes back as a tensor-group dict.
    """
    header = read_header(path)
    groups: dict[str, Any] = header["groups"]
    by_group: dict[str, dict[str, torch.Tensor]] = {name: {} for name in groups}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
            name, sep, sub = key.partition(".")
            if not sep or name not in by_group or groups[name] is None:
                raise SnapshotError(f"{path}: tensor {key!r} belongs to no group in the metadata")
            by_group[name][sub] = f.get_tensor(key)

    result: dict[str, Any] = {}
    for name, info in groups.items():
        if info is None:
            result[name] = None
            continue
        cls_name = info.get("class_name")
        kwargs = info.get("init_kwargs") or {}
        cls = lookup_class(cls_name) if isinstance(cls_name, str) else None
        if cls is None:
            if name in ("G", "D", "G_ema"):
                raise SnapshotError(f"{path}: {name} has class {cls_name!r}, which this project does not provide")
            result[name] = {"class_name": cls_name, "init_kwargs": kwargs, "state_dict": by_group[name]}
            continue
        try:
            module = cls(**kwargs)
        except TypeError as exc:
            raise SnapshotError(f"{path}: cannot rebuild {name} ({cls_name}) from its init kwargs: {exc}") from exc
        load_state_strict(module, by_group[name], what=f"{path}: {name}")
        result[name] = module.cpu().eval().requires_grad_(False)
    result["training_set_kwargs"] = header.get("training_set_kwargs")
    result["meta"] = header.get("meta") or {}
    return result
