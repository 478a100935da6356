"""Parity of exported graphs with the PyTorch generator, run through onnxruntime (or OpenVINO, for the IR).

The reference is the official interface itself, `G(z, c, truncation_psi=psi, noise_mode='const',
force_fp32=True)` with psi a Python float, called once per distinct psi in the batch, with the
generator's default (fused, per-sample) modulated convolution. So a pass means "the serving graph
reproduces what the official code would have produced", not merely "the exporter round-trips".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch

from stages.common.images import nhwc, to_uint8

FP32_TOLERANCE = 1e-3  # max abs error in [-1, 1] image units; measured ~1e-5
UINT8_LEVELS = 1       # max grey-level difference of a uint8 graph: float round-off may cross one level boundary


@dataclasses.dataclass(frozen=True)
class Gate:
    """What a parity variant must meet to pass; None = not checked, all None = reported only (fp16).

    Float graphs are judged in [-1, 1] image units, uint8 graphs in grey levels; PSNR applies to both (uint8:
    over levels, range 255), the worst batch counting.
    """

    max_abs_err: float | None = None   # float graphs
    max_level_diff: int | None = None  # uint8 graphs
    min_psnr_db: float | None = None   # either

    @property
    def gated(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def passes(self, summary: dict[str, Any]) -> bool:
        # Written as "not (x > limit)" would let a NaN through; these comparisons are False for NaN.
        return all([
            self.max_abs_err is None or summary.get("max_abs_err", math.nan) <= self.max_abs_err,
            self.max_level_diff is None or summary.get("max_level_diff", math.inf) <= self.max_level_diff,
            self.min_psnr_db is None or summary.get("psnr_db", math.nan) >= self.min_psnr_db,
        ])


def default_gate(name: str, tolerance: float = FP32_TOLERANCE) -> Gate:
    """The gate a variant gets by its name: uint8 -> one level, fp16 -> none (reported), else fp32 `tolerance`."""
    if "uint8" in name:
        return Gate(max_level_diff=UINT8_LEVELS)
    if "fp16" in name:
        return Gate()
    return Gate(max_abs_err=tolerance)


def ort_session(model: onnx.ModelProto | str, providers: Sequence[str] | None = None) -> Any:
    import onnxruntime as ort

    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no per-session warnings about unused initializers etc.
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    return ort.InferenceSession(src, sess_options=opts, providers=chosen or ["CPUExecutionProvider"])


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; images in [-1, 1] have a range of 2."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def make_inputs(G: torch.nn.Module, batch: int, psi_values: Sequence[float], seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for a generator graph: z from `seed`, psi cycling through `psi_values`, c one-hot cycling."""
    rnd = np.random.RandomState(seed)
    feeds = {
        "z": rnd.randn(batch, G.z_dim).astype(np.float32),
        "truncation_psi": np.array([psi_values[i % len(psi_values)] for i in range(batch)], np.float32)[:, None],
    }
    if G.c_dim > 0:
        feeds["c"] = np.eye(G.c_dim, dtype=np.float32)[np.arange(batch) % G.c_dim]
    return feeds


@torch.no_grad()
def reference_images(
    G: torch.nn.Module, feeds: dict[str, np.ndarray], truncation_cutoff: int | None = None
) -> np.ndarray:
    """The official generator on the same feeds, grouped by psi (it takes one float per call)."""
    z = torch.from_numpy(feeds["z"])
    c = torch.from_numpy(feeds["c"]) if "c" in feeds else None
    psi = feeds["truncation_psi"].reshape(-1)
    out = np.zeros([len(psi), G.img_channels, G.img_resolution, G.img_resolution], np.float32)
    for value in np.unique(psi):
        idx = np.nonzero(psi == value)[0]
        sel = torch.from_numpy(idx)
        img = G(z[sel], None if c is None else c[sel], truncation_psi=float(value),
                truncation_cutoff=truncation_cutoff, noise_mode="const", force_fp32=True)
        out[idx] = img.numpy()
    return out


@torch.no_grad()
def reference_ws(G: torch.nn.Module, feeds: dict[str, np.ndarray], truncation_cutoff: int | None = None) -> np.ndarray:
    z = torch.from_numpy(feeds["z"])
    c = torch.from_numpy(feeds["c"]) if "c" in feeds else None
    psi = feeds["truncation_psi"].reshape(-1)
    ws = np.zeros([len(psi), G.num_ws, G.w_dim], np.float32)
    for value in np.unique(psi):
        idx = np.nonzero(psi == value)[0]
        sel = torch.from_numpy(idx)
        ws[idx] = G.mapping(z[sel], None if c is None else c[sel], truncation_psi=float(value),
                            truncation_cutoff=truncation_cutoff).numpy()
    return ws


