"""The CUDA-only branches of the networks, run on CPU: float16 blocks, conv_clamp, float32 upcasts, channels-last,
the CUDA fused-modconv rule, device moves; the bfloat16 inference path; and the registry of those branches.

`models.precision.reduced_precision(torch.float16, ("cpu",))` runs the official float16 path on CPU (CPU float16
kernels are emulated, so only tiny networks). Tolerances are those measured here with a margin of 3-10x: float16
images within 5e-3 relative L2 of float32 (measured 0.4-1.4e-3), D logits within 5e-3 (measured <= 4.4e-4),
parameter gradients within 1e-2 relative L2 (measured <= 2.8e-3), R1 gradients within 0.1 (measured 0.02-0.03).

`models.precision.CUDA_ONLY_BRANCHES` lists every such branch with the test here that covers it; the last tests
check that list against the code (static scan of models/ and ops/) and that each covering test really executes
its branch on CPU (line tracing).
"""

from __future__ import annotations

import ast
import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import models.precision as precision
from models.layers import block_memory_format, compute_dtype, fp16_active
from models.loss import StyleGAN2Loss
from models.precision import CUDA_ONLY_BRANCHES, generator_precision, reduced_precision
from models.stylegan2.synthesis import default_fused_modconv
from tests.test_networks import make_d, make_g, randomize_noise_strength
from tests.test_stylegan3 import inputs as sg3_inputs
from tests.test_stylegan3 import make_g as make_g3
from tests.test_stylegan3 import randomize as sg3_randomize

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a CUDA device object needs no GPU


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def fp16_on_cpu(**kwargs: object) -> contextlib.AbstractContextManager:
    return reduced_precision(torch.float16, ("cpu",), **kwargs)


@contextlib.contextmanager
def activation_dtypes(module: torch.nn.Module, kinds: tuple[type, ...]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Collect the input tensors of every submodule of the given kinds during the block."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, args[0])))
               for name, m in module.named_modules() if isinstance(m, kinds)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------------------------------------
# The policy


def test_official_policy_is_cuda_float16_only() -> None:
    assert precision.current_policy() == precision.OFFICIAL
    assert fp16_active(True, False, CUDA) and not fp16_active(True, True, CUDA)
    assert not fp16_active(True, False, CPU) and not fp16_active(False, False, CUDA)
    assert compute_dtype(True) == torch.float16 and compute_dtype(False) == torch.float32
    assert block_memory_format(True, True) == torch.channels_last
    assert block_memory_format(False, True) == block_memory_format(True, False) == torch.contiguous_format
    with pytest.raises(RuntimeError), fp16_on_cpu():
        assert fp16_active(True, False, CPU) and not fp16_active(False, False, CPU)
        raise RuntimeError("the policy must be restored on the way out")
    assert precision.current_policy() == precision.OFFICIAL
    with reduced_precision(torch.bfloat16, ("cpu",), all_blocks=True, channels_last=False):
        assert fp16_active(False, False, CPU) and compute_dtype(True) == torch.bfloat16
        assert block_memory_format(True, True) == torch.contiguous_format
    with pytest.raises(ValueError, match="float16 or bfloat16"), reduced_precision(torch.float64):
        pass


def test_fused_modconv_cuda_rule() -> None:
    f32, f16 = torch.float32, torch.float16
    assert default_fused_modconv(False, f32, 8, CUDA) and not default_fused_modconv(False, f16, 8, CUDA)
    assert default_fused_modconv(False, f16, 1, CUDA) and not default_fused_modconv(True, f32, 1, CUDA)


# ---------------------------------------------------------------------------------------------------------------
# float16 vs float32 on CPU


def test_fp16_generator_matches_fp32_on_cpu() -> None:
    for arch in ("orig", "skip", "resnet"):
        torch.manual_seed(0)
        G = make_g(32, arch=arch, num_fp16_res=2, conv_clamp=256).eval()
        randomize_noise_strength(G, 0.3)
        z = torch.randn(3, 16)
        with torch.no_grad():
            ref = G(z, None, noise_mode="const")
            for fused in (True, False):  # both modulated-conv paths, each with the float16 pre-normalisation
                with fp16_on_cpu(), activation_dtypes(G.synthesis, (type(G.synthesis.b32.conv1),)) as seen:
                    img = G(z, None, noise_mode="const", fused_modconv=fused)
                dtypes = {name.split(".")[0]: x.dtype for name, x in seen}
                assert dtypes == {"b4": torch.float32, "b8": torch.float32, "b16": torch.float16,
                                  "b32": torch.float16}, f"{arch}: only the top 2 resolutions in float16"
                assert img.dtype == torch.float32 and torch.isfinite(img).all()
                assert rel_l2(img, ref) < 5e-3, f"{arch} fused={fused}: {rel_l2(img, ref):.2e}"
                with fp16_on_cpu():  # force_fp32 switches the whole path off, bit for bit
                    assert torch.equal(G(z, None, noise_mode="const", force_fp32=True), ref)

        # A clamp that bites: both precisions clamp the same activations.
        G = make_g(32, arch=arch, num_fp16_res=2, conv_clamp=0.5).eval()
        with torch.no_grad():
            ref = G(z, None, noise_mode="const")
            with fp16_on_cpu():
                img = G(z, None, noise_mode="const")
        assert rel_l2(img, ref) < 5e-3

        # Training mode (non-fused, random noise): gradients finite and close to float32's.
        G = make_g(32, arch=arch, num_fp16_res=2, conv_clamp=256).train().requires_grad_(True)
        randomize_noise_strength(G, 0.3)
        grads = []
        for ctx in (contextlib.nullcontext(), fp16_on_cpu()):
            G.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            with ctx:
                G(z, None).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in G.parameters() if p.grad is not None]))
        assert torch.isfinite(grads[1]).all() and rel_l2(grads[1], grads[0]) < 1e-2


