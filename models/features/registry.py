"""Feature networks for metrics, by name: uint8 images in, one feature vector per image out.

    net = build_feature_network("effnet-lite0")     # frozen, eval mode, CPU
    feats = net(images)                             # uint8 [N, 1 or 3, H, W] -> float32 [N, net.feature_dim]
    net.identity                                    # e.g. "effnet-lite0/pool1280/bilinear224/sha256:57934424..."
    net = build_feature_network("inception-offline")   # Inception-v3 FID graph, weights of the offline install

Registered: `effnet-lite0` here (a proxy space: its distances are not paper FIDs), and `inception-offline` by
`models.features.inception` (imported by the package, so any import of `models.features.*` registers it): the
Inception-v3 FID graph of 2015-12-05 in plain PyTorch, the same feature space as NVIDIA's
`inception-2015-12-05.pt`, so its FID/KID carry the official metric names. It is not named `inception`, the
metric engine's name for NVIDIA's TorchScript file.

The identity changes whenever the weights or the preprocessing do, so cached real-image statistics keyed
on it never mix two feature spaces. Metrics computed here carry the network's name (e.g. a Fréchet distance
in `effnet-lite0` space is not a paper FID). Register more networks with `register_feature_network`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.features.efficientnet_lite import (
    HEAD_CHANNELS,
    WEIGHTS_PACKAGE,
    load_efficientnet_lite0,
    resolve_weights,
)
from models.fileio import file_sha256


class FeatureOutputUnavailableError(NotImplementedError):
    """A detector call asks for an output these weights do not have (e.g. Inception logits for IS)."""


class FeatureNetwork(nn.Module):
    """Base of the registry's modules: `forward(uint8 [N, C, H, W]) -> float32 [N, feature_dim]`."""

    feature_dim: int
    identity: str

    def train(self, mode: bool = True) -> FeatureNetwork:
        # Always eval: a parent's .train() must not switch BatchNorm to batch statistics or update them.
        return super().train(False)


@dataclass(frozen=True)
class FeatureNetworkSpec:
    name: str
    feature_dim: int
    build: Callable[..., FeatureNetwork]   # keyword options (e.g. weights=path) -> frozen module on CPU
    description: str = ""


FEATURE_NETWORKS: dict[str, FeatureNetworkSpec] = {}


def register_feature_network(spec: FeatureNetworkSpec, overwrite: bool = False) -> FeatureNetworkSpec:
    if spec.name in FEATURE_NETWORKS and not overwrite:
        raise KeyError(f"feature network {spec.name!r} is already registered (pass overwrite=True to replace it)")
    FEATURE_NETWORKS[spec.name] = spec
    return spec


def build_feature_network(name: str, **options: object) -> FeatureNetwork:
    """Build the registered network `name` (eval mode, `requires_grad_(False)`); options go to its builder."""
    if name not in FEATURE_NETWORKS:
        raise KeyError(f"unknown feature network {name!r}; registered: {sorted(FEATURE_NETWORKS)}")
    net = FEATURE_NETWORKS[name].build(**options)
    assert net.feature_dim == FEATURE_NETWORKS[name].feature_dim, "builder disagrees with its spec"
    return net


def uint8_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1|3, H, W] -> float32 [N, 3, H, W] in [-1, 1] (grey images repeated to RGB)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.to(torch.float32) / 127.5 - 1


class EfficientNetLite0Features(FeatureNetwork):
    """Pooled 1280-d EfficientNet-Lite0 features with Projected GAN's preprocessing.

    uint8 -> [-1, 1] -> bilinear resize to 224x224 (align_corners=False, no antialiasing, as Projected GAN's
    discriminator does) -> network -> global average pool. Images already at 224 px skip the resize.
    """

    resolution = 224

    def __init__(self, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        path = resolve_weights(weights)
        self.net = load_efficientnet_lite0(path)
        self.feature_dim = HEAD_CHANNELS
        # The version tag names the preprocessing: change it when the preprocessing changes.
        self.identity = f"effnet-lite0/pool1280/bilinear224/sha256:{file_sha256(path)[:16]}"
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # uint8 [N, C, H, W] -> [N, 1280]
        x = uint8_to_unit_range(images.to(next(self.net.parameters()).device))
        if tuple(x.shape[2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.net.forward_features(x)


register_feature_network(FeatureNetworkSpec(
    name="effnet-lite0",
    feature_dim=HEAD_CHANNELS,
    build=EfficientNetLite0Features,
    description=f"EfficientNet-Lite0 (ImageNet) pooled features at 224 px; weights from {WEIGHTS_PACKAGE}",
))

