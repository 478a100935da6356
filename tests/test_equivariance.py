"""Equivariance metrics (EQ-T, EQ-T_frac, EQ-R): the resampling operators against closed forms, the metric on
a band-limited stand-in generator and on tiny StyleGAN3 -t/-r networks, the registry, the runner and refusals.

The operators were checked once against the official `metrics/equivariance.py` (outside the suite, since
the official code is never a dependency): filters bit-identical, resampled images within 1.2e-6.
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch

from models import Generator, StyleGAN3Generator
from stages.common.errors import BadInput
from stages.metrics import equivariance as eq
from stages.metrics.registry import UnknownMetricError, parse_metric
from stages.metrics.runner import MetricOptions, compute_metric, compute_metrics
from tests.test_metrics import ThreadGroup, make_zip, run_ranks

# ------------------------------------------------------------------------------------------------
# Stand-ins.


class _Input(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("transform", torch.eye(3))


class PatternSynthesis(torch.nn.Module):
    """Renders a band-limited pattern (a few cosines at <= 1/4 cycle per pixel) sampled at the pixel centres
    mapped through `input.transform`, the way StyleGAN3's Fourier input is; ws carry the phases."""

    def __init__(self, res: int, num_waves: int, follow_transform: bool = True) -> None:
        super().__init__()
        self.input = _Input()
        self.res, self.follow = res, follow_transform
        gen = torch.Generator().manual_seed(3)
        angles = torch.rand(num_waves, generator=gen) * 2 * math.pi
        radii = (0.3 + 0.7 * torch.rand(num_waves, generator=gen)) * res / 4  # cycles per image width
        self.register_buffer("freqs", torch.stack([angles.cos(), angles.sin()], dim=1) * radii[:, None])  # [K, xy]
        self.register_buffer("amps", 0.5 / math.sqrt(num_waves) * (0.5 + torch.rand(num_waves, generator=gen)))

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", **_: object) -> torch.Tensor:
        # float32 like a network, so a perfect translation shows its round-off rather than an infinite PSNR.
        coords = (torch.arange(self.res, dtype=torch.float32) + 0.5 - self.res / 2) / self.res
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        p = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [H, W, 3] homogeneous, image units
        m = self.input.transform if self.follow else torch.eye(3)
        q = p @ m.t()  # the transform maps output positions to pattern positions (it is the inverse)
        arg = q[..., :2] @ self.freqs.t()  # [H, W, K] cycles
        phases = ws[:, 0]  # [N, K]
        img = (torch.cos(2 * math.pi * (arg[None] + phases[:, None, None, :])) * self.amps).sum(-1)
        return img[:, None].repeat(1, 3, 1, 1)  # [N, 3, H, W]


class PatternGenerator(torch.nn.Module):
    """The generator interface around PatternSynthesis: z -> ws = the first `num_waves` entries as phases."""

    def __init__(self, res: int = 24, num_waves: int = 6, follow_transform: bool = True) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.img_resolution = num_waves, 0, num_waves, 1, res
        self.img_channels = 3
        self.synthesis = PatternSynthesis(res, num_waves, follow_transform)
        self.register_buffer("anchor", torch.zeros([]))  # so that next(parameters/buffers) has a device

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        return z[:, None, :] * truncation_psi  # [N, 1, K]

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, **kwargs: object) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c))


def tiny_sg3(cfg: str, res: int = 16, c_dim: int = 0, seed: int = 0) -> StyleGAN3Generator:
    """Freshly initialised -t (3x3 convs) or -r (1x1 convs, radial filters) generator, 6 layers."""
    torch.manual_seed(seed)
    kw: dict = dict(channel_base=256, channel_max=16)
    if cfg == "r":
        kw = dict(channel_base=512, channel_max=32, conv_kernel=1, use_radial_filters=True)
    return StyleGAN3Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=3,
                              mapping_kwargs=dict(num_layers=2), num_layers=6, num_critical=2, **kw).eval()


def pattern_images(res: int, freqs: list[tuple[float, float]], shift: tuple[float, float] = (0, 0)) -> torch.Tensor:
    """[1, 1, res, res] sum of cosines (cycles per pixel) sampled at pixel (i, j) - shift."""
    y, x = torch.meshgrid(torch.arange(res, dtype=torch.float64), torch.arange(res, dtype=torch.float64),
                          indexing="ij")
    img = sum(torch.cos(2 * math.pi * (fx * (x - shift[0]) + fy * (y - shift[1])) + k) for k, (fx, fy) in
              enumerate(freqs))
    return img[None, None].to(torch.float32)


# ------------------------------------------------------------------------------------------------
# PSNR and operators.


