"""Low-level ops of StyleGAN2-ADA and StyleGAN3 in plain PyTorch (no custom kernels, no compile step).

Each op takes ``impl="ref" | "fast" | "auto"``; see ``ops.impl``.
"""

from .bias_act import activation_funcs, bias_act
from .conv2d_resample import conv2d_resample
from .filtered_lrelu import filtered_lrelu
from .fma import fma
from .impl import implementations_in_use
from .modulated_conv import modulated_conv2d
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "activation_funcs",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "filtered_lrelu",
    "fma",
    "implementations_in_use",
    "modulated_conv2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
