"""Bad input, as a careless or hostile user gives it: every case ends in its exit code and one line on
stderr naming the culprit, no traceback, and nothing that existed before is changed.

Cases run in-process through each command's `main` (a traceback would surface as an exception here);
a few run as real processes to check the whole path, `python -m` included.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from stages.convert.cli import main as convert_main
from stages.demo_data.cli import main as demo_main
from stages.evaluate.cli import main as evaluate_main
from stages.export.cli import main as export_main
from stages.generate.cli import main as generate_main
from stages.prepare.cli import main as prepare_main
from stages.train.cli import main as train_main
from stages.validate.cli import main as validate_main

ROOT = Path(__file__).resolve().parents[1]
MAINS: dict[str, Callable[[list[str]], int]] = {
    "prepare": prepare_main, "validate": validate_main, "train": train_main, "evaluate": evaluate_main,
    "generate": generate_main, "export": export_main, "convert": convert_main, "demo_data": demo_main,
}


class _Reduce:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def dataset_zip(path: Path, size: tuple[int, int] = (16, 16), n: int = 4, labels: list | None = None) -> Path:
    rng = np.random.RandomState(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        names = []
        for i in range(n):
            names.append(f"00000/img{i:08d}.png")
            zf.writestr(names[-1], png((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8)))
        entries = None if labels is None else [[name, lab] for name, lab in zip(names, labels)]
        zf.writestr("dataset.json", json.dumps({"labels": entries}))
    return path


def cifar_tar(path: Path, batch: object) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(1, 6):
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Files of every kind the cases point at, built once."""
    d = tmp_path_factory.mktemp("hostile")
    good = dataset_zip(d / "good.zip")
    raw = good.read_bytes()
    (d / "truncated.zip").write_bytes(raw[: len(raw) // 2])
    corrupt = bytearray(raw)
    corrupt[60:90] = b"\xff" * 30  # inside the first PNG: the stored CRC no longer matches
    (d / "corrupt.zip").write_bytes(bytes(corrupt))
    (d / "notzip.zip").write_bytes(b"hello, I am text")
    dataset_zip(d / "res48.zip", size=(48, 48))
    dataset_zip(d / "nonsquare.zip", size=(16, 8))
    dataset_zip(d / "res1.zip", size=(1, 1))
    dataset_zip(d / "labels1e12.zip", labels=[0, 1, 10**12, 2])
    (d / "garbage.pkl").write_bytes(os.urandom(256))
    with open(d / "reduce.pkl", "wb") as fh:
        pickle.dump({"G": _Reduce(os.system, f"touch {d / 'pwned'}")}, fh)
    cifar = {b"data": np.zeros([10, 3072], np.uint8), b"labels": list(range(10))}
    full = cifar_tar(d / "cifar-10-python.tar.gz", cifar).read_bytes()
    (d / "trunc").mkdir()
    (d / "trunc" / "cifar-10-python.tar.gz").write_bytes(full[: len(full) // 3])
    (d / "evil").mkdir()
    cifar_tar(d / "evil" / "cifar-10-python.tar.gz", _Reduce(os.system, f"touch {d / 'pwned'}"))
    (d / "photos.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty ZIP of the user's: not a dataset
    (d / "mine").mkdir()
    (d / "mine" / "holiday.txt").write_text("the user's own file")
    (d / "params-bad.yaml").write_text("train:\n  kimg: [1\n")
    (d / "params-int.yaml").write_text("train: 5\n")
    (d / "src").mkdir()
    for i in range(2):
        (d / "src" / f"{i}.png").write_bytes(png(np.full([8, 8, 3], 40 * i, np.uint8)))
    return {"dir": d, "good": good}


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# (command, argv with {d} for the fixture folder, exit code, a word the one line must contain)
CASES = [
    ("train", ["--data", "{d}/truncated.zip"], 2, "truncated.zip"),
    ("train", ["--data", "{d}/corrupt.zip"], 2, "corrupt.zip"),
    ("train", ["--data", "{d}/notzip.zip"], 2, "not a readable ZIP"),
    ("train", ["--data", "{d}/res48.zip"], 2, "not a power of two"),
    ("train", ["--data", "{d}/nonsquare.zip"], 2, "not square"),
    ("train", ["--data", "{d}/res1.zip"], 2, "power of two"),
    ("train", ["--data", "{d}/missing.zip"], 2, "not found"),
    ("train", ["--data", "{d}/labels1e12.zip", "--cond"], 2, "outside [0, 65536)"),
    ("train", ["--data", "{d}/good.zip", "--resume", "{d}/garbage.pkl"], 2, "garbage.pkl"),
    ("train", ["--data", "{d}/good.zip", "--resume", "{d}/reduce.pkl"], 2, "system"),
    ("train", ["--data", "{d}/good.zip", "--params", "{d}/params-bad.yaml"], 2, "not valid YAML"),
    ("train", ["--data", "{d}/good.zip", "--params", "{d}/params-int.yaml"], 2, "must be a mapping"),
    ("train", ["--data", "{d}/good.zip", "--kimg", "nan"], 2, "finite"),
    ("train", ["--data", "{d}/good.zip", "--cfg", "huge"], 2, "unknown preset"),
    ("train", ["--data", "{d}/good.zip", "--augpipe", "xyz"], 2, "augpipe"),
    ("validate", ["--dataset", "{d}/notzip.zip", "--out", "{d}/out/v.json"], 2, "notzip.zip"),
    ("validate", ["--dataset", "{d}/good.zip", "--num-classes", "100000000", "--out", "{d}/out/v.json"], 2,
     "num_classes"),
    ("prepare", ["--source", "{d}/trunc/cifar-10-python.tar.gz", "--dest", "{d}/out/c.zip"], 2, "truncated"),
    ("prepare", ["--source", "{d}/evil/cifar-10-python.tar.gz", "--dest", "{d}/out/c.zip"], 2, "system"),
    ("prepare", ["--source", "{d}/src", "--dest", "{d}/photos.zip"], 2, "not a dataset ZIP"),
    ("prepare", ["--source", "{d}/src", "--dest", "{d}/mine"], 2, "not replaced"),
    ("prepare", ["--source", "{d}/src", "--dest", "{d}/out/x.zip", "--width", "48", "--height", "48"], 2,
     "power of two"),
    ("evaluate", ["--network", "{d}/garbage.pkl", "--metrics", "fid50k_full"], 2, "garbage.pkl"),
    ("evaluate", ["--network", "{d}/reduce.pkl", "--metrics", "fid50k_full"], 2, "system"),
    ("generate", ["images", "--network", "{d}/garbage.pkl", "--seeds", "0"], 2, "garbage.pkl"),
    ("generate", ["images", "--network", "{d}/good.zip", "--seeds", "0-999999999"], 2, "100,000"),
    ("generate", ["images", "--network", "{d}/good.zip", "--seeds", "0", "--trunc", "inf"], 2, "finite"),
    ("generate", ["video", "--network", "{d}/good.zip", "--grid", "0x2"], 2, "COLSxROWS"),
    ("generate", ["--bogus", "1"], 2, "the command comes first"),
    ("export", ["--network", "{d}/reduce.pkl", "--outdir", "{d}/out/exp"], 2, "system"),
    ("export", ["render", "--model", "{d}/garbage.pkl", "--outdir", "{d}/out/r"], 2, "garbage.pkl"),
    ("convert", ["--source", "{d}/reduce.pkl", "--dest", "{d}/out/c.safetensors"], 2, "system"),
    ("demo_data", ["--out", "{d}/mine"], 2, "not replaced"),
]


@pytest.mark.parametrize("command, argv, code, needle", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_one_line_exit_code_and_nothing_changed(world, command, argv, code, needle, capsys, monkeypatch):
    d = world["dir"]
    monkeypatch.chdir(d)
    before = fingerprint(d)
    rc = MAINS[command]([a.replace("{d}", str(d)) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert rc == code, err
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (d / "pwned").exists()
    after = fingerprint(d)
    # Only out/ (the cases' own destinations: a failed run's report and log) may change.
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == \
        {k: v for k, v in before.items() if not k.startswith("out/")}


def test_disk_full_and_read_only_destination(world, tmp_path, monkeypatch, capsys):
    """ENOSPC mid-write and EROFS: exit 1, one line, the earlier dataset, report and log all kept."""
    from stages.prepare import destination

    dest = tmp_path / "data.zip"
    assert prepare_main(["--source", str(world["dir"] / "src"), "--dest", str(dest), "--no-progress"]) == 0
    capsys.readouterr()
    before = fingerprint(tmp_path)
    log_before = Path(str(dest) + ".log").read_text()

    def full(self, name, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp))

    monkeypatch.setattr(destination.ZipDestination, "add", full)
    assert prepare_main(["--source", str(world["dir"] / "src"), "--dest", str(dest), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    after = fingerprint(tmp_path)
    assert {k: after[k] for k in before if k != "data.zip.log"} == {k: v for k, v in before.items()
                                                                    if k != "data.zip.log"}
    assert Path(str(dest) + ".log").read_text().startswith(log_before)  # appended, not lost
    failed = json.loads(Path(str(dest) + ".report.failed.json").read_text())
    assert failed["status"] == "failed" and "No space left" in failed["error"]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / "x.zip.log"))

    monkeypatch.setattr("logging.FileHandler.__init__", read_only)
    assert prepare_main(["--source", str(world["dir"] / "src"), "--dest", str(tmp_path / "ro" / "x.zip")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and "x.zip.log" in err[0]


def test_debug_shows_the_traceback(world, capsys):
    with pytest.raises(Exception, match="not a readable ZIP"):
        train_main(["--data", str(world["dir"] / "notzip.zip"), "--debug"])


def test_demo_folder_is_replaced_only_when_ours(tmp_path, capsys):
    out = tmp_path / "digits"
    assert demo_main(["--out", str(out)]) == 0
    first = len(list(out.rglob("*.png")))
    assert demo_main(["--out", str(out)]) == 0  # our own folder (marker): replaced
    assert len(list(out.rglob("*.png"))) == first == 1797
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"mine")
    assert demo_main(["--out", str(mine)]) == 2
    assert (mine / "a.jpg").read_bytes() == b"mine"
    assert demo_main(["--out", str(mine), "--force"]) == 0 and not (mine / "a.jpg").exists()


def test_real_processes_print_one_line(world):
    """The whole path through `python -m`, as a user runs it (no traceback from interpreter exit either)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for argv, code in [(["stages.train", "--data", str(world["dir"] / "notzip.zip")], 2),
                       (["stages.generate", "images", "--network", str(world["dir"] / "garbage.pkl")], 2)]:
        out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=120)
        assert out.returncode == code and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
