"""Native snapshots: round trip, metadata, atomic writes, strict loading, URL cache and offline errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import models.serialization.snapshot as snapshot_mod
from models import (
    Discriminator,
    Generator,
    SnapshotError,
    StateMismatchError,
    load_network,
    load_snapshot,
    save_snapshot,
)
from models.serialization.loading import NetworkDownloadError
from models.serialization.snapshot import METADATA_KEY, read_header


def _tiny_g(c_dim: int, channel_max: int = 16) -> Generator:
    return Generator(z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=16, img_channels=3,
                     mapping_kwargs={"num_layers": 2},
                     synthesis_kwargs={"channel_base": 256, "channel_max": channel_max})


def _tiny_d(c_dim: int) -> Discriminator:
    return Discriminator(c_dim, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return module.eval().requires_grad_(False)


def _nets(c_dim: int) -> dict[str, torch.nn.Module]:
    return {"G": _randomize(_tiny_g(c_dim), 1), "D": _randomize(_tiny_d(c_dim), 2),
            "G_ema": _randomize(_tiny_g(c_dim), 3)}


def _inputs(c_dim: int):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn([3, 8], generator=gen)
    c = torch.randn([3, c_dim], generator=gen) if c_dim else torch.zeros([3, 0])
    return z, c


@pytest.mark.parametrize("c_dim", [0, 3])
def test_round_trip_identical_outputs(tmp_path, c_dim):
    nets = _nets(c_dim)
    path = save_snapshot(tmp_path / "net.safetensors", nets)
    data = load_network(path)
    z, c = _inputs(c_dim)
    for key in ("G", "G_ema"):
        assert torch.equal(data[key](z, c, noise_mode="const"), nets[key](z, c, noise_mode="const"))
        assert torch.equal(data[key].mapping(z, c, truncation_psi=0.5), nets[key].mapping(z, c, truncation_psi=0.5))
    img = nets["G"](z, c, noise_mode="const")
    assert torch.equal(data["D"](img, c), nets["D"](img, c))
    for key in ("G", "D", "G_ema"):
        net = data[key]
        assert type(net) is type(nets[key]) and not net.training
        assert all(not p.requires_grad for p in net.parameters())
        assert all(t.device.type == "cpu" for t in net.state_dict().values())
        assert net.init_kwargs == nets[key].init_kwargs


def test_metadata_round_trip(tmp_path):
    nets = _nets(3)
    tsk = {"class_name": "ImageFolderDataset", "path": "data/datasets/x.zip", "resolution": 16, "use_labels": True}
    meta = {"kimg": 120, "git_commit": "abc123", "nested": {"p": 0.25, "list": [1, 2]}}
    # A tensor group: state of a class this project does not provide comes back as the same dict.
    extra = {"class_name": "ExtraState", "init_kwargs": {"xflip": 1.0}, "state_dict": {"p": torch.tensor(0.5)}}
    path = save_snapshot(tmp_path / "net.safetensors", {**nets, "extra": extra},
                         training_set_kwargs=tsk, meta=meta)
    header = read_header(path)
    assert header["format"] == "sg2ada-mlops.snapshot" and header["version"] == 1
    assert header["groups"]["G"]["class_name"] == "Generator"
    assert header["groups"]["G"]["init_kwargs"] == nets["G"].init_kwargs

    data = load_snapshot(path)
    assert data["training_set_kwargs"] == tsk
    assert data["meta"] == meta
    assert data["extra"]["class_name"] == "ExtraState" and data["extra"]["init_kwargs"] == {"xflip": 1.0}
    assert float(data["extra"]["state_dict"]["p"]) == 0.5
    # load_network keeps to the official result keys.
    assert set(load_network(path)) == {"G", "D", "G_ema", "training_set_kwargs"}

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "G.mapping.fc0.weight" in keys and "G_ema.synthesis.b4.const" in keys and "extra.p" in keys


def test_none_groups_round_trip(tmp_path):
    path = save_snapshot(tmp_path / "g.safetensors", {"G_ema": _tiny_g(0), "augment_pipe": None})
    data = load_snapshot(path)
    assert data["augment_pipe"] is None and isinstance(data["G_ema"], Generator)


def _no_temp_files(directory) -> bool:
    return sorted(p.name for p in directory.iterdir()) == ["net.safetensors"]


def test_atomic_write_failure_at_rename_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "net.safetensors"
    first = _nets(0)
    save_snapshot(path, first, meta={"kimg": 1})
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_snapshot(path, _nets(3), meta={"kimg": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    assert load_snapshot(path)["meta"] == {"kimg": 1}


def test_atomic_write_failure_mid_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "net.safetensors"
    save_snapshot(path, _nets(0))
    before = path.read_bytes()

    def half_writer(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)  # a partial file, as a kill mid-write would leave
        raise KeyboardInterrupt

    monkeypatch.setattr(snapshot_mod, "save_file", half_writer)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(path, _nets(3))
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def _rewrite(path, out, tensors=None, header_update=None):
    """Copy a snapshot with its tensors or JSON header altered (what a stale or foreign file looks like)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    header = json.loads(metadata[METADATA_KEY])
    if header_update:
        header_update(header)
    metadata[METADATA_KEY] = json.dumps(header)
    save_file(tensors if tensors is not None else load_file(str(path)), str(out), metadata=metadata)
    return out


