"""generate stage: every command on tiny conditional / unconditional generators, CPU only."""

from __future__ import annotations

from pathlib import Path

import imageio
import numpy as np
import PIL.Image
import pytest
import torch

from models import Generator, save_snapshot
from stages.common.errors import BadInput
from stages.common.images import nhwc, to_uint8
from stages.common.seeds import parse_grid, parse_seeds
from stages.generate.cli import main
from stages.generate.config import ProjectConfig
from stages.generate.projector import project, run_projection
from stages.generate.video import num_frames

RES = 16


def images_to_uint8(img: torch.Tensor) -> np.ndarray:
    return nhwc(to_uint8(img))


def tiny_g(c_dim: int = 0, channels: int = 3, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=RES, img_channels=channels,
                  mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 16})
    with torch.no_grad():  # a non-zero w_avg makes truncation do something
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Generator]]:
    root = tmp_path_factory.mktemp("nets")
    out = {}
    for name, kwargs in {"uncond": {}, "cond": {"c_dim": 3}, "gray": {"channels": 1}}.items():
        G = tiny_g(**kwargs)
        path = root / f"{name}.safetensors"
        save_snapshot(path, {"G": G, "G_ema": G})
        out[name] = (path, G)
    return out


def run(*argv: str, capsys: pytest.CaptureFixture | None = None) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def png(path: Path) -> np.ndarray:
    return np.array(PIL.Image.open(path))


# ---------------------------------------------------------------------------------------------
# parsing


def test_parse_seeds_and_grid() -> None:
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5]
    for bad in ("3-a", "", "5-2", "-1", "1,,2", "0-999999999"):
        with pytest.raises(BadInput):
            parse_seeds(bad)
    assert parse_grid("4x2") == (4, 2)  # columns x rows, as the official tools read it
    with pytest.raises(BadInput):
        parse_grid("4by2")


# ---------------------------------------------------------------------------------------------
# images


def test_seed_rule_and_names(nets, tmp_path: Path) -> None:
    path, G = nets["uncond"]
    assert run("images", "--network", path, "--seeds", "3-5", "--trunc", "0.7", "--batch-size", "1",
               "--outdir", tmp_path)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0003.png", "seed0004.png", "seed0005.png"]
    z = torch.from_numpy(np.random.RandomState(5).randn(1, G.z_dim))
    ref = images_to_uint8(G(z, None, truncation_psi=0.7, noise_mode="const"))[0]
    np.testing.assert_array_equal(png(tmp_path / "seed0005.png"), ref)


def test_bf16_images_stay_within_a_few_grey_levels_and_project_refuses_it(nets, tmp_path: Path, capsys) -> None:
    path, _ = nets["uncond"]
    for precision in ("fp32", "bf16"):
        assert run("images", "--network", path, "--seeds", "0-15", "--precision", precision,
                   "--outdir", tmp_path / precision)[0] == 0
    a = np.stack([png(p) for p in sorted((tmp_path / "fp32").glob("seed*.png"))]).astype(int)
    b = np.stack([png(p) for p in sorted((tmp_path / "bf16").glob("seed*.png"))]).astype(int)
    diff = np.abs(a - b)
    assert diff.max() > 0  # bf16 really ran (an fp32 fallback would be bit-identical)
    assert np.percentile(diff, 99) <= 8 and diff.mean() < 1.5, (diff.max(), diff.mean())
    rc, err = run("project", "--network", path, "--target", tmp_path / "fp32" / "seed0000.png", "--precision",
                  "bf16", "--outdir", tmp_path / "proj", capsys=capsys)
    assert rc != 0 and "fp32 only" in err


def test_grid_and_grayscale(nets, tmp_path: Path) -> None:
    path, _ = nets["uncond"]
    assert run("images", "--network", path, "--seeds", "0-4", "--grid", "3x2", "--outdir", tmp_path)[0] == 0
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (2 * RES, 3 * RES, 3)
    single = tmp_path / "single"
    run("images", "--network", path, "--seeds", "3", "--outdir", single)
    np.testing.assert_allclose(grid[RES:, :RES].astype(int), png(single / "seed0003.png").astype(int), atol=1)
    assert grid[RES:, 2 * RES:].max() == 0  # the 6th cell has no seed: black

    gpath, _ = nets["gray"]
    assert run("images", "--network", gpath, "--seeds", "1", "--outdir", tmp_path / "g")[0] == 0
    im = PIL.Image.open(tmp_path / "g" / "seed0001.png")
    assert im.mode == "L" and im.size == (RES, RES)


