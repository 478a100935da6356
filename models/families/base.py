"""What every model family answers: its networks, its loss, the options it trains without, its precision rule.

A `Family` is data plus a few functions; the training stage, the option resolution and the checkpoints ask it
instead of comparing family names. The three families are defined in `stylegan2`, `stylegan3` and `projected`
beside this module and looked up in `models.families` (the only place a family's name decides anything).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from models.loss import StatsSink
from models.precision import reduced_precision
from models.presets import Preset


class Loss(Protocol):
    """The objective of a family: runs one phase (Gmain, Greg, Gboth, Dmain, Dreg, Dboth) and leaves its
    gradients in `.grad`; distribution is the training loop's business. `state_dict` holds what the loss
    itself carries between steps (StyleGAN2's path-length mean; nothing for Projected GAN): per process, saved
    in every checkpoint and restored by `load_state_dict`."""

    def accumulate_gradients(self, phase: str, real_img: torch.Tensor, real_c: torch.Tensor, gen_z: torch.Tensor,
                             gen_c: torch.Tensor, gain: float, cur_nimg: int = 0) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass(frozen=True)
class LossParts:
    """What a family's loss is built from (the training loop's objects, nothing resolved here)."""

    G_mapping: Callable[..., torch.Tensor]        # G.mapping, or a frozen stand-in (transfer learning)
    G_synthesis: Callable[..., torch.Tensor]
    D: Callable[..., torch.Tensor]
    augment_pipe: Callable[[torch.Tensor], torch.Tensor] | None
    stats: StatsSink | None
    device: torch.device | str


# Values of a training option that ask for nothing: a family that trains without the option accepts them.
_NEUTRAL: tuple[Any, ...] = (None, False, 0, "noaug")


@dataclass(frozen=True)
class Family:
    name: str                                   # the key in `FAMILIES` and in `Preset.family`
    title: str                                  # for messages: "StyleGAN2-ADA"
    generator_classes: tuple[str, ...]          # snapshot-registry names of its generators ...
    discriminator_classes: tuple[str, ...]      # ... and discriminators (a (G, D) pair names one family)
    unused_options: tuple[str, ...]             # `train:` options it trains without, so refuses when given
    trains_without: str                         # why, for the refusal message
    measures_equivariance: bool                 # EQ-T/EQ-R metrics apply to its generators
    channels_last: bool                         # `nhwc` for its fp16 layers is implemented
    network_kwargs: Callable[[Preset, int, int, int], tuple[dict[str, Any], dict[str, Any]]]
    network_classes: Callable[[Preset], tuple[str, str]]
    loss_kwargs: Callable[[Preset, Any], dict[str, Any]]             # (preset, TrainConfig-like choices)
    make_loss: Callable[[LossParts, str, dict[str, Any]], Loss]      # (parts, G class name, loss kwargs)
    autocast_training: bool = False             # bf16 by torch.autocast (no blocks of its own that follow the
                                                # reduced-precision policy of models.precision)
    batch_rules: Callable[[Preset, int, bool], dict[str, Any]] | None = None
    derive_preset: Callable[[Preset, int], Preset] | None = None     # resolution-dependent preset values

    def refused(self, choices: Any) -> list[str]:
        """The unused options `choices` (a TrainConfig) sets to something that would ask for an effect."""
        return [name for name in self.unused_options if getattr(choices, name, None) not in _NEUTRAL]

    @contextlib.contextmanager
    def training_precision(self, precision: str, device_type: str, phase: str = "Gmain") -> Iterator[None]:
        """The forward and backward passes of a training phase in `precision` ("fp32" | "bf16"); the parameters,
        gradients and Adam state stay float32 (master weights). bf16 for StyleGAN2/3: every synthesis and D
        block in bfloat16 through the same policy as the official fp16 path, with its float32 islands (mapping,
        styles, demodulation, the RGB accumulator, D's epilogue) and activation clamping kept; for Projected
        GAN: torch.autocast over G and the projected D.

        The regularization phases (Greg: path length, Dreg: R1) stay float32: their gradients of gradients
        lose most of bfloat16's 8-bit mantissa (measured on the tiny networks: R1's gradient 23% off in relative
        norm, against 5-7% for the main phases; tests/test_train_bf16.py), and they run every 4th and 16th
        minibatch only, so keeping them exact costs little time."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"training precision must be fp32 or bf16, got {precision!r}")
        if precision == "fp32" or phase in ("Greg", "Dreg"):
            yield
        elif self.autocast_training:
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
        else:
            # channels-last: oneDNN's bfloat16 convolutions run ~10-15% faster on NHWC (measured on D at 32/64 px).
            with reduced_precision(torch.bfloat16, (device_type,), all_blocks=True, channels_last=True):
                yield

    @staticmethod
    def fp16_holders(G_kwargs: dict[str, Any], D_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """The precision rule's handles: the constructor kwargs holding `num_fp16_res` / `conv_clamp` (StyleGAN2's
        synthesis kwargs are nested, StyleGAN3's flat; FastGAN and the projected D have no fp16 layers)."""
        synthesis = G_kwargs.get("synthesis_kwargs", G_kwargs)
        return [kw for kw in (synthesis, D_kwargs) if "num_fp16_res" in kw]
