"""Export-only modules around a `Generator`: mapping + truncation (psi as a tensor input) + synthesis.

The official interface takes `truncation_psi` as a Python float, which would be baked into a traced
graph. Serving wants it per request, so `GeneratorForExport` re-states the truncation trick with a
tensor `psi [B, 1]`; the weights are the generator's own (shared, not copied).

StyleGAN3 generators go through the same modules: their only extra state, the user transform
`synthesis.input.transform`, is a buffer and becomes a constant of the graph (its value at export time).

Both modules call the synthesis network with `noise_mode='const'` (the fixed noise buffers become
initializers), `force_fp32=True` (a graph has one precision; fp16 is a separate conversion) and
`fused_modconv=False`: the fused path is a grouped convolution with groups = batch size, which cannot
be exported with a dynamic batch axis, while scale-conv-scale can.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import torch

SYNTHESIS_KWARGS = dict(noise_mode="const", force_fp32=True, fused_modconv=False)


class GeneratorForExport(torch.nn.Module):
    """(z [B, z_dim], c [B, c_dim] | absent, psi [B, 1]) -> img [B, C, H, W] float32 in ~[-1, 1]."""

    def __init__(self, G: torch.nn.Module, truncation_cutoff: int | None = None) -> None:
        super().__init__()
        self.G = G
        self.c_dim = int(G.c_dim)
        num_ws = int(G.num_ws)
        # Official truncation with a cutoff only pulls the first `cutoff` ws towards w_avg; a 0/1 mask
        # turns that slice assignment into arithmetic that a graph with per-sample psi can express.
        cutoff = num_ws if truncation_cutoff is None else min(int(truncation_cutoff), num_ws)
        mask = (torch.arange(num_ws) < cutoff).to(torch.float32).reshape(1, num_ws, 1)  # [1, num_ws, 1]
        self.register_buffer("trunc_mask", mask, persistent=False)

    def truncate(self, ws: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """ws [B, num_ws, W], psi [B, 1] -> w_avg.lerp(ws, psi) on the masked ws (official formula)."""
        psi = psi.to(torch.float32).reshape(-1, 1, 1)  # [B, 1, 1]
        # Where the mask is 0 the weight is exactly 1 and lerp returns ws bit for bit, as the official
        # code does by not touching those ws; psi == 1 likewise reproduces untruncated output exactly.
        weight = 1 + (psi - 1) * self.trunc_mask  # [B, num_ws, 1]
        return torch.lerp(self.G.mapping.w_avg.to(ws.dtype), ws, weight)

    def generate(self, z: torch.Tensor, c: torch.Tensor | None, psi: torch.Tensor) -> torch.Tensor:
        ws = self.G.mapping(z, c, truncation_psi=1)  # [B, num_ws, W]
        return self.G.synthesis(self.truncate(ws, psi), **SYNTHESIS_KWARGS)  # [NCHW]

    def forward(self, z: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        return self.generate(z, None, psi)


class ConditionalGeneratorForExport(GeneratorForExport):
    """The conditional variant: (z, c, psi). A separate signature, because torch.export matches
    `dynamic_shapes` to named arguments and cannot express an optional middle input."""

    def forward(self, z: torch.Tensor, c: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.generate(z, c, psi)


def generator_for_export(G: torch.nn.Module, truncation_cutoff: int | None = None) -> GeneratorForExport:
    cls = ConditionalGeneratorForExport if G.c_dim > 0 else GeneratorForExport
    return cls(G, truncation_cutoff=truncation_cutoff).eval()


class SynthesisForExport(torch.nn.Module):
    """ws [B, num_ws, w_dim] -> img [B, C, H, W]: for clients that do their own mapping/mixing."""

    def __init__(self, G: torch.nn.Module) -> None:
        super().__init__()
        self.synthesis = G.synthesis

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis(ws, **SYNTHESIS_KWARGS)


def _symbolic_shape(t: torch.Tensor) -> list:
    return list(t.shape)


def _static_shape_users() -> list[Any]:
    """The modules that read shapes through `ops.impl.static_shape` on the batch dimension of activations
    (StyleGAN2: modulated conv; StyleGAN3: also the synthesis network, its layers and filtered_lrelu)."""
    # By module path: `ops` re-exports functions under some of these module names.
    names = ("ops.modulated_conv", "ops.filtered_lrelu", "models.stylegan3.synthesis",
             "models.stylegan3.synthesis_layer")
    return [importlib.import_module(name) for name in names]


@contextlib.contextmanager
def symbolic_batch_shapes() -> Iterator[None]:
    """Keep the batch size symbolic in the ops and layers that read shapes while exporting.

    `ops.impl.static_shape` turns every dimension into a Python int; under `torch.export` that
    specialises the batch dimension (reshape(batch_size, ...)), so the export either fails with
    "marked batch as dynamic but your code specialized it" or silently produces a fixed-batch graph.
    Within this context those modules read shapes as they are (SymInts for the batch, ints elsewhere).
    The lasting fix belongs in the ops and models (a `static_shape` that keeps dimension 0 symbolic
    under torch.export); this is scoped to the export call and restored even on error.
    """
    modules = _static_shape_users()
    originals = [m.static_shape for m in modules]
    for m in modules:
        m.static_shape = _symbolic_shape
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.static_shape = original