def test_conditional_classes(nets, tmp_path: Path, capsys) -> None:
    path, G = nets["cond"]
    rc, err = run("images", "--network", path, "--seeds", "0", "--no-all-classes", "--outdir", tmp_path,
                  capsys=capsys)
    assert rc == 2 and "3 classes (0-2)" in err and len(err.strip().splitlines()) == 1
    rc, err = run("images", "--network", path, "--seeds", "0", "--class", "3", "--outdir", tmp_path, capsys=capsys)
    assert rc == 2 and "out of range" in err and "Traceback" not in err
    assert run("images", "--network", path, "--seeds", "2", "--class", "1", "--batch-size", "1",
               "--outdir", tmp_path)[0] == 0
    z = torch.from_numpy(np.random.RandomState(2).randn(1, G.z_dim))
    ref = images_to_uint8(G(z, torch.tensor([[0.0, 1.0, 0.0]]), noise_mode="const"))[0]
    np.testing.assert_array_equal(png(tmp_path / "seed0002.png"), ref)

    # Without --class a conditional network gives the class grid by default (all_classes: auto).
    assert run("images", "--network", path, "--seeds", "0-3", "--outdir", tmp_path / "all")[0] == 0
    grid = png(tmp_path / "all" / "classes.png")
    assert grid.shape == (3 * RES, 4 * RES, 3)
    np.testing.assert_allclose(grid[RES : 2 * RES, 2 * RES : 3 * RES].astype(int), ref.astype(int), atol=1)


def test_projected_w(nets, tmp_path: Path, capsys) -> None:
    path, G = nets["uncond"]
    ws = G.mapping(torch.randn(2, G.z_dim), None)
    np.savez(tmp_path / "w.npz", w=ws.numpy())
    assert run("images", "--network", path, "--projected-w", tmp_path / "w.npz", "--outdir", tmp_path)[0] == 0
    ref = images_to_uint8(G.synthesis(ws[1:], noise_mode="const"))[0]
    np.testing.assert_allclose(png(tmp_path / "proj01.png").astype(int), ref.astype(int), atol=1)
    np.savez(tmp_path / "bad.npz", w=ws.numpy()[:, :2])
    rc, err = run("images", "--network", path, "--projected-w", tmp_path / "bad.npz", "--outdir", tmp_path,
                  capsys=capsys)
    assert rc == 2 and "needs [N," in err


