"""prepare: official format and pixels, bad-input report, atomic and reproducible output, all sources."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stages.common.config import ConfigError
from stages.prepare import destination as writer_mod
from stages.prepare.cli import main
from stages.prepare.config import PrepareConfig
from stages.prepare.conversion import prepare_dataset
from stages.prepare.destination import DestinationError
from stages.prepare.png import encode_png
from stages.prepare.report import PrepareError

LANCZOS = PIL.Image.Resampling.LANCZOS


def smooth(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic image with structure (so resampling errors would show)."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    chans = [
        ((np.sin(x / (3 + k) + seed) + np.cos(y / (4 + k))) * 60 + 128 + rs.randint(-20, 20, (h, w))) for k in range(c)
    ]
    out = np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)
    return out[:, :, 0] if c == 1 else out


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr, mode).save(buf, "png") if mode else PIL.Image.fromarray(arr).save(buf, "png")
    return buf.getvalue()


def read_zip(path: Path) -> tuple[list[np.ndarray], dict]:
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        images = [np.array(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in names]
        meta = json.loads(zf.read("dataset.json"))
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
    assert names == [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(names))]
    return images, meta


def run(tmp_path: Path, source: Path | str, name: str = "out.zip", **kw) -> tuple[dict, Path]:
    dest = tmp_path / name
    kw.setdefault("workers", 1)
    summary = prepare_dataset(PrepareConfig(source=str(source), dest=str(dest), progress=False, **kw))
    return summary, dest


# ---------------------------------------------------------------------------------------------
# A folder that mixes every kind of input


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge size (the bytes after it are never decoded)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    src = tmp_path / "mixed"
    (src / "sub").mkdir(parents=True)
    exp: dict[str, np.ndarray] = {}
    rgb = smooth(32, 32, 3, 1)
    (src / "a_rgb.png").write_bytes(png_bytes(rgb))
    exp["a_rgb.png"] = rgb
    buf = io.BytesIO()
    PIL.Image.fromarray(smooth(32, 32, 3, 2)).save(buf, "jpeg", quality=95)
    (src / "b_photo.jpg").write_bytes(buf.getvalue())
    exp["b_photo.jpg"] = np.array(PIL.Image.open(io.BytesIO(buf.getvalue())))
    gray = smooth(32, 32, 1, 3)
    (src / "c_gray.png").write_bytes(png_bytes(gray))
    exp["c_gray.png"] = np.repeat(gray[:, :, None], 3, axis=2)  # colour wins: gray replicated
    rgba = np.dstack([smooth(32, 32, 3, 4), np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))])
    (src / "d_rgba.png").write_bytes(png_bytes(rgba, "RGBA"))
    alpha = rgba[:, :, 3:].astype(np.float64) / 255
    exp["d_rgba.png"] = np.round(rgba[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)  # over white
    pal = PIL.Image.fromarray(smooth(32, 32, 3, 5)).quantize(16)
    pal.save(src / "e_palette.png")
    exp["e_palette.png"] = np.array(pal.convert("RGB"))
    cmyk = PIL.Image.fromarray(smooth(32, 32, 3, 6)).convert("CMYK")
    cmyk.save(src / "f_cmyk.jpg", quality=95)
    exp["f_cmyk.jpg"] = np.array(PIL.Image.open(src / "f_cmyk.jpg").convert("RGB"))
    g16 = (smooth(32, 32, 1, 7).astype(np.uint16) * 257 + 100).astype(np.uint16)
    PIL.Image.fromarray(g16).save(src / "g_gray16.png")
    exp["g_gray16.png"] = np.repeat((g16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    (src / "sub" / "h_nested.png").write_bytes(png_bytes(smooth(32, 32, 3, 8)))
    exp["sub/h_nested.png"] = smooth(32, 32, 3, 8)
    # Bad inputs.
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    full = io.BytesIO()
    PIL.Image.fromarray(smooth(64, 64, 3, 9)).save(full, "jpeg", quality=90)
    (src / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (src / "zero.png").write_bytes(b"")
    (src / "text.jpg").write_text("this is not an image")
    (src / "notes.txt").write_text("ignored by extension")
    (src / "small.png").write_bytes(png_bytes(smooth(16, 16, 3, 10)))
    (src / "bomb.png").write_bytes(bomb_png(20000, 20000))
    return src, exp


def test_mixed_folder_pixels_and_report(tmp_path, mixed):
    src, exp = mixed
    summary, dest = run(tmp_path, src)
    images, meta = read_zip(dest)
    order = sorted(exp, key=lambda n: n.split("/"))
    assert summary["num_written"] == len(order) == len(images)
    assert meta == {"labels": None}
    for name, img in zip(order, images):
        assert img.shape == (32, 32, 3), name
        tol = 1 if name == "d_rgba.png" else 0  # Pillow's integer blend rounds within 1 level
        assert np.abs(img.astype(int) - exp[name].astype(int)).max() <= tol, name
    report = json.loads(Path(str(dest) + ".report.json").read_text())
    assert report == summary | {} or report["status"] == "ok"
    assert report["skipped"] == {
        "corrupt": 1,
        "decompression_bomb": 1,
        "empty_file": 1,
        "not_an_image": 1,
        "size_mismatch": 1,
        "truncated": 1,
    }
    skipped = {r: [i["name"] for i in items] for r, items in report["items"]["skipped"].items()}
    assert skipped["truncated"] == ["truncated.jpg"] and skipped["size_mismatch"] == ["small.png"]
    assert skipped["decompression_bomb"] == ["bomb.png"] and skipped["empty_file"] == ["zero.png"]
    assert report["ignored"] == {"not_an_image_extension": 1}
    fixed = report["fixed"]
    assert fixed["alpha_composited"] == 1 and fixed["palette_to_rgb"] == 1 and fixed["cmyk_to_rgb"] == 1
    assert fixed["16bit_to_8bit"] == 1 and fixed["gray_to_rgb"] == 2
    assert Path(str(dest) + ".log").read_text().count("skip ") >= 6


def test_on_error_fail_is_fatal_and_leaves_dest_alone(tmp_path, mixed):
    src, _ = mixed
    dest = tmp_path / "out.zip"
    with zipfile.ZipFile(dest, "w") as zf:  # an earlier dataset (ours or the official tool's)
        zf.writestr("dataset.json", '{"labels": null}')
    previous = dest.read_bytes()
    Path(str(dest) + ".report.json").write_text('{"status": "ok"}')
    with pytest.raises(PrepareError, match="--on-error fail"):
        run(tmp_path, src, on_error="fail")
    assert dest.read_bytes() == previous
    assert json.loads(Path(str(dest) + ".report.json").read_text())["status"] == "ok"  # still describes dest
    assert json.loads(Path(str(dest) + ".report.failed.json").read_text())["status"] == "failed"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_deterministic_bytes_across_runs_and_worker_counts(tmp_path, mixed):
    src, _ = mixed
    _, a = run(tmp_path, src, "a.zip", workers=1)
    _, b = run(tmp_path, src, "b.zip", workers=2, chunk_size=2)
    assert a.read_bytes() == b.read_bytes()


def test_interrupted_write_keeps_previous_output(tmp_path, mixed, monkeypatch):
    src, _ = mixed
    _, dest = run(tmp_path, src)
    before = dest.read_bytes()
    calls = {"n": 0}
    real_add = writer_mod.ZipDestination.add

    def crashing_add(self, name, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash mid-write")
        real_add(self, name, data)

    monkeypatch.setattr(writer_mod.ZipDestination, "add", crashing_add)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, src)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_killed_run_temp_is_cleaned_by_next_run(tmp_path, mixed):
    src, _ = mixed
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)  # that process has exited
    stale = tmp_path / f".out.zip.tmp-{dead_pid}-deadbeef"
    stale.write_bytes(b"half a zip")
    run(tmp_path, src)
    assert not stale.exists()


def test_colour_wins_restart_when_gray_comes_first(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    gray, rgb = smooth(16, 16, 1, 1), smooth(16, 16, 3, 2)
    (src / "a.png").write_bytes(png_bytes(gray))
    (src / "b.png").write_bytes(png_bytes(rgb))
    summary, dest = run(tmp_path, src)
    images, _ = read_zip(dest)
    assert summary["restarts"] == 1 and summary["channels"] == 3
    assert np.array_equal(images[0], np.repeat(gray[:, :, None], 3, 2)) and np.array_equal(images[1], rgb)
    only_gray = tmp_path / "g"
    only_gray.mkdir()
    (only_gray / "a.png").write_bytes(png_bytes(gray))
    summary, dest = run(tmp_path, only_gray, "g.zip")
    assert summary["channels"] == 1 and np.array_equal(read_zip(dest)[0][0], gray)


# ---------------------------------------------------------------------------------------------
# Crop / resize arithmetic (independent expectations written from the official rules)


def test_center_crop_matches_official_arithmetic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tall, wide = smooth(75, 50, 3, 1), smooth(40, 61, 3, 2)
    (src / "a.png").write_bytes(png_bytes(tall))
    (src / "b.png").write_bytes(png_bytes(wide))
    for filt, resample in (("lanczos", LANCZOS), ("box", PIL.Image.Resampling.BOX)):
        _, dest = run(tmp_path, src, f"{filt}.zip", transform="center-crop", width=16, height=16, resize_filter=filt)
        images, _ = read_zip(dest)
        # rows [(75-50)//2, (75+50)//2) = [12, 62); cols [(61-40)//2, (61+40)//2) = [10, 50)
        exp_a = np.array(PIL.Image.fromarray(tall[12:62, :]).resize((16, 16), resample))
        exp_b = np.array(PIL.Image.fromarray(wide[:, 10:50]).resize((16, 16), resample))
        assert np.array_equal(images[0], exp_a) and np.array_equal(images[1], exp_b)


def test_center_crop_wide_matches_official_arithmetic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    img = smooth(70, 80, 3, 1)
    (src / "a.png").write_bytes(png_bytes(img))
    (src / "b.png").write_bytes(png_bytes(smooth(10, 20, 3, 2)))  # narrower than --width: dropped
    summary, dest = run(tmp_path, src, transform="center-crop-wide", width=32, height=24)
    images, _ = read_zip(dest)
    ch = int(np.round(32 * 70 / 80))  # 28 rows kept, then squeezed to 24
    exp = np.zeros((32, 32, 3), np.uint8)
    exp[4:28] = np.array(PIL.Image.fromarray(img[(70 - ch) // 2 : (70 + ch) // 2]).resize((32, 24), LANCZOS))
    assert len(images) == 1 and np.array_equal(images[0], exp)
    assert summary["skipped"] == {"too_small": 1}


def test_too_small_upscale_or_skip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    small = smooth(8, 8, 3, 1)
    (src / "a.png").write_bytes(png_bytes(small))
    (src / "b.png").write_bytes(png_bytes(smooth(40, 40, 3, 2)))
    summary, dest = run(tmp_path, src, width=32, height=32)
    assert summary["fixed"] == {"upscaled": 1} and summary["num_written"] == 2
    assert np.array_equal(read_zip(dest)[0][0], np.array(PIL.Image.fromarray(small).resize((32, 32), LANCZOS)))
    summary, _ = run(tmp_path, src, "s.zip", width=32, height=32, too_small="skip")
    assert summary["skipped"] == {"too_small": 1} and summary["num_written"] == 1


def test_exif_orientation_rule(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    arr = smooth(16, 32, 3, 1)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    PIL.Image.fromarray(arr).save(src / "a.png", exif=exif.tobytes())
    summary, dest = run(tmp_path, src, width=32, height=32)
    assert summary["fixed"]["exif_rotated"] == 1
    rotated = np.rot90(arr, k=-1)  # [32, 16] upright
    assert np.array_equal(read_zip(dest)[0][0], np.array(PIL.Image.fromarray(rotated).resize((32, 32), LANCZOS)))
    _, dest = run(tmp_path, src, "raw.zip", width=32, height=32, exif_transpose=False)
    assert np.array_equal(read_zip(dest)[0][0], np.array(PIL.Image.fromarray(arr).resize((32, 32), LANCZOS)))


# ---------------------------------------------------------------------------------------------
# Labels, ZIP source, folder destination


def test_labels_from_dataset_json_and_label_problems(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"im{i}.png").write_bytes(png_bytes(smooth(8, 8, 3, i)))
    labels = [["im0.png", 3], ["im1.png", 0], ["im2.png", "cat"], ["im4.png", 1], ["gone.png", 2]]
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    summary, dest = run(tmp_path, src)
    images, meta = read_zip(dest)
    assert meta == {
        "labels": [["00000/img00000000.png", 3], ["00000/img00000001.png", 0], ["00000/img00000002.png", 1]]
    }
    assert np.array_equal(images[2], smooth(8, 8, 3, 4))
    assert summary["skipped"] == {"bad_label": 1, "label_without_image": 1, "missing_label": 1}
    with pytest.raises(PrepareError):
        run(tmp_path, src, "f.zip", on_error="fail")


def test_zip_source_with_labels_and_folder_dest(tmp_path):
    src = tmp_path / "in.zip"
    arrays = [smooth(16, 16, 3, i) for i in range(3)]
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, a in enumerate(arrays):
            zf.writestr(f"d/{i}.png", png_bytes(a))
        zf.writestr("d/readme.md", "x")
        zf.writestr("dataset.json", json.dumps({"labels": [[f"d/{i}.png", i] for i in range(3)]}))
    summary, dest = run(tmp_path, src, "outdir", workers=2)
    assert summary["source_kind"] == "zip" and dest.is_dir()
    meta = json.loads((dest / "dataset.json").read_text())
    assert [lab for _, lab in meta["labels"]] == [0, 1, 2]
    for i, a in enumerate(arrays):
        assert np.array_equal(np.array(PIL.Image.open(dest / f"00000/img{i:08d}.png")), a)
    run(tmp_path, src, "outdir")  # a previous dataset folder is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(DestinationError, match="not replaced"):
        run(tmp_path, src, "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "user data"


def test_max_images_counts_written_images(tmp_path, mixed):
    src, _ = mixed
    summary, dest = run(tmp_path, src, max_images=3)
    assert summary["num_written"] == 3 and len(read_zip(dest)[0]) == 3


# ---------------------------------------------------------------------------------------------
# CIFAR and LMDB


def make_cifar(path: Path, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rs = np.random.RandomState(seed)
    all_data, all_labels = [], []
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: object) -> None:
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", {b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072})
        for b in range(1, 6):
            data = rs.randint(0, 256, (per_batch, 3072)).astype(np.uint8)
            labels = [int(x) for x in rs.randint(0, 10, per_batch)]
            add(f"data_batch_{b}", {b"batch_label": b"training batch", b"data": data, b"labels": labels})
            all_data.append(data)
            all_labels += labels
        add("test_batch", {b"data": rs.randint(0, 256, (2, 3072)).astype(np.uint8), b"labels": [0, 1]})
    return np.concatenate(all_data), np.array(all_labels)


def test_cifar10_pixels_and_labels(tmp_path):
    src = tmp_path / "cifar-10-python.tar.gz"
    data, labels = make_cifar(src)
    summary, dest = run(tmp_path, src, workers=2)
    images, meta = read_zip(dest)
    expected = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert summary["source_kind"] == "cifar10" and len(images) == 20
    assert all(np.array_equal(a, b) for a, b in zip(images, expected))
    assert [lab for _, lab in meta["labels"]] == labels.tolist()
    assert summary["num_classes"] == labels.max() + 1


def test_cifar_pickle_cannot_run_code(tmp_path):
    src = tmp_path / "cifar-10-python.tar.gz"
    payload = pickle.dumps(eval("__import__('os').system"))  # a global outside the allow-list
    with tarfile.open(src, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(Exception, match="blocked global"):
        run(tmp_path, src)


def test_lmdb_source(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    db = tmp_path / "cats_lmdb"
    a, b = smooth(16, 16, 3, 1), smooth(16, 16, 3, 2)
    jpg = io.BytesIO()
    PIL.Image.fromarray(b).save(jpg, "jpeg", quality=92)
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"0001", png_bytes(a))
        txn.put(b"0002", jpg.getvalue())
        txn.put(b"0003", b"not an image at all")
    env.close()
    summary, dest = run(tmp_path, db)
    images, meta = read_zip(dest)
    assert summary["source_kind"] == "lmdb" and meta == {"labels": None}
    assert np.array_equal(images[0], a)
    assert np.array_equal(images[1], np.array(PIL.Image.open(io.BytesIO(jpg.getvalue()))))
    assert summary["skipped"] == {"not_an_image": 1}


# ---------------------------------------------------------------------------------------------
# Config and CLI


def test_png_encoder_roundtrip():
    for arr in (smooth(70, 300, 3, 1), smooth(5, 7, 1, 2)):  # > 65535 bytes: several stored blocks
        assert np.array_equal(np.array(PIL.Image.open(io.BytesIO(encode_png(arr)))), arr)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"transform": "center-crop", "width": 32}, "needs both"),
        ({"width": 48, "height": 48}, "power of two"),
        ({"width": 32, "height": 64}, "square"),
        ({"channels": 2}, "channels"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(ConfigError, match=message):
        PrepareConfig(source="s", dest="d.zip", **kw)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--source", str(tmp_path / "missing"), "--dest", str(tmp_path / "o.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"python -m stages.prepare: error: source not found: {tmp_path / 'missing'}"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"")
    assert main(["--source", str(empty), "--dest", str(tmp_path / "o.zip"), "--no-progress"]) == 2
    assert "no images written" in capsys.readouterr().err
    assert not (tmp_path / "o.zip").exists()


def test_cli_help_and_params_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--resize-filter" in out.stdout
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(smooth(16, 16, 3, 1)))
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  source: {src}\n  dest: {tmp_path / 'p.zip'}\n  width: 64\n  height: 64\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-m", "stages.prepare", "--params", str(params), "--width", "8", "--height", "8"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert read_zip(tmp_path / "p.zip")[0][0].shape == (8, 8, 3)  # the flag beat params.yaml


def test_a_run_imports_no_torch_and_no_network_code(tmp_path):
    """prepare needs numpy and Pillow, no network code: torch costs ~250 MB more peak RSS in the command and in
    every forked worker, and seconds of CPU before the first image (issue 26: 301 MB instead of 49 MB, when
    models/__init__.py imported the image grid and with it torch). The atomic writes of `models.fileio` are the
    one models module it may load. A whole run, workers included, in a fresh interpreter."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"{i}.png").write_bytes(png_bytes(smooth(16, 16, 3, i)))
    argv = ["--params", os.devnull, "--source", str(src), "--dest", str(tmp_path / "o.zip"), "--workers", "2",
            "--no-progress"]
    script = (
        "import json, sys\n"
        "from stages.prepare.cli import main\n"
        f"code = main({argv!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('models', 'ops', 'torch', 'torchvision')\n"
        "               and m not in ('models', 'models.fileio'))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}
    assert len(read_zip(tmp_path / "o.zip")[0]) == 4