def test_psnr_closed_form() -> None:
    # MSE 0.01 of a signal with peak-to-peak 2: 20 log10(2) + 20 dB.
    assert eq.psnr_from_sums(0.01 * 50, 50) == pytest.approx(20 * math.log10(2) + 20, abs=1e-12)
    assert eq.psnr_from_sums(4.0, 1) == pytest.approx(0.0, abs=1e-12)  # error as large as the whole range
    # Through the metric's own sums: a constant error d on the masked pixels gives 20 log10(2 / d).
    sums = np.array([(0.05**2) * 300, 300.0])
    assert eq.psnr_from_sums(*sums) == pytest.approx(20 * math.log10(2 / 0.05), abs=1e-9)


def test_integer_translation_moves_whole_pixels_and_masks_the_rest() -> None:
    x = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).reshape(2, 3, 8, 10)
    out, mask = eq.integer_translation(x, 3 / 10, -2 / 8)  # 3 px right, 2 px up
    torch.testing.assert_close(out[..., :6, 3:], x[..., 2:, :7], rtol=0, atol=0)
    assert mask.sum() == 2 * 3 * 6 * 7 and (out * (1 - mask)).abs().sum() == 0
    assert mask[..., :6, 3:].all() and not mask[..., 6:, :].any() and not mask[..., :, :3].any()


def test_fractional_translation_of_band_limited_signal() -> None:
    freqs = [(0.07, 0.03), (-0.05, 0.11), (0.12, -0.08)]
    x = pattern_images(48, freqs)
    for tx, ty in ((2.35, -1.6), (-3.8, 0.5)):  # pixels
        out, mask = eq.fractional_translation(x, tx / 48, ty / 48)
        want = pattern_images(48, freqs, shift=(tx, ty))
        err = ((out - want).abs() * mask).max()
        assert err < 0.02, err  # Lanczos-3 on < 0.15 cycles/pixel
        # The mask drops a - 1 + ceil/floor margins: the taps reach 3 pixels either way.
        cols = mask[0, 0].amax(0).nonzero().flatten()
        assert cols.min() == max(math.floor(tx) + 3, 0) and cols.max() == 47 + min(math.floor(tx) - 2, 0)
    # A whole-pixel shift is the integer translation (the Lanczos taps become a unit impulse).
    out, _ = eq.fractional_translation(x, 4 / 48, 0.0)
    ref, _ = eq.integer_translation(x, 4 / 48, 0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_bandlimit_filter_preserves_constants_and_is_centred() -> None:
    f = eq.affine_bandlimit_filter(eq.rotation_matrix(0.4), a=3, amax=6, up=4)
    assert f.shape == (47, 47)
    phases = torch.nn.functional.pad(f, [0, 1, 0, 1]).reshape(12, 4, 12, 4).sum(dim=[0, 2])
    torch.testing.assert_close(phases, torch.full([4, 4], 1 / 16), rtol=0, atol=1e-6)
    centre = f.shape[0] // 2
    assert f.abs().argmax() == centre * f.shape[1] + centre
    constant = torch.full([1, 1, 20, 20], 0.3)
    out, mask = eq.fractional_rotation(constant, 0.7)
    assert mask.sum() > 0 and ((out - 0.3).abs() * mask).max() < 1e-4


def test_quarter_turn_matches_rot90_in_the_interior() -> None:
    x = pattern_images(32, [(0.06, 0.02), (-0.03, 0.09)])
    out, mask = eq.fractional_rotation(x, math.pi / 2)
    # Both orientations are accepted only if they differ: the test must tell the direction apart.
    err = {k: float(((out - torch.rot90(x, k, dims=(2, 3))).abs() * mask).max()) for k in (1, -1)}
    assert min(err.values()) < 0.05 < max(err.values()), err


# ------------------------------------------------------------------------------------------------
# The metric on generators.


def _psnr(G: torch.nn.Module, kind: str, n: int = 16, **kwargs) -> float:
    return eq.equivariance_psnr(G, None, kind, n, progress=False, **kwargs)  # type: ignore[arg-type]


def test_band_limited_standin_is_equivariant_and_a_frozen_one_is_not() -> None:
    # Measured: EQ-T 141.5 dB, EQ-T_frac 52.6 dB, EQ-R 46.6 dB; the frozen one 12.5 / 12.7 / 13.4 dB.
    G = PatternGenerator()  # 24 px: pixel centres are not dyadic, so the round-off shows (32 px gives +inf)
    assert _psnr(G, "eqt_int") > 100  # whole-pixel moves of a sampled continuous pattern: round-off only
    assert _psnr(G, "eqt_frac") > 40
    assert _psnr(G, "eqr") > 35
    frozen = PatternGenerator(follow_transform=False)  # ignores the transform: nothing moves
    assert _psnr(frozen, "eqt_int") < 25 and _psnr(frozen, "eqr") < 25
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))  # the caller's network is left untouched