@pytest.mark.parametrize("argv, needle", [
    (["images", "--seeds", "1-x"], "cannot parse"),
    (["images", "--seeds", "0", "--grid", "2by2"], "COLSxROWS"),
    (["images", "--seeds", "0", "--trunc", "abc"], "expected float"),
    (["images", "--seeds", "0", "--trunc", "nan"], "finite"),
    (["images", "--seeds", "0-999999999"], "more than 100,000 seeds"),
    (["images", "--seeds", "0", "--noise-mode", "loud"], "is not one of"),
    (["images", "--seeds", "0", "--class", "1"], "unconditional"),
    (["images", "--seeds", "0-9", "--grid", "2x2"], "holds 4 images"),
    (["video", "--seeds", "0-2", "--grid", "2x1"], "multiple of 2"),
    (["video", "--output", "x.avi"], ".mp4 or .gif"),
    (["style-mixing", "--rows", "1", "--cols", "2", "--styles", "0-40"], "out of range"),
])
def test_bad_args_one_line_exit_2(nets, tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    path, _ = nets["uncond"]
    rc, err = run(*argv, "--network", path, "--outdir", tmp_path, capsys=capsys)
    assert rc == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_network_exit_2(tmp_path: Path, capsys) -> None:
    rc, err = run("images", "--network", tmp_path / "nope.safetensors", "--seeds", "0", "--outdir", tmp_path,
                  capsys=capsys)
    assert rc == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    rc, err = run("images", "--seeds", "0", "--outdir", tmp_path, "--params", tmp_path / "none.yaml", capsys=capsys)
    assert rc == 2 and "params file not found" in err


def test_params_section_defaults(nets, tmp_path: Path) -> None:
    path, _ = nets["uncond"]
    params = tmp_path / "params.yaml"
    params.write_text(f"generate:\n  network: {path}\n  outdir: {tmp_path / 'o'}\n  images:\n    seeds: 7,9\n")
    assert run("images", "--params", params)[0] == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["seed0007.png", "seed0009.png"]


def test_help_exits_0(capsys) -> None:
    for cmd in ("images", "style-mixing", "video", "project", "convert"):
        assert main([cmd, "--help"]) == 0
    assert "--seeds" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# style mixing


@pytest.mark.parametrize("which", ["uncond", "cond"])
def test_style_mixing_layout(nets, tmp_path: Path, which: str) -> None:
    path, G = nets[which]
    extra = ["--class", "0"] if which == "cond" else []
    rows, cols = [85, 100, 75], [55, 821]
    assert run("style-mixing", "--network", path, "--rows", "85,100,75", "--cols", "55,821", "--styles", "0-2",
               "--outdir", tmp_path, *extra)[0] == 0
    grid = png(tmp_path / "grid.png")
    assert grid.shape == (4 * RES, 3 * RES, 3)
    assert grid[:RES, :RES].max() == 0  # blank corner

    def cell(r: int, c: int) -> np.ndarray:
        return grid[r * RES : (r + 1) * RES, c * RES : (c + 1) * RES]

    for j, s in enumerate(cols):  # top row: column sources
        np.testing.assert_array_equal(cell(0, j + 1), png(tmp_path / f"{s}-{s}.png"))
    for i, s in enumerate(rows):  # left column: row sources
        np.testing.assert_array_equal(cell(i + 1, 0), png(tmp_path / f"{s}-{s}.png"))
        for j, col in enumerate(cols):
            np.testing.assert_array_equal(cell(i + 1, j + 1), png(tmp_path / f"{s}-{col}.png"))

    # A mixed cell is the row seed's ws with layers 0-2 taken from the column seed.
    c = torch.eye(G.c_dim)[:1] if G.c_dim else None
    w = {s: G.mapping(torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).float(), c) for s in (100, 821)}
    mix = w[100].clone()
    mix[:, :3] = w[821][:, :3]
    ref = images_to_uint8(G.synthesis(mix, noise_mode="const"))[0]
    np.testing.assert_allclose(png(tmp_path / "100-821.png").astype(int), ref.astype(int), atol=1)
    assert not np.array_equal(png(tmp_path / "100-821.png"), png(tmp_path / "100-100.png"))


# ---------------------------------------------------------------------------------------------
# video


def test_num_frames() -> None:
    assert num_frames(4, 10, loop=True) == 40
    assert num_frames(4, 10, loop=False) == 31


@pytest.mark.parametrize("which, kind, loop", [("uncond", "cubic", True), ("cond", "linear", False)])
def test_video_mp4(nets, tmp_path: Path, which: str, kind: str, loop: bool) -> None:
    path, _ = nets[which]
    out = tmp_path / "v.mp4"
    extra = ["--class", "2"] if which == "cond" else []
    argv = ["video", "--network", path, "--seeds", "0-3", "--grid", "2x1", "--w-frames", "3", "--kind", kind,
            "--loop" if loop else "--no-loop", "--output", out, "--fps", "10", *extra]
    assert run(*argv)[0] == 0
    with imageio.get_reader(str(out)) as reader:
        frames = [f for f in reader]
    assert len(frames) == num_frames(2, 3, loop)
    assert frames[0].shape[:2] == (RES, 2 * RES)


def test_video_gif_and_cubic_needs_keyframes(nets, tmp_path: Path, capsys) -> None:
    path, _ = nets["gray"]
    out = tmp_path / "v.gif"
    assert run("video", "--network", path, "--seeds", "0-1", "--w-frames", "4", "--kind", "linear",
               "--output", out, "--fps", "20")[0] == 0
    im = PIL.Image.open(out)
    assert im.size == (RES, RES) and 1 < im.n_frames <= 8
    rc, err = run("video", "--network", path, "--seeds", "0-1", "--no-loop", "--output", out, capsys=capsys)
    assert rc == 2 and ">= 4 keyframes" in err


# ---------------------------------------------------------------------------------------------
# projection


