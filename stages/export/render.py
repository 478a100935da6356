"""Render seeds to PNGs through an exported graph (onnxruntime, CPU or CUDA) or a TensorRT engine.

    python -m stages.export render --model exports/generator_uint8.onnx --seeds 0-7 --trunc 0.7 --outdir out/

Seeds map to latents by the official rule, z = np.random.RandomState(seed).randn(1, z_dim), so seed N
here is seed N of the official `generate.py` for the same network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import BadInput
from stages.common.images import nhwc, save_png, to_uint8
from stages.common.seeds import seeds_to_z
from stages.export.parity import ort_session


class Renderer:
    """One exported generator graph (.onnx) or engine (.plan/.engine); `render` returns uint8 NHWC."""

    def __init__(self, model: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        self.path = Path(model)
        if not self.path.exists():
            raise FileNotFoundError(f"model not found: {self.path}")
        if self.path.suffix in (".plan", ".engine"):
            from stages.export.tensorrt_build import TensorRTRunner

            self._trt = TensorRTRunner(self.path)
            engine = self._trt.engine
            self.input_names = list(self._trt.inputs)
            self.output_name = self._trt.outputs[0]
            self.z_dim = int(engine.get_tensor_shape("z")[1])
            self.c_dim = int(engine.get_tensor_shape("c")[1]) if "c" in self.input_names else 0
        else:
            self._trt = None
            try:
                self.session = ort_session(str(self.path), providers)
            except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BadInput(f"{self.path}: not a loadable ONNX graph ({first})") from None
            shapes = {i.name: i.shape for i in self.session.get_inputs()}
            self.input_names = list(shapes)
            self.output_name = self.session.get_outputs()[0].name
            self.z_dim = int(shapes["z"][1])
            self.c_dim = int(shapes["c"][1]) if "c" in shapes else 0
        if "z" not in self.input_names or "truncation_psi" not in self.input_names:
            raise BadInput(f"{self.path}: not a generator graph (inputs {self.input_names}; need z, truncation_psi)")

    def feeds(self, seeds: Sequence[int], psi: float | Sequence[float] = 1.0,
              class_idx: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        n = len(seeds)
        psis = np.broadcast_to(np.asarray(psi, np.float32).reshape(-1), [n]).reshape(n, 1)
        feeds: dict[str, np.ndarray] = {
            "z": seeds_to_z(list(seeds), self.z_dim).numpy(),
            "truncation_psi": np.ascontiguousarray(psis),
        }
        if self.c_dim > 0:
            if class_idx is None:
                raise ValueError("conditional network: give a class index (--class)")
            idx = np.broadcast_to(np.asarray(class_idx).reshape(-1), [n])
            if idx.min() < 0 or idx.max() >= self.c_dim:
                raise ValueError(f"class index must be in [0, {self.c_dim})")
            feeds["c"] = np.eye(self.c_dim, dtype=np.float32)[idx]
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._trt is not None:
            return self._trt(feeds)[self.output_name].cpu().numpy()
        return self.session.run([self.output_name], feeds)[0]

    def render(self, seeds: Sequence[int], psi: float | Sequence[float] = 1.0,
               class_idx: int | Sequence[int] | None = None, batch: int = 8) -> np.ndarray:
        """uint8 [N, H, W, C] for the seeds, `batch` at a time (graphs with float output are converted)."""
        chunks = []
        for i in range(0, len(seeds), batch):
            part = list(seeds[i:i + batch])
            psi_part = psi if np.ndim(psi) == 0 else list(psi)[i:i + batch]
            cls_part = class_idx if class_idx is None or np.ndim(class_idx) == 0 else list(class_idx)[i:i + batch]
            out = self.run(self.feeds(part, psi_part, cls_part))
            chunks.append(out if out.dtype == np.uint8 else nhwc(to_uint8(out)))
        return np.concatenate(chunks)


def render_seeds(model: str | os.PathLike, seeds: Sequence[int], outdir: str | os.PathLike, psi: float = 1.0,
                 class_idx: int | None = None, batch: int = 8, providers: Sequence[str] | None = None) -> list[Path]:
    """Write `seed%04d.png` per seed (the official naming) and return the paths."""
    images = Renderer(model, providers).render(seeds, psi, class_idx, batch=batch)
    return [save_png(img, Path(outdir) / f"seed{seed:04d}.png") for seed, img in zip(seeds, images)]


def describe_renderer(r: Renderer) -> dict[str, Any]:
    return {"model": str(r.path), "inputs": r.input_names, "output": r.output_name, "z_dim": r.z_dim, "c_dim": r.c_dim}
