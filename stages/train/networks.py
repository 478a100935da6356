"""The networks of a run: G, D, G_ema and the augmentation pipeline from the resolved options, and
pretrained weights copied in for transfer learning."""

from __future__ import annotations

import copy
from typing import Any

import torch

from models import load_network, make_augment_pipe
from models.serialization.snapshot import lookup_class
from stages.common.config import ConfigError
from stages.train import checkpoint as ckpt
from stages.train.options import TrainingOptions


def build_networks(opts: TrainingOptions, device: torch.device) -> dict[str, torch.nn.Module | None]:
    """{'G', 'D', 'G_ema', 'augment_pipe'}: in training mode, gradients off until a phase turns them on."""
    G = lookup_class(opts.G_class)(**opts.G_kwargs).train().requires_grad_(False).to(device)
    D = lookup_class(opts.D_class)(**opts.D_kwargs).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    augment_pipe = None
    if opts.augment_kwargs is not None and (opts.augment_p > 0 or opts.ada_target is not None):
        augment_pipe = make_augment_pipe(opts.augment_kwargs["augpipe"], p=float(opts.augment_p))
        augment_pipe = augment_pipe.train().requires_grad_(False).to(device)
    return {"G": G, "D": D, "G_ema": G_ema, "augment_pipe": augment_pipe}


def load_pretrained(source: str) -> dict[str, Any]:
    """The networks of a snapshot, official pickle or URL to start from (read before any file is written)."""
    data = load_network(source)
    missing = [name for name in ("G", "D", "G_ema") if data.get(name) is None]
    if missing:
        raise ConfigError(f"resume: {source} has no {', '.join(missing)}")
    return data


def transfer_weights(source: str, data: dict[str, Any], nets: dict[str, torch.nn.Module]) -> None:
    """Copy G, D, G_ema of `data` (from `load_pretrained`) into `nets`; every differing tensor is named."""
    for name, module in nets.items():
        if name not in data:
            raise ConfigError(f"resume: {source} has no {name}")
        ckpt.load_module_state(module, data[name].state_dict(), f"resume {source} [{name}]")
