"""generate stage with StyleGAN3 networks: --translate/--rotate (official gen_images.py semantics), style
mixing and interpolation videos; StyleGAN2 refuses the transform flags. Tiny networks, CPU only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from models import Generator, StyleGAN3Generator, load_generator, save_snapshot
from stages.common.images import nhwc, to_uint8
from stages.common.seeds import seeds_to_z
from stages.generate.cli import main
from stages.generate.images import make_transform

RES = 32


def tiny_sg3(c_dim: int = 0, seed: int = 0) -> StyleGAN3Generator:
    torch.manual_seed(seed)
    G = StyleGAN3Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=16, num_layers=6,
                           num_critical=2)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sg3nets")
    out = {}
    for name, G in {"uncond": tiny_sg3(), "cond": tiny_sg3(c_dim=3, seed=1)}.items():
        out[name] = save_snapshot(root / f"{name}.safetensors", {"G": G, "G_ema": G})
    sg2 = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
                    synthesis_kwargs={"channel_base": 256, "channel_max": 16}).eval()
    out["sg2"] = save_snapshot(root / "sg2.safetensors", {"G": sg2, "G_ema": sg2})
    return out


def run(*argv: object, capsys: pytest.CaptureFixture | None = None) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err if capsys is not None else ""


def png(path: Path) -> np.ndarray:
    return np.array(PIL.Image.open(path))


@torch.no_grad()
def render(path: Path, seed: int, transform: np.ndarray | None = None, c: torch.Tensor | None = None) -> np.ndarray:
    """The official gen_images.py recipe: transform buffer = inverse of the user's matrix, then G(z, c)."""
    G = load_generator(path)
    if transform is not None:
        G.synthesis.input.transform.copy_(torch.from_numpy(np.linalg.inv(transform)))
    z = seeds_to_z([seed], G.z_dim)
    return nhwc(to_uint8(G(z, torch.zeros([1, 0]) if c is None else c, noise_mode="const")))[0]


# ---------------------------------------------------------------------------------------------
# images --translate --rotate


def test_official_transform_matrix() -> None:
    m = make_transform((0.3, -1.0), 90.0)
    np.testing.assert_allclose(m, [[0, 1, 0.3], [-1, 0, -1.0], [0, 0, 1]], atol=1e-15)
    np.testing.assert_array_equal(make_transform((0, 0), 0), np.eye(3))


def test_translate_moves_the_image_by_whole_pixels(nets, tmp_path: Path) -> None:
    assert run("images", "--network", nets["uncond"], "--seeds", "5", "--outdir", tmp_path / "a")[0] == 0
    # 4 px right, 2 px up; a negative value right after the flag is taken as its value.
    assert run("images", "--network", nets["uncond"], "--seeds", "5", "--translate", f"{4 / RES},-{2 / RES}",
               "--outdir", tmp_path / "b")[0] == 0
    a, b = png(tmp_path / "a" / "seed0005.png").astype(int), png(tmp_path / "b" / "seed0005.png").astype(int)
    m = 6  # border pixels influenced by the padding of the feature maps
    assert np.abs(b[m : -m - 2, m + 4 : -m] - a[m + 2 : -m, m : -m - 4]).max() <= 1  # uint8 round-off only
    assert np.abs(b[m:-m, m:-m] - a[m:-m, m:-m]).max() > 10  # and the image did move


def test_rotate_and_translate_match_the_official_recipe(nets, tmp_path: Path) -> None:
    assert run("images", "--network", nets["cond"], "--seeds", "3,9", "--class", "1", "--translate", "0.1,0.25",
               "--rotate", "-30", "--outdir", tmp_path)[0] == 0
    c = torch.eye(3)[1:2]
    for seed in (3, 9):
        want = render(nets["cond"], seed, make_transform((0.1, 0.25), -30.0), c)
        np.testing.assert_array_equal(png(tmp_path / f"seed{seed:04d}.png"), want)
        assert np.abs(want.astype(int) - render(nets["cond"], seed, None, c).astype(int)).max() > 10


def test_without_flags_the_transform_is_reset_to_identity(nets, tmp_path: Path) -> None:
    # gen_images.py sets the buffer for every image, so a transform saved in a snapshot does not leak in.
    G = load_generator(nets["uncond"])
    G.synthesis.input.transform.copy_(torch.from_numpy(np.linalg.inv(make_transform((0.2, 0), 45))))
    moved = save_snapshot(tmp_path / "moved.safetensors", {"G_ema": G})
    assert run("images", "--network", moved, "--seeds", "2", "--outdir", tmp_path / "o")[0] == 0
    np.testing.assert_array_equal(png(tmp_path / "o" / "seed0002.png"), render(nets["uncond"], 2))


