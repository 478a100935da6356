"""The StyleGAN3 synthesis network: Fourier-feature input, `num_layers` alias-free layers, ToRGB.

Layers are named as in the official network, `L{index}_{size}_{channels}` (e.g. `L0_36_512`), so
state_dict names match one to one. ws: one for the input, one per layer (`num_ws = num_layers + 2`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from models.stylegan3.schedule import layer_schedule
from models.stylegan3.synthesis_input import SynthesisInput
from models.stylegan3.synthesis_layer import StyleGAN3SynthesisLayer
from ops.impl import static_shape


class StyleGAN3SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, img_resolution, img_resolution] float32."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,        # channels of a layer = min(channel_base / 2 / cutoff, channel_max)
        channel_max: int = 512,
        num_layers: int = 14,             # excluding the Fourier-feature input and ToRGB
        num_critical: int = 2,            # critically sampled layers at the end
        first_cutoff: float = 2,          # f_{c,0}
        first_stopband: float = 2**2.1,   # f_{t,0}
        last_stopband_rel: float = 2**0.3,  # f_{t,N} relative to f_{c,N}
        margin_size: int = 10,            # extra pixels around the image in the feature maps
        output_scale: float = 0.25,       # scale of the final image
        num_fp16_res: int = 4,            # layers sampled above img_resolution / 2**N use float16 (CUDA only)
        **layer_kwargs: Any,              # for StyleGAN3SynthesisLayer: conv_kernel, use_radial_filters, ...
    ) -> None:
        super().__init__()
        self.init_kwargs: dict[str, Any] = copy.deepcopy(dict(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, num_layers=num_layers, num_critical=num_critical, first_cutoff=first_cutoff,
            first_stopband=first_stopband, last_stopband_rel=last_stopband_rel, margin_size=margin_size,
            output_scale=output_scale, num_fp16_res=num_fp16_res, **layer_kwargs,
        ))
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.margin_size = margin_size
        self.output_scale = output_scale
        self.num_fp16_res = num_fp16_res

        bands = layer_schedule(
            img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
            first_cutoff, first_stopband, last_stopband_rel, margin_size,
        )
        self.input = SynthesisInput(
            w_dim=w_dim, channels=bands[0].channels, size=bands[0].size,
            sampling_rate=bands[0].sampling_rate, bandwidth=bands[0].cutoff,
        )
        self.layer_names: list[str] = []
        for idx, out in enumerate(bands):
            inp = bands[max(idx - 1, 0)]
            layer = StyleGAN3SynthesisLayer(
                w_dim=w_dim, is_torgb=idx == num_layers, is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=out.sampling_rate * 2**num_fp16_res > img_resolution,
                in_channels=inp.channels, out_channels=out.channels, in_size=inp.size, out_size=out.size,
                in_sampling_rate=inp.sampling_rate, out_sampling_rate=out.sampling_rate,
                in_cutoff=inp.cutoff, out_cutoff=out.cutoff,
                in_half_width=inp.half_width, out_half_width=out.half_width,
                **layer_kwargs,
            )
            name = f"L{idx}_{out.size}_{out.channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(
        self,
        ws: torch.Tensor,                   # [N, num_ws, W]
        noise_mode: str = "random",         # accepted and ignored: StyleGAN3 has no noise inputs
        force_fp32: bool = False,
        update_emas: bool = False,          # update every layer's magnitude_ema from this batch
        fused_modconv: bool | None = None,  # modulated-conv formulation; same result either way
    ) -> torch.Tensor:                      # [NCHW] float32
        if static_shape(ws)[1:] != [self.num_ws, self.w_dim]:
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])  # [NCHW]
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(
                x, w, noise_mode=noise_mode, force_fp32=force_fp32, update_emas=update_emas,
                fused_modconv=fused_modconv,
            )
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)

    def extra_repr(self) -> str:
        return (
            f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_layers={self.num_layers}, num_critical={self.num_critical}, "
            f"margin_size={self.margin_size}, num_fp16_res={self.num_fp16_res}"
        )
