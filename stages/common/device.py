"""The `--device` option of the rendering commands: cpu, cuda, cuda:N or auto."""

from __future__ import annotations

import torch

from stages.common.errors import BadInput, EnvironmentFault


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name}: not a device name (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvironmentFault(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return device
