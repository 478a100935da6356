"""Where the images of a spectrum come from: a dataset (ZIP or folder of images) or a network's samples.

Rules, as the official avg_spectra.py: a dataset with `num` set uses a random subset of that many images
(`random_seed = seed`) and must hold at least `num`; a network renders seeds `seed .. seed + num - 1`, each
z = RandomState(s).randn(1, z_dim) and, for a conditional network, a uniformly drawn class from the same
RandomState; truncation psi 1 and random noise (seeded here per batch, so a run repeats exactly).
Images arrive as uint8 [NCHW] batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.common.errors import BadInput
from stages.common.images import to_uint8

_SNAPSHOT_PREFIX = "network-snapshot-"


@dataclass
class ImageSource:
    kind: str                   # "dataset" | "network"
    num_images: int
    image_size: int
    batches: Iterator[torch.Tensor]


def is_dataset(source: str) -> bool:
    """A .zip file or an image folder is a dataset; a run folder (holding network snapshots), a snapshot,
    a pickle, a URL or a named network is a network."""
    path = Path(source)
    if path.is_dir():
        return not any(f.name.startswith(_SNAPSHOT_PREFIX) for f in path.iterdir())
    return path.suffix.lower() == ".zip"


def dataset_images(path: str, num: int | None, seed: int, batch_size: int, device: torch.device) -> ImageSource:
    from stages.common.dataset import ImageFolderDataset

    dataset = ImageFolderDataset(path=path, max_size=num, random_seed=seed)
    if num is not None and len(dataset) != num:
        raise BadInput(f"--num {num}: {path} holds only {len(dataset)} images")

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
            yield torch.from_numpy(np.stack(items)).to(device)

    return ImageSource("dataset", len(dataset), int(dataset.resolution), batches())


def seed_latents(seeds: list[int], z_dim: int, c_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, z_dim] and one-hot c [N, c_dim] of the official avg_spectra.py seed rule."""
    z = np.zeros([len(seeds), z_dim])
    c = np.zeros([len(seeds), c_dim], dtype=np.float32)
    for i, s in enumerate(seeds):
        rnd = np.random.RandomState(s)
        z[i] = rnd.randn(z_dim)
        if c_dim > 0:
            c[i, rnd.randint(c_dim)] = 1
    return torch.from_numpy(z).to(torch.float32), torch.from_numpy(c)


def network_images(network: str, num: int | None, seed: int, batch_size: int, device: torch.device) -> ImageSource:
    if num is None:
        raise BadInput("--num is required when --source is a network (how many images to render)")
    from models.serialization.loading import load_generator

    G = load_generator(network, device)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, num, batch_size):
            seeds = list(range(seed + start, seed + min(start + batch_size, num)))
            z, c = seed_latents(seeds, G.z_dim, G.c_dim)
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + start)
                img = G(z.to(device), c.to(device), truncation_psi=1, noise_mode="random")
            yield to_uint8(img)

    return ImageSource("network", num, int(G.img_resolution), batches())


def open_source(source: str, num: int | None, seed: int, batch_size: int, device: torch.device) -> ImageSource:
    """The images of `source` (see the module docstring)."""
    if is_dataset(source):
        if not os.path.exists(source):
            raise BadInput(f"dataset not found: {source}")
        return dataset_images(source, num, seed, batch_size, device)
    return network_images(source, num, seed, batch_size, device)
