"""The layer schedule of the alias-free generator (Karras et al. 2021, Sec. 3.2, "Flexible layer
specifications", and Fig. 4b).

Layer i works on a band-limited signal described by four numbers: its cutoff f_c, the minimum
stopband f_t, the sampling rate s it is stored at and the resulting transition half-width f_h.
Cutoff and stopband grow geometrically from the first layer to the last `num_critical` layers,
which are critically sampled at the output resolution (f_c = s / 2) so that the image is sharp.
The sampling rate is the smallest power of two that holds the stopband (capped at the output
resolution), and the feature maps carry `margin_size` extra pixels on each side so that the
boundary effects of padding stay outside the image.

Entry 0 describes the Fourier-feature input; layer `L{i}` reads entry max(i - 1, 0) and writes
entry i, so `L0` keeps the input's spec and the last entry is the RGB output.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BandSpec:
    """The signal one layer produces."""

    cutoff: float          # f_c
    stopband: float        # f_t
    sampling_rate: int     # s
    half_width: float      # f_h = max(f_t, s / 2) - f_c
    size: int              # stored pixels per axis, margins included
    channels: int


def layer_schedule(
    img_resolution: int,
    img_channels: int,
    channel_base: int,
    channel_max: int,
    num_layers: int,           # layers excluding the Fourier-feature input and ToRGB
    num_critical: int,         # critically sampled layers at the end
    first_cutoff: float,       # f_{c,0}
    first_stopband: float,     # f_{t,0}
    last_stopband_rel: float,  # f_{t,N} / f_{c,N}
    margin_size: int,
) -> list[BandSpec]:
    """`num_layers + 1` band specs: index 0 for the input and L0, ..., the last one for ToRGB."""
    if num_layers <= num_critical:
        raise ValueError(f"num_layers ({num_layers}) must exceed num_critical ({num_critical})")
    last_cutoff = img_resolution / 2  # f_{c,N}: Nyquist of the output image
    last_stopband = last_cutoff * last_stopband_rel  # f_{t,N}
    # Position along the geometric progression; 1 for the critically sampled tail.
    progress = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** progress
    stopbands = first_stopband * (last_stopband / first_stopband) ** progress
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = img_resolution  # the last layer and ToRGB work on the image itself, no margin
    # Channel count inversely proportional to the cutoff: more capacity where the signal is coarse.
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return [
        BandSpec(
            cutoff=float(cutoffs[i]), stopband=float(stopbands[i]), sampling_rate=int(sampling_rates[i]),
            half_width=float(half_widths[i]), size=int(sizes[i]), channels=int(channels[i]),
        )
        for i in range(num_layers + 1)
    ]