def test_strict_load_names_differing_tensors(tmp_path):
    path = save_snapshot(tmp_path / "net.safetensors", {"G": _tiny_g(0)})
    tensors = load_file(str(path))
    tensors.pop("G.mapping.fc1.bias")
    tensors["G.synthesis.extra_tensor"] = torch.zeros(2)
    bad = _rewrite(path, tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(StateMismatchError) as info:
        load_snapshot(bad)
    msg = str(info.value)
    assert "missing (1): mapping.fc1.bias" in msg and "unexpected (1): synthesis.extra_tensor" in msg

    def smaller(header):
        header["groups"]["G"]["init_kwargs"]["synthesis_kwargs"]["channel_max"] = 8

    bad = _rewrite(path, tmp_path / "bad2.safetensors", header_update=smaller)
    with pytest.raises(StateMismatchError, match=r"shape mismatch .*synthesis\.b4\.const: file \(16, 4, 4\)"):
        load_snapshot(bad)


def test_refuses_unknown_version_and_foreign_files(tmp_path):
    path = save_snapshot(tmp_path / "net.safetensors", {"G": _tiny_g(0)})

    def future(header):
        header["version"] = 99

    with pytest.raises(SnapshotError, match=r"version 99 is not supported.*newer"):
        load_snapshot(_rewrite(path, tmp_path / "v99.safetensors", header_update=future))

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(SnapshotError, match="not a sg2ada-mlops snapshot"):
        load_network(foreign)

    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"hello world, not a network")
    with pytest.raises(SnapshotError, match="neither a network pickle nor a safetensors"):
        load_network(junk)


def test_format_detected_by_content_not_extension(tmp_path):
    path = save_snapshot(tmp_path / "looks-like.pkl", {"G": _tiny_g(0)})
    assert isinstance(load_network(path)["G"], Generator)


def test_unregistered_class_refused(tmp_path):
    with pytest.raises(SnapshotError, match="not registered"):
        save_snapshot(tmp_path / "x.safetensors", {"G": torch.nn.Linear(2, 2)})
    assert not any(tmp_path.iterdir())


def test_file_url_cached_once(tmp_path, monkeypatch):
    nets = _nets(0)
    src = save_snapshot(tmp_path / "src" / "net.safetensors", nets)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SG2_CACHE_DIR", str(cache))
    first = load_network(src.as_uri())
    assert len(list(cache.iterdir())) == 1
    src.unlink()  # the second load must come from the cache, never the source
    second = load_network(src.as_uri())
    z, c = _inputs(0)
    assert torch.equal(first["G"](z, c, noise_mode="const"), second["G"](z, c, noise_mode="const"))
    assert len(list(cache.iterdir())) == 1


def test_offline_download_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setattr(requests, "get", offline)
    cache = tmp_path / "cache"
    with pytest.raises(NetworkDownloadError, match=r"https://example\.invalid/ffhq\.pkl.*offline"):
        load_network("https://example.invalid/ffhq.pkl", cache_dir=cache)
    assert list(cache.iterdir()) == []  # no partial download left behind


def test_http_download_written_once(tmp_path, monkeypatch):
    payload = save_snapshot(tmp_path / "net.safetensors", {"G": _tiny_g(0)}).read_bytes()
    calls = []

    class FakeResponse:
        def __init__(self):
            self.headers = {"content-length": str(len(payload))}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def raise_for_status(self):
            pass

        def iter_content(self, chunk_size):
            for i in range(0, len(payload), chunk_size):
                yield payload[i:i + chunk_size]

    def fake_get(url, **kwargs):
        calls.append(url)
        return FakeResponse()

    monkeypatch.setattr(requests, "get", fake_get)
    url = "https://example.invalid/nets/net.safetensors"
    for _ in range(2):
        assert isinstance(load_network(url, cache_dir=tmp_path / "cache")["G"], Generator)
    assert calls == [url]


