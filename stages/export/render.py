"""Render seeds to PNGs through an exported graph (onnxruntime, CPU or CUDA), an OpenVINO IR (CPU), a TensorRT
engine, or a snapshot.

    python -m stages.export render --model exports/generator_uint8.onnx --seeds 0-7 --trunc 0.7 --outdir out/
    python -m stages.export render --model exports/generator_uint8.xml --precision bf16 --seeds 0-7 --outdir out/
    python -m stages.export render --model runs/demo/network-snapshot-000100.safetensors --precision bf16 ...

Seeds map to latents by the official rule, z = np.random.RandomState(seed).randn(1, z_dim), so seed N
here is seed N of the official `generate.py` for the same network.

A snapshot (anything `models.load_generator` reads) runs in PyTorch, in `precision` fp32 (the official generator)
or bf16 (every synthesis block in bfloat16: about 2x the images/s on CPUs with AVX-512 BF16, images within a few
grey levels; see `models.precision`). An OpenVINO IR (.xml, with its .bin beside it) runs on the CPU in `precision`
fp32 or bf16 (OpenVINO's INFERENCE_PRECISION_HINT; the export's parity.json has both figures). ONNX graphs and
engines run in the precision they were built in.
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

GRAPH_SUFFIXES = (".onnx",)
IR_SUFFIXES = (".xml",)  # OpenVINO
ENGINE_SUFFIXES = (".plan", ".engine")


class Renderer:
    """One exported generator graph (.onnx), OpenVINO IR (.xml), engine (.plan/.engine) or snapshot; `render`
    returns uint8 NHWC.

    `run(feeds)` takes the graph's inputs (z [B, z_dim], truncation_psi [B, 1], c [B, c_dim]) and returns its
    output named `output_name`; a snapshot answers as the uint8 serving graph does (`img_uint8`, NHWC). An IR
    runs through `openvino_export.OpenVINOSession`, which has onnxruntime's session interface, so `session`
    is an onnxruntime session or that (`backend` says which).
    """

    def __init__(self, model: str | os.PathLike, providers: Sequence[str] | None = None,
                 precision: str = "fp32") -> None:
        from models.precision import check_precision

        self.path = Path(model)
        self.precision = check_precision(precision)
        self._torch: Any = None
        if not self.path.exists():
            raise FileNotFoundError(f"model not found: {self.path}")
        if self.path.suffix not in (*GRAPH_SUFFIXES, *IR_SUFFIXES, *ENGINE_SUFFIXES):
            self._init_torch()
            return
        if precision != "fp32" and self.path.suffix not in IR_SUFFIXES:
            raise BadInput(f"--precision {precision}: applies to PyTorch snapshots and OpenVINO IR (.xml); "
                           f"{self.path.name} runs in the precision it was exported in (generator_fp16.onnx or a "
                           "--fp16 engine for 16-bit)")
        self.backend = "tensorrt" if self.path.suffix in ENGINE_SUFFIXES else \
            "openvino" if self.path.suffix in IR_SUFFIXES else "onnxruntime"
        if self.path.suffix in ENGINE_SUFFIXES:
            from stages.export.tensorrt_build import TensorRTRunner

            self._trt = TensorRTRunner(self.path)
            engine = self._trt.engine
            self.input_names = list(self._trt.inputs)
            self.output_name = self._trt.outputs[0]
            self.z_dim = int(engine.get_tensor_shape("z")[1])
            self.c_dim = int(engine.get_tensor_shape("c")[1]) if "c" in self.input_names else 0
        else:
            self._trt = None
            if self.backend == "openvino":  # CPU only: `providers` does not apply
                from stages.export.openvino_export import OpenVINOSession

                self.session = OpenVINOSession(self.path, precision)
            else:
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

    def _init_torch(self) -> None:
        from models.serialization.loading import load_generator

        self._trt = None
        self.backend = "pytorch"
        self._torch = load_generator(self.path)
        self.z_dim, self.c_dim = int(self._torch.z_dim), int(self._torch.c_dim)
        self.input_names = ["z", "c", "truncation_psi"] if self.c_dim > 0 else ["z", "truncation_psi"]
        self.output_name = "img_uint8"

    def _run_torch(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The official generator (const noise), one call per distinct psi, in `self.precision`; uint8 NHWC."""
        import torch

        from models.precision import generator_precision

        G = self._torch
        z = torch.from_numpy(np.asarray(feeds["z"], np.float32))
        c = torch.from_numpy(np.asarray(feeds["c"], np.float32)) if "c" in feeds else None
        psi = np.asarray(feeds["truncation_psi"], np.float32).reshape(-1)
        out = np.zeros([len(psi), G.img_resolution, G.img_resolution, G.img_channels], np.uint8)
        with torch.no_grad(), generator_precision(self.precision, G, "cpu"):
            for value in np.unique(psi):
                idx = np.nonzero(psi == value)[0]
                sel = torch.from_numpy(idx)
                img = G(z[sel], None if c is None else c[sel], truncation_psi=float(value), noise_mode="const")
                out[idx] = nhwc(to_uint8(img.float()))
        return out

    def feeds(self, seeds: Sequence[int], psi: float | Sequence[float] = 1.0,
              class_idx: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        n = len(seeds)
        psis = np.broadcast_to(np.asarray(psi, np.float32).reshape(-1), [n]).reshape(n, 1)
        if not np.isfinite(psis).all():  # nan/inf give all-black images without a word
            raise ValueError(f"truncation psi must be a finite number, got {np.asarray(psi).reshape(-1)[:4].tolist()}")
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
        if self._torch is not None:
            return self._run_torch(feeds)
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
                 class_idx: int | None = None, batch: int = 8, providers: Sequence[str] | None = None,
                 precision: str = "fp32") -> list[Path]:
    """Write `seed%04d.png` per seed (the official naming) and return the paths."""
    images = Renderer(model, providers, precision=precision).render(seeds, psi, class_idx, batch=batch)
    return [save_png(img, Path(outdir) / f"seed{seed:04d}.png") for seed, img in zip(seeds, images)]


def describe_renderer(r: Renderer) -> dict[str, Any]:
    return {"model": str(r.path), "inputs": r.input_names, "output": r.output_name, "z_dim": r.z_dim, "c_dim": r.c_dim,
            "backend": r.backend, "precision": r.precision}
