"""`make gpu-check` cannot rot: its dry run goes through every section on CPU (tiny networks), each section
reports what ran and says "no CUDA" (or its precise reason) for the rest, and the report renders; the isolated
mode (one process per section, killed at its budget) works; the Makefile target exists."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

import tests.gpu.official as official
from tests.gpu import gpu_check
from tests.gpu.sections import DRY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run checks the CPU answers")


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    with pytest.MonkeyPatch.context() as mp:  # no official checkout: its absence must be reported, not fatal
        mp.delenv(official.OFFICIAL_ENV, raising=False)
        mp.setattr(official, "DEFAULT_OFFICIAL", out / "absent")
        assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_section_runs_or_says_why(dry_report):
    report, md = dry_report
    s = report["sections"]
    assert list(s) == ["env", "tests", "train", "inference", "features"] and report["dry_run"]
    assert all(sec["status"] != "failed" for sec in s.values()), {k: v["notes"] for k, v in s.items()}
    assert s["env"]["gpu"] is None and "no CUDA" in s["env"]["notes"]

    # The GPU tests are collected and every one skips, with the reason.
    assert s["tests"]["counts"]["passed"] == 0 and s["tests"]["counts"]["skipped"] >= 10
    reasons = {t["message"] for t in s["tests"]["tests"]}
    assert reasons <= {"no CUDA", "needs 2 GPUs"} and "no CUDA" in reasons

    # Training: our four phases ran (CPU, tiny); the official code's absence is said, with what to do.
    t = s["train"]
    assert t["ours"][0]["sec_per_kimg"] > 0 and set(t["ours"][0]["phase_sec"]) == {"Gmain", "Greg", "Dmain", "Dreg"}
    assert t["official"] is None and any("official code not found" in n for n in t["notes"])

    # Inference: eager fp32 and the bf16 stand-in for fp16, the onnxruntime path with its parity, TensorRT's reason.
    (case,) = s["inference"]["cases"]
    assert case["eager_fp32_img_s"] > 0 and case["eager_bf16_img_s"] > 0 and case["bf16_vs_fp32_rel_l2"] < 0.05
    assert case["compile"] == "no CUDA"
    assert case["onnxruntime"]["provider"] == "CPUExecutionProvider"
    assert case["onnxruntime"]["max_abs_vs_pytorch_fp32"] < 1e-4
    assert "tensorrt not installed" in case["tensorrt"]["status"] and "unreachable" in case["tensorrt"]["status"]

    # Features: both networks, both precisions, bf16 close to fp32.
    nets = s["features"]["networks"]
    for name in ("inception", "effnet-lite0"):
        assert nets[name]["fp32_img_s"] > 0 and nets[name]["bf16_img_s"] > 0, nets[name]
        assert nets[name]["bf16_vs_fp32_rel_l2"] < 0.1

    for text in ("dry run", "no CUDA", "**training**", "**G inference**", "**features**", "official code not found"):
        assert text in md, text
    assert len(md.splitlines()) < 50  # one screen


def test_an_isolated_section_and_its_time_budget(tmp_path):
    result = gpu_check.run_isolated("env", DRY, tmp_path, None)
    assert result["status"] == "ok" and result["torch"] == torch.__version__
    starved = dataclasses.replace(DRY, budgets=dict(DRY.budgets, env=0.01))
    (tmp_path / "starved").mkdir()
    assert gpu_check.run_isolated("env", starved, tmp_path / "starved", None) == {
        "status": "failed", "notes": ["timed out after 0 s"], "wall_s": 0.0}


def test_a_section_stopped_at_its_budget_keeps_the_figures_it_had(tmp_path, monkeypatch):
    import subprocess

    def slow_section(cmd, **kwargs):  # the section saved one case, then hung (an inductor compile, say)
        Path(cmd[cmd.index("--section-json") + 1]).write_text(json.dumps(
            {"status": "partial", "notes": [], "cases": [{"resolution": 256, "batch": 32, "eager_fp32_img_s": 9.0}]}))
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(gpu_check.subprocess, "run", slow_section)
    result = gpu_check.run_isolated("inference", DRY, tmp_path, None)
    assert result["status"] == "partial" and result["cases"][0]["eager_fp32_img_s"] == 9.0
    assert result["notes"] == [f"timed out after {DRY.budgets['inference']:.0f} s: figures so far"]
    md = gpu_check.render_markdown({"created": "now", "device": "GPU", "torch": "2", "dry_run": False, "wall_s": 1.0,
                                    "sections": {"inference": result}})
    assert "| 256 | 32 | 9 |" in md


def test_the_report_of_a_gpu_run_renders():
    """The figures only a GPU produces (fp16, compile, official plugins, TensorRT) have their cells too."""
    report = {"created": "now", "device": "NVIDIA H200", "torch": "2.11.0+cu130", "dry_run": False, "wall_s": 400.0,
              "sections": {
                  "train": {"status": "ok", "notes": [], "cfg": "paper256", "resolution": 256, "device": "cuda",
                            "ours": [{"batch": 32, "sec_per_kimg": 3.1, "peak_gpu_gb": 7.5,
                                      "phase_sec": {"Gmain": 0.03, "Greg": 0.05, "Dmain": 0.04, "Dreg": 0.02}}],
                            "official": {"plugins": "CUDA plugins", "runs": [{"batch": 32, "sec_per_kimg": 4.2,
                                                                               "peak_gpu_gb": 9.1, "phase_sec": {}}]}},
                  "inference": {"status": "ok", "notes": [], "cases": [{
                      "cfg": "paper256", "resolution": 256, "batch": 32, "eager_fp32_img_s": 900.0,
                      "eager_fp16_img_s": 2100.0, "fp16_vs_fp32_rel_l2": 0.004, "compile_img_s": 3000.0,
                      "compile_vs_eager_fp16_max_abs": 0.002, "onnxruntime": {"status": "no CUDAExecutionProvider"},
                      "tensorrt": {"img_s": 5000.0, "max_abs_err": 0.01}}]}}}
    md = gpu_check.render_markdown(report)
    assert "| official, CUDA plugins | 32 | 4.2 | 9.1 |" in md
    assert re.search(r"\| 256 \| 32 \| 900 \| 2,100 \(0.004\) \| 3,000 \(0.002\) \| no CUDAExecutionProvider \| "
                     r"5,000 \(0.01\) \|", md), md


def test_make_target():
    """`make gpu-check` installs the matching onnxruntime-gpu (where it can), then runs the check."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^gpu-check:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no gpu-check target"
    lines = recipe[1]
    assert "tests/gpu/ort_gpu.py --spec" in lines and "pip install" in lines
    assert lines.index("ort_gpu.py") < lines.index("tests/gpu/gpu_check.py")


def test_onnxruntime_gpu_wheel_follows_the_cuda_major_and_providers_say_why_not():
    from tests.gpu import ort_gpu

    assert ort_gpu.wheel_spec("12.8") == "onnxruntime-gpu[cuda,cudnn]==1.25.1"
    assert ort_gpu.wheel_spec("13.0") == "onnxruntime-gpu[cuda,cudnn]==1.31.1"
    assert ort_gpu.wheel_spec(None) is None and ort_gpu.wheel_spec("11.8") is None
    status = ort_gpu.report(None)
    assert status["wheel"] is None
    # The CPU build here has neither provider: each says why in one line, nothing raises.
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        assert status["providers"][provider].startswith("not in this onnxruntime build"), status
