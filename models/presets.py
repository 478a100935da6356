"""Training configuration presets: the official StyleGAN2-ADA table, the StyleGAN3 configs, and small
presets for CPU.

The numbers of the official presets are the papers' (StyleGAN2-ADA, Karras et al. 2020, Appendix D and the
reference implementation's `--cfg` table; StyleGAN3, Karras et al. 2021, and its `train.py`). `auto` is a
pure function of resolution and GPU count. StyleGAN3 settings that follow from the batch size (EMA
half-life, magnitude EMA, blur fade) are derived from the actual batch by the StyleGAN3 family
(`models.families`), which also turns a preset into network constructor arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """One row of the preset table; -1 marks values that `auto` derives from resolution and GPUs."""

    ref_gpus: int            # GPU count the batch split was tuned for
    kimg: int                # training length in thousands of real images shown
    mb: int                  # global minibatch
    mbstd: int               # minibatch-stddev group size
    fmaps: float             # channel_base = fmaps * 32768
    lrate: float             # Adam learning rate for G and D
    gamma: float             # R1 weight
    ema: float               # G_ema half-life in kimg
    ramp: float | None       # EMA ramp-up (fraction of images seen), None = off
    map: int                 # mapping network depth
    channel_max: int = 512   # widest layer
    z_dim: int = 512
    w_dim: int = 512
    num_fp16_res: int = 4    # top resolutions in fp16 (CUDA only)
    conv_clamp: float | None = 256
    pl_weight: float = 2.0   # path-length regularization weight (0 = off)
    style_mixing_prob: float = 0.9
    d_architecture: str = "resnet"
    family: str = "stylegan2"            # a key of models.families.FAMILIES
    d_lrate: float | None = None         # D's Adam lr when it differs from G's (StyleGAN3: 0.002)
    g_reg_interval: int | None = 4       # lazy G regularization; None = no Greg phase, unscaled Adam (StyleGAN3)
    requires_gamma: bool = False         # the official config has no gamma default (StyleGAN3)
    radial: bool = False                 # StyleGAN3-R: 1x1 convs, 2x channels, radial filters, D input blur
    num_layers: int = 14                 # StyleGAN3 synthesis layers
    d_reg_interval: int | None = 16      # lazy R1; None = no Dreg phase, unscaled Adam (Projected GAN)
    generator: str = ""                  # projected family: fastgan | fastgan_lite | stylegan2
    ngf: int = 128                       # FastGAN width
    ndf: int | None = None               # Projected D: one width for every small D (None = official table)
    proj_channels: int = 64              # Projected D: channels of the first projection (official cout)
    default_aug: str = "ada"             # what --aug means when not given


PRESETS: dict[str, Preset] = {
    "auto":      Preset(ref_gpus=-1, kimg=25000,  mb=-1, mbstd=-1, fmaps=-1,  lrate=-1,     gamma=-1,   ema=-1,  ramp=0.05, map=2),  # noqa: E501
    "stylegan2": Preset(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),  # noqa: E501
    "paper256":  Preset(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),  # noqa: E501
    "paper512":  Preset(ref_gpus=8,  kimg=25000,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),  # noqa: E501
    "paper1024": Preset(ref_gpus=8,  kimg=25000,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),  # noqa: E501
    # CIFAR-10: no path length regularization, no style mixing, no residual D (paper, Appendix D).
    "cifar":     Preset(ref_gpus=2,  kimg=100000, mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2,    # noqa: E501
                        pl_weight=0.0, style_mixing_prob=0.0, d_architecture="orig"),
    # Not an official preset: 64 channels at every resolution up to 32 px, so a CPU trains it in
    # tens of seconds per kimg. For tests and the demo, not for quality.
    "tiny":      Preset(ref_gpus=1,  kimg=50,     mb=16, mbstd=4,  fmaps=1 / 16, lrate=0.0025, gamma=-1, ema=-1, ramp=0.05, map=2,  # noqa: E501
                        channel_max=64, z_dim=64, w_dim=64, num_fp16_res=0),
    # StyleGAN3 (alias-free). --gamma has no default (official; recommended at batch 32: 0.5 @128,
    # 2 @256, 8 @512, 32 @1024 px). No path length, no style mixing, no lazy G regularization.
    "stylegan3-t": Preset(ref_gpus=1, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.0025, gamma=-1, ema=-1, ramp=0.05, map=2,  # noqa: E501
                          pl_weight=0.0, style_mixing_prob=0.0, family="stylegan3", d_lrate=0.002, g_reg_interval=None,
                          requires_gamma=True),
    "stylegan3-r": Preset(ref_gpus=1, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.0025, gamma=-1, ema=-1, ramp=0.05, map=2,  # noqa: E501
                          pl_weight=0.0, style_mixing_prob=0.0, family="stylegan3", d_lrate=0.002, g_reg_interval=None,
                          requires_gamma=True, radial=True),
    # Not official: a StyleGAN3-T small enough for a CPU (64 channels, 8 layers); for tests and the demo.
    # Projected GAN (Sauer et al. 2021): hinge loss, frozen EfficientNet-Lite0 features, DiffAugment in D; no R1,
    # no path length, no ADA. Official: Adam lr 0.0002 (FastGAN) or 0.002 (StyleGAN2 G, D), betas (0, 0.99),
    # batch 64. The official loop still rescales D's Adam for a regularization interval of 16 that runs
    # nothing (lr x 16/17); here D has no Dreg phase and takes the lr as given.
    "fastgan":      Preset(ref_gpus=1, kimg=25000, mb=64, mbstd=0, fmaps=1, lrate=0.0002, gamma=0, ema=-1, ramp=0.05, map=0,  # noqa: E501
                           z_dim=256, w_dim=256, pl_weight=0.0, style_mixing_prob=0.0, family="projected",
                           g_reg_interval=None, d_reg_interval=None, generator="fastgan", default_aug="noaug"),
    "fastgan_lite": Preset(ref_gpus=1, kimg=25000, mb=64, mbstd=0, fmaps=1, lrate=0.0002, gamma=0, ema=-1, ramp=0.05, map=0,  # noqa: E501
                           z_dim=256, w_dim=256, pl_weight=0.0, style_mixing_prob=0.0, family="projected",
                           g_reg_interval=None, d_reg_interval=None, generator="fastgan_lite", default_aug="noaug"),
    "projected_stylegan2": Preset(ref_gpus=1, kimg=25000, mb=64, mbstd=0, fmaps=1, lrate=0.002, gamma=0, ema=-1, ramp=0.05, map=2,  # noqa: E501
                                  z_dim=64, w_dim=128, pl_weight=0.0, style_mixing_prob=0.0, family="projected",
                                  g_reg_interval=None, d_reg_interval=None, generator="stylegan2", default_aug="noaug"),
    # Not official: FastGAN-lite with 16 channels and 16-channel D heads, for CPU tests and the demo.
    "fastgan_tiny": Preset(ref_gpus=1, kimg=50, mb=8, mbstd=0, fmaps=1, lrate=0.0002, gamma=0, ema=-1, ramp=0.05, map=0,
                           z_dim=64, w_dim=64, pl_weight=0.0, style_mixing_prob=0.0, family="projected",
                           g_reg_interval=None, d_reg_interval=None, generator="fastgan_lite", ngf=16, ndf=16,
                           proj_channels=16, default_aug="noaug"),
    "stylegan3-tiny": Preset(ref_gpus=1, kimg=50, mb=16, mbstd=4, fmaps=1 / 16, lrate=0.0025, gamma=-1, ema=-1, ramp=0.05, map=2,  # noqa: E501
                             channel_max=64, z_dim=64, w_dim=64, num_fp16_res=0, pl_weight=0.0, style_mixing_prob=0.0,
                             family="stylegan3", d_lrate=0.002, g_reg_interval=None, num_layers=8),
}


def resolve_preset(name: str, resolution: int, gpus: int = 1) -> Preset:
    """The preset with every `auto` value filled in (official heuristics for `auto`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    spec = PRESETS[name]
    if name == "auto":
        mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)  # bounded per-GPU memory
        spec = dataclasses.replace(
            spec,
            ref_gpus=gpus,
            mb=mb,
            mbstd=min(mb // gpus, 4),  # a fixed group size keeps other hyperparameters predictable
            fmaps=1 if resolution >= 512 else 0.5,
            lrate=0.002 if resolution >= 1024 else 0.0025,
            gamma=0.0002 * resolution**2 / mb,
            ema=mb * 10 / 32,
        )
    else:
        # The other rows mark with -1 what follows the same heuristics from their fixed batch.
        if spec.gamma == -1:
            spec = dataclasses.replace(spec, gamma=0.0002 * resolution**2 / spec.mb)
        if spec.ema == -1:
            spec = dataclasses.replace(spec, ema=spec.mb * 10 / 32)
    return spec
