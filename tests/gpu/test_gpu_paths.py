"""The CUDA paths themselves, on a GPU: float16 blocks vs float32, gradients, channels-last, TF32, device moves,
the four training phases, the ops' fast paths, torch.compile of G, feature extraction, two-process NCCL training,
onnxruntime's CUDA provider and TensorRT where installed.

Every test is marked `gpu` and skipped with "no CUDA" on machines without one (tests/gpu/conftest.py). Their
CPU twins (float16 emulated on CPU) are in tests/test_mixed_precision.py; the tolerances here are the same or
wider, since cuDNN picks its own algorithms.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ops
from models.loss import StyleGAN2Loss
from models.precision import generator_precision
from tests.test_mixed_precision import activation_dtypes, rel_l2
from tests.test_networks import make_d, make_g, randomize_noise_strength

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


def _g(res: int = 64, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    G = make_g(res, num_fp16_res=4, conv_clamp=256, **kw).eval()
    randomize_noise_strength(G, 0.3)
    return G.to(CUDA)


def test_every_parameter_and_buffer_moves_to_cuda_as_float32() -> None:
    for net in (make_g(32, c_dim=3, num_fp16_res=4, conv_clamp=256, fp16_channels_last=True),
                make_d(32, c_dim=3, num_fp16_res=4, conv_clamp=256)):
        net.to(CUDA)
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            assert t.device.type == "cuda" and t.dtype == torch.float32, f"{name}: {t.device} {t.dtype}"


def test_fp16_generator_matches_fp32_and_its_blocks_are_fp16() -> None:
    G = _g()
    z = torch.randn(8, 16, device=CUDA)
    with torch.no_grad():
        ref = G(z, None, noise_mode="const", force_fp32=True)
        for fused in (True, False):
            with activation_dtypes(G.synthesis, (type(G.synthesis.b64.conv1),)) as seen:
                img = G(z, None, noise_mode="const", fused_modconv=fused)
            assert {x.dtype for name, x in seen if name.startswith("b64.")} == {torch.float16}
            assert img.dtype == torch.float32 and torch.isfinite(img).all()
            assert rel_l2(img, ref) < 1e-2, f"fused={fused}: {rel_l2(img, ref):.2e}"


def test_fp16_training_gradients_are_finite_and_close() -> None:
    G = _g().train().requires_grad_(True)
    D = make_d(64, num_fp16_res=4, conv_clamp=256).to(CUDA).requires_grad_(True)
    z = torch.randn(8, 16, device=CUDA)
    grads = []
    for force_fp32 in (True, False):
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        img = G(z, None, force_fp32=force_fp32)
        D(img, None, force_fp32=force_fp32).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in [*G.parameters(), *D.parameters()] if p.grad is not None]))
    assert torch.isfinite(grads[1]).all() and rel_l2(grads[1], grads[0]) < 5e-2


def test_channels_last_outputs_equal_on_cuda() -> None:
    G = _g()
    G_cl = make_g(64, num_fp16_res=4, conv_clamp=256, fp16_channels_last=True).eval().to(CUDA)
    G_cl.load_state_dict(G.state_dict())
    z = torch.randn(8, 16, device=CUDA)
    with torch.no_grad(), activation_dtypes(G_cl.synthesis.b64, (type(G.synthesis.b64.conv1),)) as seen:
        a = G_cl(z, None, noise_mode="const")
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for _, x in seen)
    with torch.no_grad():
        torch.testing.assert_close(a, G(z, None, noise_mode="const"), atol=0.05, rtol=0)


def test_tf32_on_and_off_agree() -> None:
    G = _g()
    z = torch.randn(8, 16, device=CUDA)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        outs = []
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            with torch.no_grad():
                outs.append(G(z, None, noise_mode="const", force_fp32=True))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert rel_l2(outs[1], outs[0]) < 1e-2  # TF32 has a 10-bit mantissa: ~1e-3 expected


def test_four_training_phases_in_fp16_on_cuda() -> None:
    G = make_g(64, c_dim=3, num_fp16_res=4, conv_clamp=256).to(CUDA).train()
    D = make_d(64, c_dim=3, num_fp16_res=4, conv_clamp=256).to(CUDA).train()
    loss = StyleGAN2Loss(G.mapping, G.synthesis, D, r1_gamma=1.0, pl_weight=2.0, device=CUDA)
    z, c = torch.randn(4, 16, device=CUDA), torch.eye(3, device=CUDA)[[0, 1, 2, 0]]
    real = torch.rand(4, 3, 64, 64, device=CUDA) * 2 - 1
    for phase, net in (("Gmain", G), ("Greg", G), ("Dmain", D), ("Dreg", D)):
        net.requires_grad_(True).zero_grad(set_to_none=True)
        loss.accumulate_gradients(phase, real, c, z, c, gain=1.0)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), phase
        net.requires_grad_(False)
    assert torch.isfinite(loss.pl_mean) and loss.pl_mean.device.type == "cuda"


def test_fast_ops_match_reference_on_cuda() -> None:
    gen = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(4, 8, 16, 16, device=CUDA, generator=gen)
    b = torch.randn(8, device=CUDA, generator=gen)
    f = ops.setup_filter([1, 3, 3, 1], device=CUDA)
    for dtype in (torch.float32, torch.float16):
        xd, bd = x.to(dtype), b.to(dtype)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(ops.bias_act(xd, bd, act="lrelu", clamp=2.0, impl="fast"),
                                   ops.bias_act(xd, bd, act="lrelu", clamp=2.0, impl="ref"), **tol)
        torch.testing.assert_close(ops.upfirdn2d(xd, f, up=2, down=1, padding=1, impl="fast"),
                                   ops.upfirdn2d(xd, f, up=2, down=1, padding=1, impl="ref"), **tol)
        fu = ops.setup_filter(np.hanning(12), device=CUDA, separable=True)
        torch.testing.assert_close(
            ops.filtered_lrelu(xd, fu, fu, bd, up=2, down=2, padding=[6, 6, 6, 6], clamp=256, impl="fast"),
            ops.filtered_lrelu(xd, fu, fu, bd, up=2, down=2, padding=[6, 6, 6, 6], clamp=256, impl="ref"), **tol)


def test_bf16_generator_on_cuda_is_close() -> None:
    G = _g()
    z = torch.randn(8, 16, device=CUDA)
    with torch.no_grad():
        ref = G(z, None, noise_mode="const", force_fp32=True)
        with generator_precision("bf16", G, CUDA):
            img = G(z, None, noise_mode="const")
    assert img.dtype == torch.float32 and rel_l2(img, ref) < 3e-2


def test_torch_compile_of_generator_inference() -> None:
    """torch.compile of G (inference, default fp16 blocks) equals eager within fp16 rounding. A compiler that
    cannot run here (no Triton, an inductor error) skips with its reason: the report then says why."""
    G = _g()
    z = torch.randn(8, 16, device=CUDA)
    with torch.no_grad():
        ref = G(z, None, noise_mode="const")
        try:
            compiled = torch.compile(G)
            out = compiled(z, None, noise_mode="const")
        except Exception as exc:  # inductor/dynamo failures come in many types
            pytest.skip(f"torch.compile unavailable: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
    assert rel_l2(out, ref) < 1e-2


def test_feature_extraction_on_cuda_matches_cpu(tmp_path) -> None:
    from stages.metrics.detectors import load_detector_file
    from tests.test_metrics import make_detector_dir

    det_dir = make_detector_dir(tmp_path, feature_dim=64)
    images = (torch.rand(8, 3, 64, 64) * 255).to(torch.uint8)
    cpu = load_detector_file(det_dir / "inception-2015-12-05.pt", "cpu")(images, return_features=True)
    gpu = load_detector_file(det_dir / "inception-2015-12-05.pt", CUDA)(images.to(CUDA), return_features=True)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.timeout(290)  # two trainings; gpu_check gives the other tests 60 s each
def test_two_process_nccl_training_matches_one(tmp_path) -> None:
    """torchrun with 2 GPUs (NCCL) trains to the same weights as one GPU with the same global batch (fp32, so
    only the order of gradient summation differs), as tests/test_train_distributed.py checks with gloo on CPU."""
    from stages.train import checkpoint as ckpt
    from stages.train.config import TrainConfig
    from stages.train.loop import train
    from tests.test_train import make_zip
    from tests.test_train_distributed import COMMON

    data = make_zip(tmp_path / "toy.zip", labels=True)
    one = train(TrainConfig(data=str(data), run_dir=str(tmp_path / "one"), cond=True, fp32=True, **COMMON))
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in COMMON.items()]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m",
         "stages.train", "--cond", "--fp32", "--params=/dev/null", f"--data={data}", f"--run-dir={tmp_path / 'two'}",
         *flags],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 processes on cuda)" in (tmp_path / "two" / "log.txt").read_text()
    a, _ = ckpt.load_checkpoint(ckpt.find_latest(one))
    b, _ = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "two"))
    for net in ("G", "D", "G_ema"):
        for name, t in a[net].items():
            if name != "mapping.w_avg":  # per-process running mean, as in the official DDP code
                torch.testing.assert_close(b[net][name], t, rtol=1e-3, atol=1e-4, msg=f"{net}.{name}")


def test_onnxruntime_cuda_provider_matches_pytorch() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    from stages.export.onnx_export import export_generator
    from stages.export.parity import make_inputs, ort_session, reference_images

    G = make_g(32).eval().requires_grad_(False)
    sess = ort_session(export_generator(G), ["CUDAExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    feeds = make_inputs(G, 4, (1.0, 0.7))
    assert np.abs(sess.run(None, feeds)[0] - reference_images(G, feeds)).max() < 1e-3


def test_tensorrt_engine_matches_pytorch(tmp_path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt not installed")
    from stages.export.onnx_export import describe_io, export_generator, save_model
    from stages.export.parity import make_inputs, reference_images
    from stages.export.tensorrt_build import BatchProfile, TensorRTRunner, build_engine, profile_shapes, verify_engine

    G = make_g(32).eval().requires_grad_(False)
    model = export_generator(G)
    onnx_path = save_model(model, tmp_path / "g.onnx")
    plan = build_engine(onnx_path, tmp_path / "g.plan", profile_shapes(describe_io(model)["inputs"],
                                                                        BatchProfile(1, 4, 8)), fp16=True)
    check = verify_engine(TensorRTRunner(plan), lambda f: reference_images(G, f), make_inputs(G, 4, (1.0, 0.7)))
    assert check["psnr_db"] > 30, check