def test_fp16_discriminator_matches_fp32_on_cpu() -> None:
    torch.manual_seed(0)
    img = torch.randn(4, 3, 32, 32)
    c = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).float()
    for arch in ("orig", "skip", "resnet"):
        D = make_d(32, c_dim=3, arch=arch, num_fp16_res=2, conv_clamp=256)
        x32 = img.clone().requires_grad_(True)
        ref = D(x32, c)
        (g32,) = torch.autograd.grad(ref.sum(), x32)
        with fp16_on_cpu(), activation_dtypes(D, (type(D.b32.conv0),)) as seen:
            x16 = img.clone().requires_grad_(True)
            logits = D(x16, c)
            (g16,) = torch.autograd.grad(logits.sum(), x16)  # R1's gradient through the float16 blocks
        assert {x.dtype for name, x in seen if name.startswith(("b32.", "b16."))} == {torch.float16}
        assert {x.dtype for name, x in seen if name.startswith(("b8.", "b4."))} == {torch.float32}
        assert logits.dtype == torch.float32 and g16.dtype == torch.float32
        torch.testing.assert_close(logits, ref, atol=5e-3, rtol=0)
        assert torch.isfinite(g16).all() and rel_l2(g16, g32) < 0.1


def test_fp16_stylegan3_matches_fp32_on_cpu() -> None:
    torch.manual_seed(0)
    G = sg3_randomize(make_g3(16, num_fp16_res=4, conv_clamp=256), 1).eval()
    z, c = sg3_inputs(3, 0)
    layer_type = type(getattr(G.synthesis, G.synthesis.layer_names[0]))
    with torch.no_grad():
        ref = G(z, c)
        with fp16_on_cpu(), activation_dtypes(G.synthesis, (layer_type,)):
            img = G(z, c)
    assert any(getattr(G.synthesis, n).use_fp16 for n in G.synthesis.layer_names)
    assert img.dtype == torch.float32 and rel_l2(img, ref) < 5e-3


