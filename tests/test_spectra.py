"""Spectral analysis: the window, white noise, sinusoids, heatmaps and slices, and the four commands end to end
on a dataset ZIP and a network snapshot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from models import StyleGAN3Generator, save_snapshot
from stages.spectra import analysis
from stages.spectra.cli import main
from stages.spectra.commands import load_spectrum, save_spectrum
from tests.test_metrics import make_zip


def test_kaiser_window_has_unit_energy() -> None:
    for size, beta in ((16, 8.0), (33, 3.0)):
        w = analysis.kaiser_window_2d(size, beta)
        assert w.dtype == torch.float64 and w.shape == (size, size)
        assert float(w.square().sum()) == pytest.approx(1.0, abs=1e-12)
        ref = np.kaiser(size, beta)  # numpy's symmetric Kaiser window, same shape parameter
        np.testing.assert_allclose(w.numpy(), np.outer(ref, ref) / (ref**2).sum(), rtol=1e-10, atol=1e-14)


def test_whitened_white_noise_is_flat_at_0_db() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn([50, 3, 32, 32], generator=gen, dtype=torch.float64) * 40 + 100 for _ in range(4)]
    spectrum, size, n = analysis.mean_power_spectrum(batches, mean=100, std=40, interp=4)
    assert (size, n, spectrum.shape) == (32, 200, (128, 128))
    assert 10 * math.log10(spectrum.mean()) == pytest.approx(0, abs=0.05)  # unit window energy: E P = 1 (0.005 dB)
    hmap = analysis.heatmap_db(spectrum, size, smooth=1.25)
    assert np.abs(hmap).max() < 1.0  # flat within 1 dB everywhere (measured 0.22 dB; unsmoothed 0.64 dB)
    for freqs, values in analysis.spectrum_slices(hmap, size).values():
        assert len(freqs) == len(values) == 65 and np.abs(values).max() < 1.0


def test_sinusoid_peaks_at_its_frequency() -> None:
    size, interp, (kx, ky) = 32, 4, (5, 3)  # cycles per image
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.cos(2 * math.pi * (kx * x + ky * y) / size).to(torch.float64)[None, None]
    spectrum, _, _ = analysis.mean_power_spectrum([img], mean=0, std=1 / math.sqrt(2), interp=interp)
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    s = spectrum.shape[0]
    assert peak in ((ky * interp, kx * interp), (s - ky * interp, s - kx * interp))  # (row = v, column = u)
    # The window's main lobe is a few bins wide: far from the peak the power is > 60 dB down.
    assert spectrum[s // 2, s // 2] < spectrum.max() * 1e-6
    hmap = analysis.heatmap_db(spectrum, size, smooth=0)
    freqs = analysis.frequency_axis(hmap.shape[0], size)
    r, c = np.unravel_index(np.argmax(hmap), hmap.shape)
    assert {(freqs[c], freqs[r])} <= {(kx, ky), (-kx, -ky)}


def test_heatmap_layout() -> None:
    spectrum = np.full([8, 8], 10.0)
    spectrum[0, 0] = 1000.0  # DC
    hmap = analysis.heatmap_db(spectrum, 4, smooth=0)
    assert hmap.shape == (9, 9) and hmap[4, 4] == pytest.approx(30) and hmap[0, 0] == pytest.approx(10)
    np.testing.assert_array_equal(hmap[-1], hmap[0])  # the first row/column repeat at the end (+fs/2)
    np.testing.assert_array_equal(analysis.frequency_axis(9, 4), np.linspace(-2, 2, 9))


def test_npz_round_trip_and_foreign_files(tmp_path: Path) -> None:
    spectrum = np.random.default_rng(0).random([16, 16]) + 0.5
    path = save_spectrum(tmp_path / "s.npz", spectrum, 4)
    got, size = load_spectrum(path)
    np.testing.assert_array_equal(got, spectrum)
    assert size == 4 and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "other.npz", w=np.zeros(3))
    for name in ("bad.npz", "other.npz", "missing.npz"):
        with pytest.raises(Exception, match=name):
            load_spectrum(tmp_path / name)


# ------------------------------------------------------------------------------------------------
# The command line.


def run(*argv: object, capsys: pytest.CaptureFixture | None = None) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    if capsys is None:
        return rc, "", ""
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def png_size(path: Path) -> tuple[int, int]:
    with PIL.Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_cli_dataset_stats_calc_heatmap_slices(tmp_path: Path, capsys) -> None:
    data = make_zip(tmp_path / "noise.zip", n=24, res=16)  # uniform random pixels: white noise
    rc, out, _ = run("stats", "--source", data, "--num", 20, "--out", tmp_path / "stats.json", capsys=capsys)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert rc == 0 and out.strip() == f"--mean={stats['mean']:g} --std={stats['std']:g}"
    assert stats["num_images"] == 20 and stats["mean"] == pytest.approx(127, abs=3)
    assert stats["std"] == pytest.approx(255 / math.sqrt(12), rel=0.03)  # uniform on 0..254

    rc, _, err = run("calc", "--source", data, "--dest", tmp_path / "data.npz", "--mean", stats["mean"],
                     "--std", stats["std"], "--num", 20, capsys=capsys)
    assert rc == 0, err
    spectrum, size = load_spectrum(tmp_path / "data.npz")
    assert size == 16 and spectrum.shape == (64, 64)
    assert 10 * math.log10(spectrum.mean()) == pytest.approx(0, abs=0.3)  # whitened white noise

    # Without --mean/--std, calc measures them first (on the same 20 images) and gives the same spectrum.
    assert run("calc", "--source", data, "--dest", tmp_path / "auto.npz", "--num", 20)[0] == 0
    np.testing.assert_allclose(load_spectrum(tmp_path / "auto.npz")[0], spectrum, rtol=1e-9)

    assert run("heatmap", tmp_path / "data.npz", "--save", tmp_path / "heat.png", "--dpi", 50)[0] == 0
    assert png_size(tmp_path / "heat.png") == (300, 240)  # 6 x 4.8 inches at 50 dpi
    assert run("heatmap", tmp_path / "auto.npz")[0] == 0 and (tmp_path / "auto.png").is_file()  # default name
    assert run("slices", tmp_path / "data.npz", tmp_path / "auto.npz", "--save", tmp_path / "sl.png",
               "--dpi", 40)[0] == 0
    assert png_size(tmp_path / "sl.png") == (480, 184)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_cli_network_source(tmp_path: Path) -> None:
    torch.manual_seed(0)
    G = StyleGAN3Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16, num_layers=4,
                           num_critical=2).eval()
    net = save_snapshot(tmp_path / "g.safetensors", {"G_ema": G})
    argv = ["calc", "--source", net, "--num", 6, "--batch-size", 4, "--mean", 127.5, "--std", 20, "--interp", 2]
    assert run(*argv, "--dest", tmp_path / "a.npz")[0] == 0
    assert run(*argv, "--dest", tmp_path / "b.npz")[0] == 0
    a, size = load_spectrum(tmp_path / "a.npz")
    assert size == 16 and a.shape == (32, 32) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, load_spectrum(tmp_path / "b.npz")[0])  # seeded: runs repeat exactly
    assert run(*argv[:-2], "--interp", 2, "--seed", 10, "--dest", tmp_path / "c.npz")[0] == 0
    assert not np.array_equal(a, load_spectrum(tmp_path / "c.npz")[0])


@pytest.mark.parametrize("argv, needle", [
    (["calc", "--dest", "x.npz"], "--source is required"),
    (["calc", "--source", "{tmp}/nope.zip", "--dest", "{tmp}/x.npz"], "not found"),
    (["calc", "--source", "{tmp}/g.safetensors", "--dest", "{tmp}/x.npz"], "--num is required"),
    (["calc", "--source", "{tmp}/d.zip", "--dest", "{tmp}/x.npz", "--num", "99"], "holds only 4"),
    (["calc", "--source", "{tmp}/d.zip", "--dest", "{tmp}/x.png"], "end in .npz"),
    (["calc", "--source", "{tmp}/d.zip", "--std", "0"], "--std must be > 0"),
    (["heatmap", "{tmp}/d.zip"], "not a spectrum .npz"),
    (["slices", "{tmp}/s16.npz", "{tmp}/s32.npz"], "same resolution"),
])
def test_cli_errors_are_one_line(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    make_zip(tmp_path / "d.zip", n=4, res=16)
    save_snapshot(tmp_path / "g.safetensors", {"G_ema": StyleGAN3Generator(
        z_dim=4, c_dim=0, w_dim=4, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=1),
        channel_base=64, channel_max=4, num_layers=2, num_critical=1)})
    save_spectrum(tmp_path / "s16.npz", np.ones([64, 64]), 16)
    save_spectrum(tmp_path / "s32.npz", np.ones([128, 128]), 32)
    rc, _, err = run(*[a.format(tmp=tmp_path) for a in argv], capsys=capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