def _errors(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs_err": float(diff.max()), "mean_abs_err": float(diff.mean()), "psnr_db": psnr(out, ref)}


def check_parity(
    G: torch.nn.Module,
    graphs: dict[str, onnx.ModelProto | str | Any],  # variant name -> model or session; names say what to compare
    batches: Sequence[int] = (1, 3, 8),
    psi_values: Sequence[float] = (1.0, 0.7, 0.5),
    truncation_cutoff: int | None = None,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
    gates: Mapping[str, Gate] | None = None,           # variant name -> gate, instead of the one its name implies
) -> dict[str, Any]:
    """Run every graph for every batch size (psi mixed within a batch) and compare with PyTorch.

    Names: containing 'uint8' -> compared as levels with the official uint8 conversion; starting with
    'synthesis' -> fed the reference ws; containing 'fp16' -> reported (PSNR) but not gated; anything
    else is an fp32 generator graph gated by `tolerance` on the max abs error. `gates` overrides that per name
    (the OpenVINO bf16 variants are gated on PSNR). A graph is an ONNX model or path (run by onnxruntime's CPU
    provider) or an object with onnxruntime's session interface (`get_inputs`, `run`), e.g. an
    `openvino_export.OpenVINOSession`; a `describe()` it offers is recorded under "runtime".
    """
    cache: dict[int, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]] = {}
    for b in batches:
        feeds = make_inputs(G, b, psi_values, seed=seed + b)
        cache[b] = (feeds, reference_images(G, feeds, truncation_cutoff), reference_ws(G, feeds, truncation_cutoff))

    variants: dict[str, Any] = {}
    passed = True
    for name, model in graphs.items():
        is_session = hasattr(model, "run") and hasattr(model, "get_inputs")
        sess = model if is_session else ort_session(model, ["CPUExecutionProvider"])
        input_names = {i.name for i in sess.get_inputs()}
        per_batch: dict[str, Any] = {}
        for b, (feeds, ref, ws) in cache.items():
            if name.startswith("synthesis"):
                run_feeds = {"ws": ws}
            else:
                run_feeds = {k: v for k, v in feeds.items() if k in input_names}
            out = sess.run(None, run_feeds)[0]
            if "uint8" in name:
                ref_levels = nhwc(to_uint8(ref))
                levels = np.abs(out.astype(np.int16) - ref_levels.astype(np.int16))
                per_batch[str(b)] = {"max_level_diff": int(levels.max()), "mean_level_diff": float(levels.mean()),
                                     "psnr_db": psnr(out, ref_levels, data_range=255.0), "shape": list(out.shape)}
            else:
                per_batch[str(b)] = {**_errors(out, ref), "shape": list(out.shape)}
        summary: dict[str, Any] = {"per_batch": per_batch}
        if "uint8" in name:
            summary["max_level_diff"] = max(v["max_level_diff"] for v in per_batch.values())
            summary["mean_level_diff"] = float(np.mean([v["mean_level_diff"] for v in per_batch.values()]))
        else:
            summary["max_abs_err"] = max(v["max_abs_err"] for v in per_batch.values())
            summary["mean_abs_err"] = float(np.mean([v["mean_abs_err"] for v in per_batch.values()]))
        summary["psnr_db"] = min(v["psnr_db"] for v in per_batch.values())
        gate = (gates or {}).get(name) or default_gate(name, tolerance)
        summary["gate"] = {k: v for k, v in dataclasses.asdict(gate).items() if v is not None}
        summary["gated"] = gate.gated
        summary["passed"] = gate.passes(summary) if gate.gated else True
        if is_session and hasattr(sess, "describe"):
            summary["runtime"] = sess.describe()
        passed &= summary["passed"]
        variants[name] = summary
    return {
        "resolution": int(G.img_resolution),
        "batches": list(batches),
        "psi_values": list(psi_values),
        "truncation_cutoff": truncation_cutoff,
        "fp32_tolerance": tolerance,
        "provider": "CPUExecutionProvider",
        "variants": variants,
        "passed": bool(passed),
    }


def parity_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for MLflow / DVC metrics: parity.<variant>.<figure>."""
    out: dict[str, float] = {}
    for name, v in report["variants"].items():
        for key in ("max_abs_err", "mean_abs_err", "psnr_db", "max_level_diff", "mean_level_diff"):
            if key in v and math.isfinite(v[key]):
                out[f"parity.{name}.{key}"] = float(v[key])
    return out
