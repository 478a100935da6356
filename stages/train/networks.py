"""The networks of a run: G, D, G_ema and the augmentation pipeline from the resolved options, the family's
loss over them, and pretrained weights copied in for transfer learning."""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.augment import make_augment_pipe
from models.families import Loss, LossParts
from models.serialization.loading import load_network
from models.serialization.snapshot import lookup_class
from stages.common.config import ConfigError
from stages.train import checkpoint as ckpt
from stages.train.options import TrainingOptions
from stages.train.phases import FrozenMapping
from stages.train.stats import Tee


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


def build_loss(opts: TrainingOptions, nets: dict[str, torch.nn.Module | None], stats: Tee,
               device: torch.device) -> Loss:
    """The family's objective over these networks (StyleGAN2's for StyleGAN2 and 3, the hinge loss for
    Projected GAN); a frozen mapping (transfer learning) still passes gradients w.r.t. w."""
    G = nets["G"]
    mapping = G.mapping if not opts.freeze_mapping else FrozenMapping(G.mapping)
    parts = LossParts(mapping, G.synthesis, nets["D"], nets["augment_pipe"], stats, device)
    return opts.family.make_loss(parts, opts.G_class, opts.loss_kwargs)
