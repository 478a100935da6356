"""FastGAN's generator (Liu et al., "Towards Faster and Stabilized GAN Training for High-fidelity Few-shot
Image Synthesis", ICLR 2021) in the form Projected GAN trains it, behind the StyleGAN generator interface.

    G = FastGANGenerator(img_resolution=256)               # 105.7M parameters; lite=True: 79.4M
    img = G(z, c, noise_mode="const")                      # z [N, 256] -> [N, 3, 256, 256], about [-1, 1]
    ws = G.mapping(z, c)                                   # [N, 1, 256]: the latent itself
    img = G.synthesis(ws, c, noise_mode="const")

Architecture (paper Section 3.1; official `pg_modules/networks_fastgan.py`): the latent, projected onto the
sphere, goes through a 4x4 transposed convolution + BN + GLU, then one up-block per octave (nearest x2,
3x3 conv, BN, GLU; the full model has two convolutions per block with noise injection, the lite model
one and no noise), with skip-layer excitation (SLE) gating the 64/128/256/512 px features by the 4/8/16/32
px ones, and a 3x3 convolution to RGB. Every convolution is spectral-normalized. Parameter and buffer
names are the official ones (`synthesis.init.init.0.weight_orig`, `synthesis.feat_8.1.weight_orig`,
`synthesis.se_64.main.1.weight_orig`, `synthesis.to_big.bias`, ...).

Differences from the official code, all outside the official state dict:
- Resolutions 16..1024; the official synthesis needs at least 128 px. Only the blocks the resolution uses
  are built: at 128 px the official module also builds `feat_256` and `se_256`, which it never runs; an
  importer drops those tensors (`OFFICIAL_UNUSED_PREFIXES`).
- `noise_mode` ('random' = official, 'const' = fixed noise, 'none' = no noise), see `NoiseInjection`.
- The conditional model builds its 512/1024 px blocks conditional too (the official one fails there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.layers import normalize_2nd_moment
from models.projected.layers import (
    ConditionalBatchNorm,
    NoiseInjection,
    check_noise_mode,
    sn_conv2d,
    sn_conv_transpose2d,
)

# Channels per resolution as multiples of ngf (official `nfc_multi`); 2 is the init layer's GLU input.
CHANNEL_MULTIPLIERS: dict[int, float] = {2: 16, 4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5,
                                         512: 0.25, 1024: 0.125}
# Skip-layer excitation (paper Section 3.1): features at the key resolution are gated by those at the value.
SLE_SOURCES: dict[int, int] = {64: 4, 128: 8, 256: 16, 512: 32}
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024
# The conditional official model embeds argmax(c) in a table of 1000 classes whatever c_dim is.
OFFICIAL_NUM_CLASSES = 1000
# Tensors an official 128 px pickle holds but never uses (see module docstring).
OFFICIAL_UNUSED_PREFIXES: dict[int, tuple[str, ...]] = {128: ("synthesis.feat_256.", "synthesis.se_256.")}


def fastgan_channels(ngf: int) -> dict[int, int]:
    """Channels per resolution for a base width `ngf` (truncated like the official int())."""
    return {res: int(mult * ngf) for res, mult in CHANNEL_MULTIPLIERS.items()}


class InitLayer(nn.Module):
    """z [N, z_dim] -> [N, channels, 4, 4]: transposed 4x4 conv from 1x1, BN, GLU (halves the channels)."""

    def __init__(self, z_dim: int, channels: int) -> None:
        super().__init__()
        self.init = nn.Sequential(
            sn_conv_transpose2d(z_dim, channels * 2, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels * 2),
            nn.GLU(dim=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.init(z[:, :, None, None])  # [N, channels, 4, 4]


class UpBlockBig(nn.Sequential):
    """Full up-block: x2 nearest, (3x3 conv -> noise -> BN -> GLU) twice. Sequential so names are official."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            sn_conv2d(in_channels, out_channels * 2, 3, 1, 1, bias=False),
            NoiseInjection(resolution, seed=2 * resolution),
            nn.BatchNorm2d(out_channels * 2),
            nn.GLU(dim=1),
            sn_conv2d(out_channels, out_channels * 2, 3, 1, 1, bias=False),
            NoiseInjection(resolution, seed=2 * resolution + 1),
            nn.BatchNorm2d(out_channels * 2),
            nn.GLU(dim=1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, noise_mode: str = "random") -> torch.Tensor:
        for layer in self:
            x = layer(x, noise_mode) if isinstance(layer, NoiseInjection) else layer(x)
        return x


