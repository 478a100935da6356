"""One converter: any network this project reads (official PyTorch or TensorFlow StyleGAN2(-ADA) pickle,
snapshot, URL, run folder) -> a native, code-free `.safetensors` snapshot.

The pickle is read by the restricted importers (`models.serialization`): code stored in it is never
executed, and anything outside the allowlist of pickle globals is refused.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch

from models.serialization.loading import fetch_url, is_url, load_network, resolve_network_path
from models.serialization.snapshot import save_snapshot
from models.serialization.tf_pickle import is_tf_pickle
from stages.common.config import ConfigError

GROUPS = ("G", "D", "G_ema", "augment_pipe")


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    SECTION: ClassVar[str] = "convert"

    source: str = ""                  # pickle, snapshot, run folder, or http(s)/file URL
    dest: str = ""                    # output .safetensors (written atomically)
    cache_dir: str | None = None      # download cache for URLs (default $SG2_CACHE_DIR or ~/.cache/sg2ada-mlops)
    mlflow: bool = False              # log the snapshot as an MLflow artifact (also SG2_MLFLOW=1)

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError("--source is required (a network pickle, snapshot or URL)")
        if not self.dest:
            raise ConfigError("--dest is required (an output .safetensors path)")


HELP = {
    "source": "network pickle (official PyTorch or TensorFlow), snapshot, run folder, or http(s)/file URL",
    "dest": "output .safetensors path (written atomically)",
    "cache_dir": "download cache for URLs (default $SG2_CACHE_DIR or ~/.cache/sg2ada-mlops/networks)",
    "mlflow": "log the snapshot as an MLflow artifact (also SG2_MLFLOW=1)",
}


def convert_network(source: str, dest: str | os.PathLike, cache_dir: str | None = None) -> dict[str, Any]:
    """Load `source` and write its networks to `dest`; returns the loaded networks."""
    local = resolve_network_path(source)
    path = fetch_url(local, cache_dir) if is_url(local) else Path(local)
    if not path.is_file():
        raise FileNotFoundError(f"network file not found: {path}")
    kind = "tensorflow" if is_tf_pickle(path) else "pytorch"
    networks = load_network(path)
    save_snapshot(dest, {k: networks.get(k) for k in GROUPS if k in networks},
                  training_set_kwargs=networks.get("training_set_kwargs"),
                  meta={"converted_from": str(source), "source_format": kind})
    return networks


def describe(networks: dict[str, Any]) -> list[str]:
    """One line per converted group: class, resolution and parameter count."""
    lines = []
    for name in GROUPS:
        net = networks.get(name)
        if net is None:
            continue
        if isinstance(net, torch.nn.Module):
            n_params = sum(p.numel() for p in net.parameters())
            res = getattr(net, "img_resolution", None)
            extra = f", {res}x{res}x{getattr(net, 'img_channels', '?')}" if res else ""
            extra += f", c_dim={net.c_dim}" if hasattr(net, "c_dim") else ""
            lines.append(f"  {name:<13} {type(net).__name__}{extra}, {n_params:,} parameters")
        else:  # a tensor group (a module class this project does not rebuild)
            n = sum(t.numel() for t in net["state_dict"].values())
            lines.append(f"  {name:<13} {net['class_name']} (settings + {n:,} buffer values)")
    return lines