def test_run_folder_means_newest_snapshot(tmp_path):
    old, new = _nets(0), _nets(0)
    save_snapshot(tmp_path / "network-snapshot-000002.safetensors", old)
    save_snapshot(tmp_path / "network-snapshot-000010.safetensors", new)
    (tmp_path / "fakes000010.png").write_bytes(b"")
    loaded = load_network(tmp_path)["G_ema"]
    for name, t in new["G_ema"].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no network-snapshot"):
        load_network(empty)


# ----------------------------------------------------------------------------------------------------
# Named pretrained networks (official names -> NVIDIA URLs), offline.


def test_named_networks_resolve_to_official_urls(tmp_path, monkeypatch):
    from models.serialization.loading import PRETRAINED, resolve_network_path

    sg2ada = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
    ngc = "https://api.ngc.nvidia.com/v2/models/nvidia/research/"
    assert resolve_network_path("ffhq256") == (
        sg2ada + "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl")
    assert resolve_network_path("celebahq256") == (
        sg2ada + "transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl")
    assert resolve_network_path("lsundog256").endswith("/lsundog-res256-paper256-kimg100000-noaug.pkl")
    assert resolve_network_path("stylegan3-r-afhqv2-512x512") == (
        ngc + "stylegan3/versions/1/files/stylegan3-r-afhqv2-512x512.pkl")
    assert resolve_network_path("stylegan2-cifar10-32x32") == (
        ngc + "stylegan2/versions/1/files/stylegan2-cifar10-32x32.pkl")
    assert resolve_network_path("metfaces") == sg2ada + "metfaces.pkl"
    assert {n for n in PRETRAINED if n.startswith("stylegan3-")} == {
        f"stylegan3-{c}-{d}" for c in "tr" for d in ("ffhq-1024x1024", "ffhqu-1024x1024", "ffhqu-256x256",
                                                     "metfaces-1024x1024", "metfacesu-1024x1024", "afhqv2-512x512")}
    assert all(url.startswith("https://") and url.endswith(".pkl") for url in PRETRAINED.values())
    # A local file or folder of the same name wins; a `.pkl` name stays a file name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ffhq256").mkdir()
    save_snapshot(tmp_path / "ffhq256" / "network-snapshot-000001.safetensors", {"G": _tiny_g(0)})
    assert resolve_network_path("ffhq256") == str(Path("ffhq256") / "network-snapshot-000001.safetensors")
    assert resolve_network_path("ffhq.pkl") == "ffhq.pkl"


def test_unknown_network_name_lists_the_known_ones(tmp_path, monkeypatch):
    from models.serialization.loading import UnknownNetworkError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownNetworkError) as info:
        load_network("ffhq2048")
    msg = str(info.value)
    assert "ffhq2048" in msg and "not found" in msg and "\n" not in msg
    assert "ffhq256" in msg and "stylegan3-t-ffhq-1024x1024" in msg and "lsundog256" in msg
    with pytest.raises(FileNotFoundError) as info:  # a path is a path: no list of names
        load_network("nets/ffhq2048.pkl")
    assert "known" not in str(info.value) and not isinstance(info.value, UnknownNetworkError)


def test_named_network_in_cache_loads_without_network(tmp_path, monkeypatch):
    from models import load_generator
    from models.serialization.loading import PRETRAINED, cache_path

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setattr(requests, "get", offline)
    cache = tmp_path / "cache"
    nets = _nets(0)
    target = cache_path(PRETRAINED["stylegan3-t-afhqv2-512x512"], cache)
    assert target.parent == cache and target.name.endswith("_stylegan3-t-afhqv2-512x512.pkl")
    save_snapshot(target, nets)  # a stand-in under the name's cache file (content decides the format)
    data = load_network("stylegan3-t-afhqv2-512x512", cache_dir=cache)
    z, c = _inputs(0)
    assert torch.equal(data["G_ema"](z, c, noise_mode="const"), nets["G_ema"](z, c, noise_mode="const"))
    monkeypatch.setenv("SG2_CACHE_DIR", str(cache))  # what --network / --resume use
    G = load_generator("stylegan3-t-afhqv2-512x512")
    assert torch.equal(G(z, c, noise_mode="const"), nets["G_ema"](z, c, noise_mode="const"))
    # A name whose file is not cached: the offline error names the name, the URL and where to put the file.
    with pytest.raises(NetworkDownloadError) as info:
        load_network("ffhq512", cache_dir=cache)
    msg = str(info.value)
    assert msg.startswith("ffhq512: ") and PRETRAINED["ffhq512"] in msg and "offline" in msg
    assert str(cache_path(PRETRAINED["ffhq512"], cache)) in msg and "\n" not in msg
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # no partial download left behind