def test_channels_last_outputs_equal() -> None:
    """fp16_channels_last changes only the memory layout: outputs agree to float16 rounding, and the layers of
    the float16 blocks really see channels-last tensors."""
    torch.manual_seed(0)
    z = torch.randn(2, 16)
    G = make_g(32, num_fp16_res=2, conv_clamp=256).eval()
    G_cl = make_g(32, num_fp16_res=2, conv_clamp=256, fp16_channels_last=True).eval()
    G_cl.load_state_dict(G.state_dict())
    D = make_d(32, num_fp16_res=2, conv_clamp=256)
    D_cl = make_d(32, num_fp16_res=2, conv_clamp=256, block_kwargs=dict(fp16_channels_last=True))
    D_cl.load_state_dict(D.state_dict())
    with torch.no_grad(), fp16_on_cpu():
        with activation_dtypes(G_cl.synthesis.b32, (type(G.synthesis.b32.conv1),)) as seen:
            a = G_cl(z, None, noise_mode="const")
        assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for _, x in seen)
        torch.testing.assert_close(a, G(z, None, noise_mode="const"), atol=0.05, rtol=0)
        with activation_dtypes(D_cl.b32, (type(D.b32.conv0),)) as seen:
            logits = D_cl(a, None)
        assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for _, x in seen)
        torch.testing.assert_close(logits, D(a, None), atol=1e-3, rtol=0)
    # A policy with every block in reduced precision and channels-last also runs the 4x4 constant that way.
    with torch.no_grad(), reduced_precision(torch.bfloat16, ("cpu",), all_blocks=True, channels_last=True):
        x, _ = G.synthesis.b4(None, None, torch.randn(2, 2, 16), noise_mode="const")
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------------------
# Device moves: what `.to()` leaves behind is what breaks on a GPU