def test_stylegan3_r_beats_t_on_rotation() -> None:
    # Measured (16 px, 6 layers, 16 samples, seeds 0-2): -t EQ-R 25.5-30.9 dB, -r 64.8-68.4 dB.
    for seed in (0, 1):
        eqr_t = _psnr(tiny_sg3("t", seed=seed), "eqr", seed=seed)
        eqr_r = _psnr(tiny_sg3("r", seed=seed), "eqr", seed=seed)
        assert eqr_r > eqr_t + 20, (seed, eqr_t, eqr_r)
        assert eqr_t < 40


def test_seeded_and_independent_of_process_count(tmp_path) -> None:
    G = tiny_sg3("t", c_dim=2, seed=4)
    data = make_zip(tmp_path / "toy.zip", n=6, labels=True)
    kwargs = dict(path=str(data), use_labels=True, xflip=False, resolution=16)
    spec = parse_metric("eqt12_frac")

    def run(group) -> dict:
        return compute_metric(spec, G, kwargs, MetricOptions(progress=False, group=group))

    one = run(ThreadGroup(0, {}, threading.Barrier(1), 1))
    assert set(one["results"]) == {"eqt12_frac"} and one["metric"] == "eqt12_frac"
    assert one["results"] == run(ThreadGroup(0, {}, threading.Barrier(1), 1))["results"]  # seeded
    for rec in run_ranks(run):
        assert rec["results"]["eqt12_frac"] == pytest.approx(one["results"]["eqt12_frac"], rel=1e-9)
        assert rec["num_gpus"] == 2
    other = compute_metric(spec, G, kwargs, MetricOptions(progress=False, seed=1))
    assert other["results"]["eqt12_frac"] != one["results"]["eqt12_frac"]


# ------------------------------------------------------------------------------------------------
# Registry, runner, refusals.


def test_registry_names() -> None:
    s = parse_metric("eqt50k_int")
    assert (s.kind, s.eq, s.num_gen, s.detector, s.uses_reals) == ("eq", "eqt_int", 50_000, None, False)
    assert parse_metric("eqt1k_frac").eq == "eqt_frac" and parse_metric("eqt1k_frac").num_gen == 1000
    assert (parse_metric("eqr500").eq, parse_metric("eqr500").num_gen) == ("eqr", 500)
    assert parse_metric("eqr50k").result_keys() == ["eqr50k"]
    for bad in ("eqt50k", "eqr50k_int", "eqt0_int", "eqt50k_full"):
        with pytest.raises(UnknownMetricError):
            parse_metric(bad)


def test_unconditional_needs_no_dataset_and_official_record() -> None:
    out = compute_metrics(tiny_sg3("r"), ["eqt8_int", "eqr8"], None, MetricOptions(progress=False))
    rec = out["records"]["eqr8"]
    assert set(rec) == {"results", "metric", "total_time", "total_time_str", "num_gpus"}
    assert list(rec["results"]) == ["eqr8"] and isinstance(rec["results"]["eqr8"], float)
    assert out["records"]["eqt8_int"]["results"]["eqt8_int"] > 60


def test_stylegan2_is_refused_in_one_line() -> None:
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=16))
    with pytest.raises(BadInput, match=r"^eqt1k_int: .*synthesis\.input\.transform.*StyleGAN3") as info:
        compute_metrics(G, ["eqt1k_int"], None, MetricOptions(progress=False))
    assert "\n" not in str(info.value)
    with pytest.raises(BadInput, match="eqr500"):
        eq.equivariance_psnr(G, None, "eqr", 4, progress=False, metric="eqr500")


def test_evaluate_cli_writes_official_lines_and_refuses_stylegan2(tmp_path, monkeypatch, capsys) -> None:
    from models import save_snapshot
    from stages.evaluate.cli import main as cli_main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the section's defaults
    run_dir = tmp_path / "runs" / "00000-sg3"
    run_dir.mkdir(parents=True)
    save_snapshot(run_dir / "network-snapshot-000000.safetensors", {"G_ema": tiny_sg3("r")})
    argv = ["--network", str(run_dir / "network-snapshot-000000.safetensors"), "--run-dir", str(run_dir),
            "--out", str(tmp_path / "metrics.json"), "--no-progress"]
    assert cli_main([*argv, "--metrics", "eqt8_frac,eqr8"]) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert set(results) == {"eqt8_frac", "eqr8"} and results["eqr8"] > 40
    line = json.loads((run_dir / "metric-eqr8.jsonl").read_text().splitlines()[-1])
    assert line["metric"] == "eqr8" and line["results"] == {"eqr8": results["eqr8"]}
    assert line["snapshot_pkl"] == "network-snapshot-000000.safetensors"

    sg2 = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                    synthesis_kwargs=dict(channel_base=256, channel_max=16))
    save_snapshot(tmp_path / "sg2.safetensors", {"G_ema": sg2})
    capsys.readouterr()
    rc = cli_main(["--network", str(tmp_path / "sg2.safetensors"), "--metrics", "eqt50k_int", "--no-progress",
                   "--out", str(tmp_path / "m2.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "eqt50k_int" in err and "StyleGAN3" in err and len(err.strip().splitlines()) == 1, err