@pytest.mark.parametrize("argv, needle", [
    (["--translate", "0.1,0"], "StyleGAN3"),
    (["--rotate", "10"], "StyleGAN3"),
])
def test_stylegan2_refuses_transform_flags(nets, tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    rc, err = run("images", "--network", nets["sg2"], "--seeds", "0", "--outdir", tmp_path, *argv, capsys=capsys)
    assert rc == 2 and needle in err and "--translate/--rotate" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("*.png"))
    assert run("images", "--network", nets["sg2"], "--seeds", "0", "--outdir", tmp_path)[0] == 0  # no flags: fine


@pytest.mark.parametrize("argv, needle", [
    (["--translate", "0.1"], "two numbers"),
    (["--translate", "a,b"], "two numbers"),
    (["--translate", "inf,0"], "finite"),
    (["--rotate", "nan"], "finite"),
])
def test_bad_transform_values_exit_2(nets, tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    rc, err = run("images", "--network", nets["uncond"], "--seeds", "0", "--outdir", tmp_path, *argv, capsys=capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_help_lists_the_flags(capsys) -> None:
    assert main(["images", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--translate" in out and "--rotate" in out and "StyleGAN3" in out


# ---------------------------------------------------------------------------------------------
# style mixing and video (StyleGAN3 has no noise inputs; noise_mode is accepted and ignored)


def test_style_mixing(nets, tmp_path: Path) -> None:
    assert run("style-mixing", "--network", nets["uncond"], "--rows", "85,100", "--cols", "55,821,7",
               "--styles", "0-3", "--outdir", tmp_path)[0] == 0
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (3 * RES, 4 * RES, 3)
    G = load_generator(nets["uncond"])
    w = {s: G.mapping(seeds_to_z([s], G.z_dim), None) for s in (100, 821)}
    mix = w[100].clone()
    mix[:, :4] = w[821][:, :4]
    with torch.no_grad():
        want = nhwc(to_uint8(G.synthesis(mix, noise_mode="const")))[0]
    np.testing.assert_allclose(png(tmp_path / "100-821.png").astype(int), want.astype(int), atol=1)
    np.testing.assert_array_equal(grid[2 * RES :, 2 * RES : 3 * RES], png(tmp_path / "100-821.png"))
    assert not np.array_equal(png(tmp_path / "100-821.png"), png(tmp_path / "100-100.png"))


def test_video_gif(nets, tmp_path: Path) -> None:
    out = tmp_path / "v.gif"
    assert run("video", "--network", nets["cond"], "--class", "2", "--seeds", "0-3", "--grid", "2x1",
               "--w-frames", "2", "--kind", "linear", "--output", out, "--fps", "10")[0] == 0
    im = PIL.Image.open(out)
    assert im.size == (2 * RES, RES) and im.n_frames > 1
    im.seek(0)
    first = np.array(im.convert("RGB"))
    c = torch.eye(3)[2:3]
    for cell, seed in enumerate((0, 2)):  # keyframe 0 of each cell (seeds are taken cell by cell)
        want = render(nets["cond"], seed, None, c)
        # GIF palettes quantise colours: measured mean level error 0.1-0.3 for the right seed, 4.9-6.2 for others.
        assert np.abs(first[:, cell * RES : (cell + 1) * RES].astype(int) - want.astype(int)).mean() < 2


def test_named_network_from_the_cache(nets, tmp_path: Path, monkeypatch) -> None:
    # `--network stylegan3-r-afhqv2-512x512` resolves to NVIDIA's URL and reads the cached file; nothing is
    # downloaded (requests would fail).
    import requests

    from models.serialization.loading import PRETRAINED, cache_path

    def offline(*args, **kwargs):
        raise requests.ConnectionError("offline")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "cache"))
    target = cache_path(PRETRAINED["stylegan3-r-afhqv2-512x512"])
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(nets["uncond"]).read_bytes())
    assert run("images", "--network", "stylegan3-r-afhqv2-512x512", "--seeds", "4", "--rotate", "15",
               "--outdir", tmp_path / "o")[0] == 0
    np.testing.assert_array_equal(png(tmp_path / "o" / "seed0004.png"),
                                  render(nets["uncond"], 4, make_transform((0, 0), 15.0)))