def test_to_moves_every_tensor_and_the_training_step_stays_on_the_device() -> None:
    """After `.to(meta)` every parameter and buffer is on that device in float32 (no tensor kept as a plain
    attribute, which `.to()` would not move), and a forward of G, D and all four loss phases, float32 and float16,
    creates nothing on the CPU: a tensor made without `device=` would fail here as it would on CUDA."""
    meta = torch.device("meta")
    nets = {"G": make_g(32, c_dim=3, num_fp16_res=2, conv_clamp=256, fp16_channels_last=True),
            "D": make_d(32, c_dim=3, num_fp16_res=2, conv_clamp=256), "G3": make_g3(16, c_dim=3)}
    for name, net in nets.items():
        net.to(meta)
        for tname, t in [*net.named_parameters(), *net.named_buffers()]:
            assert t.device == meta and t.dtype == torch.float32, f"{name}.{tname}: {t.device} {t.dtype}"
        for mname, m in net.named_modules():
            stray = [k for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
            assert not stray, f"{name}.{mname}: tensor attributes {stray} are not buffers and stay behind on .to()"
    G, D = nets["G"].train(), nets["D"].train()
    z, c, real = torch.randn(2, 16, device=meta), torch.zeros(2, 3, device=meta), torch.randn(2, 3, 32, 32, device=meta)
    assert nets["G3"](torch.randn(2, 8, device=meta), c).device == meta
    loss = StyleGAN2Loss(G.mapping, G.synthesis, D, r1_gamma=1.0, pl_weight=2.0, device=meta)
    for policy in (contextlib.nullcontext(), reduced_precision(torch.float16, ("meta",))):
        with policy:
            for phase in ("Gmain", "Greg", "Dmain", "Dreg"):
                loss.accumulate_gradients(phase, real, c, z, c, gain=1.0)
            for mode in ("const", "random", "none"):
                assert G(z, c, noise_mode=mode).device == meta


# ---------------------------------------------------------------------------------------------------------------
# bfloat16 inference on CPU


def test_bf16_generator_precision_is_close_and_recorded() -> None:
    torch.manual_seed(0)
    G = make_g(32, num_fp16_res=0, conv_clamp=256).eval()  # a CPU-trained network: no fp16 blocks at all
    randomize_noise_strength(G, 0.3)
    z = torch.randn(4, 16)
    with torch.no_grad():
        ref = G(z, None, noise_mode="const")
    precision._reset_for_tests()
    with activation_dtypes(G.synthesis, (type(G.synthesis.b32.conv1),)) as seen:
        img = precision.generate_images(G, z, None, precision="bf16", noise_mode="const")
    assert {x.dtype for _, x in seen} == {torch.bfloat16}  # every block, whatever num_fp16_res says
    assert precision.precision_in_use() == {"generator": "bf16"}
    assert precision.current_policy() == precision.OFFICIAL
    assert img.dtype == torch.float32 and rel_l2(img, ref) < 3e-2
    levels = (img.clamp(-1, 1) - ref.clamp(-1, 1)).abs().flatten() * 127.5
    assert float(np.percentile(levels.numpy(), 99.9)) < 8  # grey levels (measured ~4 on this tiny network)
    assert torch.equal(precision.generate_images(G, z, None, precision="fp32", noise_mode="const"), ref)
    with pytest.raises(ValueError, match="precision must be one of"), generator_precision("fp16", G):
        pass


def test_bf16_precision_of_a_network_without_fp16_blocks_uses_autocast() -> None:
    from models.projected.fastgan import FastGANGenerator

    torch.manual_seed(0)
    G = FastGANGenerator(z_dim=16, img_resolution=32, ngf=8).eval()
    convs = (torch.nn.Conv2d,)
    z = torch.randn(2, 16)
    with activation_dtypes(G, convs) as seen, torch.no_grad(), generator_precision("bf16", G):
        assert torch.is_autocast_enabled("cpu")
        img = G(z, None)
    assert seen and img.shape == (2, 3, 32, 32)
    with precision.feature_precision("bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# The registry of CUDA-only branches


MARKER = re.compile(r"#\s*cuda-only:\s*([a-z0-9][a-z0-9.\-]*)")
REDUCED_DTYPES = ("torch.float16", "torch.half", "torch.bfloat16")
CUDA_NAMES = ("torch.cuda", "torch.backends.cuda", "torch.backends.cudnn")
EQUALITY = (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_function_body(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True when the node runs when its function is called (not a default value evaluated at definition)."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return child in parent.body
        child, parent = parent, parents.get(parent)
    return False


def _suspect(node: ast.AST) -> str | None:
    """Why a node is a branch that only CUDA reaches under the official policy, or None."""
    if isinstance(node, ast.Constant) and node.value == "cuda":
        return "device 'cuda'"
    if isinstance(node, ast.Attribute) and (node.attr == "is_cuda" or ast.unparse(node) in CUDA_NAMES):
        return "CUDA API"
    equality = isinstance(node, ast.Compare) and any(isinstance(op, EQUALITY) for op in node.ops)
    if equality and any(ast.unparse(x) in REDUCED_DTYPES for x in [node.left, *node.comparators]):
        return "reduced-precision dtype test"
    if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "fp16_active":
        return "fp16 gate"
    conditional = isinstance(node, (ast.If, ast.IfExp, ast.While))
    if conditional and any(isinstance(n, ast.Name) and n.id == "half" for n in ast.walk(node.test)):
        return "condition on a block's half flag"
    return None


def scan_cuda_branches() -> tuple[list[dict], list[str]]:
    """Every suspect node in models/ and ops/ with its marker id (or None); and the marker ids seen."""
    found, ids = [], []
    for path in sorted([*(ROOT / "models").rglob("*.py"), *(ROOT / "ops").rglob("*.py")]):
        src = path.read_text()
        lines = src.splitlines()
        ids += MARKER.findall(src)
        tree = ast.parse(src)
        parents = _parents(tree)
        for node in ast.walk(tree):
            why = _suspect(node)
            if why is None:
                continue
            line = node.lineno
            above = lines[line - 2].strip() if line >= 2 else ""
            m = MARKER.search(lines[line - 1]) or (MARKER.search(above) if above.startswith("#") else None)
            found.append(dict(file=str(path), line=line, why=why, id=m.group(1) if m else None, node=node,
                              runtime=_in_function_body(node, parents)))
    return found, ids


def test_every_cuda_only_branch_is_registered_with_a_cpu_test() -> None:
    found, ids = scan_cuda_branches()
    unmarked = [f"{Path(f['file']).relative_to(ROOT)}:{f['line']} ({f['why']})" for f in found if f["id"] is None]
    assert not unmarked, ("CUDA-only branches without a `# cuda-only: <id>` marker registered in "
                          f"models.precision.CUDA_ONLY_BRANCHES with a CPU test: {unmarked}")
    assert set(ids) == set(CUDA_ONLY_BRANCHES), f"markers vs registry: {sorted(set(ids) ^ set(CUDA_ONLY_BRANCHES))}"
    assert {f["id"] for f in found} == set(CUDA_ONLY_BRANCHES), "every registered marker must sit on a branch"
    tests = {n.name for n in ast.parse(Path(__file__).read_text()).body if isinstance(n, ast.FunctionDef)}
    missing = {k: v for k, v in CUDA_ONLY_BRANCHES.items() if v not in tests}
    assert not missing, f"covering tests that do not exist in {Path(__file__).name}: {missing}"


class _LineTracer:
    """Lines executed in the given files; lines run while a local `half` was True; fp16_active calls returning
    True (by call site)."""

    def __init__(self, files: set[str]) -> None:
        self.files = files
        self.lines: set[tuple[str, int]] = set()
        self.half_lines: set[tuple[str, int]] = set()
        self.true_gates: set[tuple[str, int]] = set()

    def __call__(self, frame, event, arg):  # the global trace function
        return self.local if frame.f_code.co_filename in self.files else None

    def local(self, frame, event, arg):
        key = (frame.f_code.co_filename, frame.f_lineno)
        if event == "line":
            self.lines.add(key)
            if frame.f_locals.get("half") is True:
                self.half_lines.add(key)
        elif event == "return" and frame.f_code.co_name == "fp16_active" and arg is True and frame.f_back:
            self.true_gates.add((frame.f_back.f_code.co_filename, frame.f_back.f_lineno))
        return self.local


def test_each_covering_test_runs_its_branch_on_cpu() -> None:
    """Run every covering test under a line tracer: each marked branch inside a function must take its CUDA side
    (an `if` body runs, a `half` condition sees True, an fp16 gate returns True), not merely be passed."""
    found, _ = scan_cuda_branches()
    by_test: dict[str, list[dict]] = {}
    for f in found:
        if f["runtime"]:
            by_test.setdefault(CUDA_ONLY_BRANCHES[f["id"]], []).append(f)
    module = sys.modules[__name__]
    for test_name, branches in sorted(by_test.items()):
        tracer = _LineTracer({f["file"] for f in branches} | {str(ROOT / "models" / "layers.py")})
        sys.settrace(tracer)
        try:
            getattr(module, test_name)()
        finally:
            sys.settrace(None)
        for f in branches:
            key, node = (f["file"], f["line"]), f["node"]
            where = f"{Path(f['file']).relative_to(ROOT)}:{f['line']} [{f['id']}]"
            if isinstance(node, ast.If):
                assert (f["file"], node.body[0].lineno) in tracer.lines, f"{test_name} never enters {where}"
            elif f["why"] == "fp16 gate":
                assert key in tracer.true_gates, f"{test_name} never has fp16_active True at {where}"
            elif f["why"] == "condition on a block's half flag":
                assert key in tracer.half_lines, f"{test_name} never runs {where} with half=True"
            else:
                assert key in tracer.lines, f"{test_name} never runs {where}"


def test_bf16_metrics_are_close_recorded_and_cached_apart(tmp_path) -> None:
    """evaluate's precision options: with G in bf16 an FID within 2% of fp32's (stand-in detector), the record says
    so (an fp32 record stays official), and real-image statistics are cached per feature precision only."""
    from stages.metrics.registry import parse_metric
    from stages.metrics.runner import MetricOptions, compute_metric
    from tests.test_metrics import make_detector_dir, make_zip, tiny_generator

    dets, data = make_detector_dir(tmp_path / "dets", feature_dim=16), make_zip(tmp_path / "d.zip", n=24, res=16)
    kwargs = dict(path=str(data), use_labels=False, xflip=False, resolution=16)
    spec, records = parse_metric("fid48_full"), {}
    for g, f in (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16")):
        opts = MetricOptions(detector_dir=dets, cache_dir=tmp_path / "stats", batch_size=16, progress=False,
                             precision=g, feature_precision=f, G_kwargs=dict(noise_mode="const"))
        records[g, f] = compute_metric(spec, tiny_generator(), kwargs, opts)
        assert len(list((tmp_path / "stats").glob("*.npz"))) == (2 if f == "bf16" else 1)
    assert set(records["fp32", "fp32"]) == {"results", "metric", "total_time", "total_time_str", "num_gpus"}
    assert records["bf16", "fp32"]["precision"] == "bf16" and "feature_precision" not in records["bf16", "fp32"]
    assert records["bf16", "bf16"]["feature_precision"] == "bf16"
    a, b = (records[k]["results"]["fid48_full"] for k in (("fp32", "fp32"), ("bf16", "fp32")))
    assert abs(a - b) < 0.02 * a, (a, b)
    with pytest.raises(ValueError, match="precision"):
        MetricOptions(feature_precision="fp16")