class StandInVGG(torch.nn.Module):
    """LPIPS-like stand-in: unit-normalised pixels + random conv features; TorchScript, official signature."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, resize_images: bool = False, return_lpips: bool = False) -> torch.Tensor:
        x = x / 127.5 - 1
        f = torch.cat([x.flatten(1), torch.nn.functional.leaky_relu(self.conv(x), 0.2).flatten(1)], dim=1)
        return f / f.square().sum(dim=1, keepdim=True).sqrt()


def stand_in_vgg() -> torch.jit.ScriptModule:
    return torch.jit.script(StandInVGG().eval())


@pytest.mark.slow
def test_project_recovers_generated_image(nets) -> None:
    _, G = nets["uncond"]
    z = torch.from_numpy(np.random.RandomState(11).randn(1, G.z_dim)).float()
    img = (G(z, None, noise_mode="const") + 1) * 127.5
    target = img.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8)[0].numpy()
    cfg = ProjectConfig(num_steps=100, seed=303)
    ws, dists = project(G, target, stand_in_vgg(), cfg, progress=False)
    assert ws.shape == (100, G.num_ws, G.w_dim)
    vgg = stand_in_vgg()
    feat = lambda x: vgg(x, resize_images=False, return_lpips=True)  # noqa: E731
    with torch.no_grad():
        final = (G.synthesis(ws[-1:], noise_mode="const") + 1) * 127.5
        dist_final = float((feat(final) - feat(img)).square().sum())
    dist_start = dists[0]
    print(f"projection distance {dist_start:.4f} -> {dist_final:.5f}")
    # Measured 0.56 -> 0.043 on this model: one broadcast w can reproduce the target exactly, the
    # 100-step schedule gets within 1/10 of the start; the bounds leave room for float noise only.
    assert dist_final < 0.08 and dist_final < 0.15 * dist_start


def test_project_command_outputs(nets, tmp_path: Path) -> None:
    _, G = nets["cond"]
    target = tmp_path / "t.png"
    PIL.Image.fromarray(np.random.RandomState(0).randint(0, 255, [24, 30, 3], dtype=np.uint8)).save(target)
    cfg = ProjectConfig(target=str(target), num_steps=5, w_avg_samples=100, class_idx=1, outdir=str(tmp_path))
    files, metrics = run_projection(G, cfg, vgg16=stand_in_vgg(), progress=False)
    assert {p.name for p in files} == {"proj.mp4", "target.png", "proj.png", "projected_w.npz"}
    assert png(tmp_path / "target.png").shape == (RES, RES, 3)
    w = np.load(tmp_path / "projected_w.npz")["w"]
    assert w.shape == (1, G.num_ws, G.w_dim)
    with imageio.get_reader(str(tmp_path / "proj.mp4")) as reader:
        assert sum(1 for _ in reader) == 5
    assert set(metrics) == {"initial_dist", "final_dist"}


def test_project_cli_detector_dir_and_offline_error(nets, tmp_path: Path, capsys, monkeypatch) -> None:
    path, _ = nets["uncond"]
    monkeypatch.setenv("SG2_OFFLINE", "1")
    monkeypatch.setenv("SG2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SG2_DETECTOR_DIR", raising=False)
    target = tmp_path / "t.png"
    PIL.Image.fromarray(np.full([RES, RES, 3], 90, np.uint8)).save(target)
    argv = ["project", "--network", path, "--target", target, "--num-steps", "2", "--no-save-video",
            "--outdir", tmp_path / "out"]
    rc, err = run(*argv, "--detector-dir", tmp_path / "empty", capsys=capsys)
    assert rc == 1 and "vgg16.pt" in err and "--detector-dir" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "det").mkdir()
    stand_in_vgg().save(str(tmp_path / "det" / "vgg16.pt"))
    assert run(*argv, "--detector-dir", tmp_path / "det")[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["proj.png", "projected_w.npz", "target.png"]


# ---------------------------------------------------------------------------------------------
# MLflow


@pytest.mark.slow
def test_mlflow_logs_into_given_run(nets, tmp_path: Path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    path, _ = nets["uncond"]
    monkeypatch.chdir(tmp_path)  # the default artifact store is relative to the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as parent:
        run_id = parent.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert run("images", "--network", path, "--seeds", "1-2", "--mlflow", "--outdir", tmp_path / "o")[0] == 0
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "generate/images")}
    assert names == {"generate/images/seed0001.png", "generate/images/seed0002.png"}
    assert mlflow.get_run(run_id).data.tags["generate.seeds"] == "1-2"