class UpBlockSmall(nn.Sequential):
    """Lite up-block: x2 nearest, 3x3 conv, BN, GLU; no noise."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            sn_conv2d(in_channels, out_channels * 2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels * 2),
            nn.GLU(dim=1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, noise_mode: str = "random") -> torch.Tensor:
        return super().forward(x)


class UpBlockBigCond(nn.Module):
    """UpBlockBig with class-conditional BatchNorm; one noise module serves both convolutions (official)."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, embedding_dim: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = sn_conv2d(in_channels, out_channels * 2, 3, 1, 1, bias=False)
        self.conv2 = sn_conv2d(out_channels, out_channels * 2, 3, 1, 1, bias=False)
        self.bn1 = ConditionalBatchNorm(out_channels * 2, embedding_dim)
        self.bn2 = ConditionalBatchNorm(out_channels * 2, embedding_dim)
        self.act = nn.GLU(dim=1)
        self.noise = NoiseInjection(resolution, seed=2 * resolution)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, noise_mode: str = "random") -> torch.Tensor:
        assert y is not None, "conditional block needs the class embedding"
        x = self.act(self.bn1(self.noise(self.conv1(self.up(x)), noise_mode), y))
        return self.act(self.bn2(self.noise(self.conv2(x), noise_mode), y))


class UpBlockSmallCond(nn.Module):
    """UpBlockSmall with class-conditional BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, embedding_dim: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = sn_conv2d(in_channels, out_channels * 2, 3, 1, 1, bias=False)
        self.bn = ConditionalBatchNorm(out_channels * 2, embedding_dim)
        self.act = nn.GLU(dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, noise_mode: str = "random") -> torch.Tensor:
        assert y is not None, "conditional block needs the class embedding"
        return self.act(self.bn(self.conv(self.up(x)), y))


class SkipLayerExcitation(nn.Module):
    """SLE (paper eq. 1): big * sigmoid(conv1x1(swish(conv4x4(avgpool4(small))))), a channel-wise gate."""

    def __init__(self, small_channels: int, big_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            sn_conv2d(small_channels, big_channels, 4, 1, 0, bias=False),
            nn.SiLU(),
            sn_conv2d(big_channels, big_channels, 1, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
        return big * self.main(small)  # [NCHW] * [NC11]


class FastGANSynthesis(nn.Module):
    """ws -> image [N, img_channels, R, R].

    Unconditional: ws is [N, 1, z_dim]. Conditional: either ws [N, 1, z_dim] with labels c given apart
    (the official call `synthesis(ws, c)`), or ws [N, 1, z_dim + c_dim] carrying the labels in its last
    c_dim entries, which is what `FastGANMapping` returns, so generic `G.synthesis(G.mapping(z, c))` callers
    (export, style mixing, videos) work unchanged.
    """

    def __init__(
        self,
        z_dim: int = 256,
        img_resolution: int = 256,
        img_channels: int = 3,
        ngf: int = 128,                    # base width: 16*ngf channels at 4 px, ngf/2 at 256 px
        lite: bool = False,                # one conv per up-block and no noise (the "fastgan_lite" config)
        cond: bool = False,                # class-conditional BatchNorm in the up-blocks
        num_classes: int = OFFICIAL_NUM_CLASSES,  # rows of the class embedding (conditional only)
        c_dim: int = 0,                    # label width carried in ws by the conditional mapping
    ) -> None:
        super().__init__()
        if img_resolution not in [2 ** k for k in range(4, 11)]:
            raise ValueError(f"FastGAN img_resolution must be a power of two in [{MIN_RESOLUTION}, "
                             f"{MAX_RESOLUTION}], got {img_resolution}")
        nfc = fastgan_channels(ngf)
        if nfc[img_resolution] < 1:
            raise ValueError(f"ngf={ngf} leaves no channels at {img_resolution} px; use ngf >= "
                             f"{math.ceil(1 / CHANNEL_MULTIPLIERS[img_resolution])}")
        self.z_dim, self.img_resolution, self.img_channels = z_dim, img_resolution, img_channels
        self.cond = bool(cond)
        self.c_dim = int(c_dim) if self.cond else 0
        self.block_resolutions = [2 ** k for k in range(3, int(math.log2(img_resolution)) + 1)]

        self.init = InitLayer(z_dim, nfc[2])
        for res in self.block_resolutions:
            if self.cond:
                block_cls = UpBlockSmallCond if lite else UpBlockBigCond
                block: nn.Module = block_cls(nfc[res // 2], nfc[res], res, z_dim)
            else:
                block = (UpBlockSmall if lite else UpBlockBig)(nfc[res // 2], nfc[res], res)
            self.add_module(f"feat_{res}", block)
        for res, src in SLE_SOURCES.items():
            if res <= img_resolution:
                self.add_module(f"se_{res}", SkipLayerExcitation(nfc[src], nfc[res]))
        self.to_big = sn_conv2d(nfc[img_resolution], img_channels, 3, 1, 1, bias=True)
        if self.cond:
            self.embed = nn.Embedding(num_classes, z_dim)

    def forward(
        self,
        ws: torch.Tensor,                  # [N, 1, z_dim], or [N, 1, z_dim + c_dim] when conditional
        c: torch.Tensor | None = None,     # [N, c_dim] one-hot; needed when conditional and ws has no labels
        noise_mode: str = "random",        # 'random' | 'const' | 'none'
        force_fp32: bool = False,          # accepted for the common interface: FastGAN always runs in float32
        update_emas: bool = False,         # accepted for the common interface: no EMA statistics here
        fused_modconv: bool | None = None,  # StyleGAN2's switch, accepted so generic callers work; unused
    ) -> torch.Tensor:                     # [N, img_channels, R, R]
        widths = [self.z_dim] + ([self.z_dim + self.c_dim] if self.cond and self.c_dim else [])
        if ws.ndim != 3 or ws.shape[1] != 1 or ws.shape[2] not in widths:
            shapes = " or ".join(f"[N, 1, {w}]" for w in widths)
            raise ValueError(f"ws must be {shapes}, got {tuple(ws.shape)}")
        check_noise_mode(noise_mode)
        if ws.shape[2] != self.z_dim:  # labels ride in ws (see the class docstring); explicit c wins
            ws, carried = ws[:, :, :self.z_dim], ws[:, 0, self.z_dim:]
            c = carried if c is None else c
        # The latent is projected onto the sphere (pixel norm of Progressive GAN), as official.
        z = normalize_2nd_moment(ws[:, 0].to(torch.float32))
        y = None
        if self.cond:
            if c is None or c.ndim != 2 or c.shape[0] != ws.shape[0]:
                raise ValueError("conditional FastGAN synthesis needs labels c [N, c_dim]: call synthesis(ws, c)")
            y = self.embed(c.argmax(dim=1))  # [N, z_dim]
        x = self.init(z)                     # [N, nfc[4], 4, 4]
        gates = {4: x}                       # SLE inputs by resolution
        for res in self.block_resolutions:
            x = getattr(self, f"feat_{res}")(x, y, noise_mode)
            if res in SLE_SOURCES:
                x = getattr(self, f"se_{res}")(gates[SLE_SOURCES[res]], x)
            if res in SLE_SOURCES.values():
                gates[res] = x
        return self.to_big(x)


class FastGANMapping(nn.Module):
    """The official `DummyMapping`: ws = z as [N, 1, z_dim] (w_dim = z_dim, num_ws = 1); no parameters.

    Conditional (cond=True): ws = [z, c] as [N, 1, z_dim + c_dim] (w_dim = z_dim + c_dim), so the labels
    travel with ws to `FastGANSynthesis` through code that only passes ws along; the official mapping
    drops c and its synthesis takes c as a second argument, which `FastGANSynthesis` still accepts.

    Truncation: `truncation_psi` and `truncation_cutoff` are accepted and have no effect, as in the
    official code. FastGAN has no learned W average: the prior mean of z is 0, and the synthesis projects z
    onto the sphere, so moving z toward that mean (psi * z) would only change its length, which the
    projection removes. `w_avg` is that prior mean (zeros), kept for code that reads `G.mapping.w_avg`.
    """

    def __init__(self, z_dim: int, c_dim: int, cond: bool = False) -> None:
        super().__init__()
        self.z_dim, self.c_dim = z_dim, c_dim
        self.cond = bool(cond) and c_dim > 0
        self.w_dim, self.num_ws = z_dim + (c_dim if self.cond else 0), 1
        self.register_buffer("w_avg", torch.zeros(self.w_dim), persistent=False)

    def forward(
        self,
        z: torch.Tensor,                       # [N, z_dim]
        c: torch.Tensor | None = None,         # [N, c_dim]; appended to ws when conditional, else unused
        truncation_psi: float = 1,             # no effect (see class docstring)
        truncation_cutoff: int | None = None,  # no effect
        update_emas: bool = False,             # no effect: nothing is tracked
        skip_w_avg_update: bool = False,       # no effect
    ) -> torch.Tensor:                         # [N, 1, w_dim]
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], got {tuple(z.shape)}")
        if not self.cond:
            return z.unsqueeze(1)
        if c is None or c.ndim != 2 or c.shape != (z.shape[0], self.c_dim):
            raise ValueError(f"a conditional FastGAN needs labels c [{z.shape[0]}, {self.c_dim}], got "
                             f"{None if c is None else tuple(c.shape)}")
        return torch.cat([z, c.to(z.dtype)], dim=1).unsqueeze(1)


class FastGANGenerator(nn.Module):
    """G(z, c) -> image in about [-1, 1] (no output activation, as official), [N, img_channels, R, R].

    Constructor arguments are those of the official `pg_modules.networks_fastgan.Generator`; its
    `synthesis_kwargs` (`lite`, `num_classes`) may also be given flat. `self.init_kwargs` holds the resolved
    arguments as plain data, so `FastGANGenerator(**G.init_kwargs)` rebuilds the same network.
    """

    def __init__(
        self,
        z_dim: int = 256,
        c_dim: int = 0,
        w_dim: int = 0,                    # official passes 0; the ws FastGAN uses are z, so w_dim is z_dim
        img_resolution: int = 256,
        img_channels: int = 3,
        ngf: int = 128,
        cond: bool | int | None = None,    # None: conditional when c_dim > 0 (official train.py's --cond)
        lite: bool = False,
        num_classes: int | None = None,    # class-embedding rows; None: max(1000, c_dim) like official
        mapping_kwargs: dict[str, Any] | None = None,    # official slot; FastGAN's mapping takes none
        synthesis_kwargs: dict[str, Any] | None = None,  # official slot: `lite`, `num_classes`
    ) -> None:
        super().__init__()
        if mapping_kwargs:
            raise TypeError(f"FastGAN's mapping takes no options, got mapping_kwargs={mapping_kwargs!r}")
        extra = dict(synthesis_kwargs or {})
        lite = bool(extra.pop("lite", lite))
        num_classes = extra.pop("num_classes", num_classes)
        if extra:
            raise TypeError(f"unknown FastGAN synthesis_kwargs {sorted(extra)}; known: ['lite', 'num_classes']")
        if w_dim not in (0, z_dim):
            raise ValueError(f"FastGAN's ws are its z: w_dim must be 0 or z_dim={z_dim}, got {w_dim}")
        cond = bool(c_dim > 0 if cond is None else cond)
        if cond and c_dim <= 0:
            raise ValueError("a conditional FastGAN (cond=True) needs c_dim > 0")
        if cond:
            num_classes = max(OFFICIAL_NUM_CLASSES, c_dim) if num_classes is None else int(num_classes)
            if num_classes < c_dim:
                raise ValueError(f"num_classes={num_classes} is smaller than c_dim={c_dim}")
        else:
            num_classes = None
        self.init_kwargs: dict[str, Any] = dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            ngf=ngf, cond=int(cond), lite=lite, num_classes=num_classes,
        )
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.cond, self.lite = cond, lite
        self.mapping = FastGANMapping(z_dim, c_dim, cond)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, self.mapping.w_dim, 1
        self.synthesis = FastGANSynthesis(z_dim=z_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          ngf=ngf, lite=lite, cond=cond,
                                          num_classes=num_classes or OFFICIAL_NUM_CLASSES, c_dim=c_dim)

    def forward(
        self,
        z: torch.Tensor,                       # [N, z_dim]
        c: torch.Tensor | None = None,         # [N, c_dim]; ignored when unconditional
        truncation_psi: float = 1,             # no effect (see FastGANMapping)
        truncation_cutoff: int | None = None,  # no effect
        noise_mode: str = "random",            # 'random' (official) | 'const' (deterministic) | 'none'
        force_fp32: bool = False,              # FastGAN always runs in float32
        update_emas: bool = False,
        fused_modconv: bool | None = None,     # StyleGAN2's switch, accepted so generic callers work; unused
    ) -> torch.Tensor:                         # [N, img_channels, R, R]
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, update_emas=update_emas)
