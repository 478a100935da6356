"""The explorer's renderer: one request is one image (a seed, a point between two seeds, or a style mix), and the
requests a `DynamicBatcher` gathers go through the generator together.

A request names a network of the page (0, or 1 for the side-by-side one) and a snapshot of it, then the image:

    seed, psi, cutoff, class, noise     as `generate images` (z by the official seed rule)
    seed2, t                            w = lerp(w(seed), w(seed2), t): the interpolation panel
    mix, mix_lo, mix_hi                 ws[mix_lo..mix_hi] from seed `mix`: one cell of the style-mixing panel
    tx, ty, rot                         StyleGAN3: translate (image sizes) and rotate (degrees), as gen_images.py
    view                                image, or fft: the image beside its power spectrum (official visualizer)

Requests that differ only in seed, psi, cutoff, class, interpolation or mixing share one synthesis call; the
noise mode and the StyleGAN3 transform (one buffer for the whole batch) split batches.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common.images import nhwc, to_uint8
from stages.common.seeds import seeds_to_z
from stages.generate.config import GenerateError
from stages.generate.explore_sources import Source, snapshot_kimg
from stages.generate.images import make_transform
from stages.serving.batching import RequestError
from stages.serving.http import parse_number, parse_seed

QUERY_KEYS = ("net", "snap", "seed", "psi", "cutoff", "class", "noise", "tx", "ty", "rot", "seed2", "t", "mix",
              "mix_lo", "mix_hi", "view")
NOISE_MODES = ("const", "random", "none")
VIEWS = ("image", "fft")
PSI_LIMIT = 10.0        # |psi| beyond this is no image anyone wants; the slider spans -1..2
TRANSLATE_LIMIT = 4.0   # image sizes
ROTATE_LIMIT = 360.0    # degrees

# matplotlib's viridis at 0, 1/8, ..., 1 (the official visualizer's FFT colour map), interpolated linearly.
VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                    [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float32)


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    net: int = 0                   # 0: --network, 1: --compare
    snap: str = ""                 # snapshot name of a run folder ("" = the network's default)
    seed: int = 0
    psi: float = 1.0
    cutoff: int | None = None      # truncate the first N ws only
    class_idx: int | None = None
    noise: str = "const"
    tx: float = 0.0
    ty: float = 0.0
    rot: float = 0.0
    seed2: int | None = None       # interpolation end seed, with t in [0, 1]
    t: float = 0.0
    mix: int | None = None         # style mixing: ws[mix_lo..mix_hi] come from this seed
    mix_lo: int = 0
    mix_hi: int = 0
    view: str = "image"

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with the same key can share one synthesis call."""
        return (self.net, self.snap, self.noise, self.tx, self.ty, self.rot)


class GeneratorCache:
    """Loaded generators (or ONNX renderers) by file, the `size` most recently used; loads one at a time."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = size, device
        self._items: collections.OrderedDict[Path, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Any:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
            model = load_model(path, self.device)
            self._items[path] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return model


class OnnxGenerator:
    """An exported generator graph (inputs z, [c], truncation_psi; output img_uint8 NHWC or img NCHW) through
    onnxruntime: what a registry version holds when its snapshot is not on this machine."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"] if device.type == "cpu" else ort.get_available_providers()
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
            raise GenerateError(f"{path}: not a loadable ONNX graph ({type(exc).__name__})") from None
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        if "z" not in shapes or "truncation_psi" not in shapes:
            raise GenerateError(f"{path}: not a generator graph (inputs {sorted(shapes)}; need z, truncation_psi)")
        self.z_dim = int(shapes["z"][1])
        self.c_dim = int(shapes["c"][1]) if "c" in shapes else 0
        self.output = self.session.get_outputs()[0].name

    def render(self, seeds: Sequence[int], psi: Sequence[float], classes: Sequence[int] | None) -> np.ndarray:
        """uint8 [N, H, W, C] for the seeds (z by the official rule), one psi and class each."""
        feeds = {"z": seeds_to_z(list(seeds), self.z_dim).numpy(),
                 "truncation_psi": np.asarray(psi, np.float32).reshape(-1, 1)}
        if self.c_dim:
            feeds["c"] = np.eye(self.c_dim, dtype=np.float32)[np.asarray(classes if classes is not None else
                                                                        [0] * len(seeds))]
        out = self.session.run([self.output], feeds)[0]
        return out if out.dtype == np.uint8 else nhwc(to_uint8(torch.from_numpy(out)))


def load_model(path: Path, device: torch.device) -> Any:
    if path.suffix == ".onnx":
        return OnnxGenerator(path, device)
    from models.serialization.loading import load_generator

    return load_generator(path, device)


def _transform_buffer(G: Any) -> torch.Tensor | None:
    t = getattr(getattr(getattr(G, "synthesis", None), "input", None), "transform", None)
    return t if isinstance(t, torch.Tensor) else None


def describe(model: Any) -> dict[str, Any]:
    """What the page needs to know to draw its controls: sizes, and which controls this generator answers."""
    if not isinstance(model, torch.nn.Module):  # an ONNX graph: seed, psi and class only
        return {"family": "ONNX graph", "z_dim": model.z_dim, "c_dim": model.c_dim, "num_ws": 0,
                "features": {"truncation": True, "cutoff": False, "noise": False, "interpolation": False,
                             "mixing": False, "transform": False},
                "notes": ["an exported ONNX graph: seed, truncation and class only (its cutoff is fixed at export)"]}
    G = model
    with torch.no_grad():  # does psi move ws at all? FastGAN's mapping ignores it (see FastGANMapping)
        z = seeds_to_z([0], G.z_dim).to(next(G.parameters()).device)
        c = torch.zeros([1, G.c_dim], device=z.device)
        if G.c_dim:
            c[:, 0] = 1
        truncates = not torch.equal(G.mapping(z, c, truncation_psi=1.0), G.mapping(z, c, truncation_psi=0.0))
    notes = []
    if not truncates:
        notes.append("truncation has no effect on this network (its mapping ignores psi)")
    if G.num_ws <= 1:
        notes.append("one w drives every layer (num_ws 1): there are no per-layer styles to mix")
    transform = _transform_buffer(G) is not None
    if transform:
        notes.append("StyleGAN3: translate and rotate the input; no noise inputs")
    return {"family": type(G).__name__, "z_dim": int(G.z_dim), "c_dim": int(G.c_dim), "num_ws": int(G.num_ws),
            "resolution": int(G.img_resolution), "channels": int(G.img_channels),
            "features": {"truncation": truncates, "cutoff": truncates and G.num_ws > 1, "noise": not transform,
                         "interpolation": True, "mixing": G.num_ws > 1, "transform": transform},
            "notes": notes}


class Network:
    """A source of the page, with the description of its default snapshot (snapshots of one run share it)."""

    def __init__(self, index: int, source: Source, cache: GeneratorCache) -> None:
        self.index, self.source, self.cache = index, source, cache
        model = cache.get(source.path(None))
        self.meta = describe(model)
        if "resolution" not in self.meta:  # ONNX: from a render
            img = model.render([0], [1.0], [0] if model.c_dim else None)
            self.meta.update(resolution=int(img.shape[1]), channels=int(img.shape[3]))

    def info(self) -> dict[str, Any]:
        self.source.refresh()
        return {"index": self.index, "source": self.source.spec, "kind": self.source.kind, "note": self.source.note,
                "snapshots": [{"name": n, "kimg": snapshot_kimg(n)} for n in self.source.files],
                "snapshot": self.source.default, **self.meta}


def parse_request(values: dict[str, Any], networks: Sequence[Network]) -> ImageRequest:
    """Query-string or JSON values -> ImageRequest, checked against the network they name (RequestError)."""
    unknown = sorted(str(k)[:40] for k in values if k not in QUERY_KEYS)
    if unknown:
        raise RequestError(f"unknown parameter {unknown[0]!r}; known: {', '.join(QUERY_KEYS)}")
    v = {k: x for k, x in values.items() if x is not None and x != ""}
    net_text = str(v.get("net", "0"))
    if net_text not in [str(i) for i in range(len(networks))]:
        raise RequestError(f"net must be 0{' or 1 (the --compare network)' if len(networks) > 1 else ''}")
    net_index = int(net_text)
    net = networks[net_index]
    meta, feats = net.meta, net.meta["features"]
    snap = v.get("snap", "")
    if not isinstance(snap, str) or len(snap) > 200:
        raise RequestError("snap must be a snapshot name from /api/info")
    try:
        net.source.path(snap)
    except KeyError:
        raise RequestError(f"no snapshot {snap[:80]!r} in {net.source.spec}; see /api/info", 404) from None

    def integer(key: str, lo: int, hi: int) -> int:
        x = parse_number(v[key], key, lo, hi)
        if x != int(x):
            raise RequestError(f"{key} must be an integer")
        return int(x)

    def refuse(key: str, feature: str) -> None:
        if key in v and not feats[feature]:
            raise RequestError(f"{key}: {meta['family']} has no {feature} control")

    for key, feature in (("cutoff", "cutoff"), ("tx", "transform"), ("ty", "transform"), ("rot", "transform"),
                         ("seed2", "interpolation"), ("mix", "mixing")):
        refuse(key, feature)
    if "noise" in v and v["noise"] != "const":
        refuse("noise", "noise")
    c_dim, num_ws = meta["c_dim"], max(meta["num_ws"], 1)
    if c_dim and "class" not in v:
        raise RequestError(f"conditional network: give class (0-{c_dim - 1})")
    if not c_dim and "class" in v:
        raise RequestError("the network is unconditional: drop class")
    if "seed" not in v:
        raise RequestError("give seed (an integer in [0, 2**32))")
    noise = v.get("noise", "const")
    if noise not in NOISE_MODES:
        raise RequestError(f"noise must be one of {', '.join(NOISE_MODES)}")
    view = v.get("view", "image")
    if view not in VIEWS:
        raise RequestError(f"view must be one of {', '.join(VIEWS)}")
    if ("seed2" in v) != ("t" in v):
        raise RequestError("interpolation takes seed2 and t together")
    if "mix" in v and ("mix_lo" not in v or "mix_hi" not in v):
        raise RequestError("style mixing takes mix, mix_lo and mix_hi together")
    if "mix" not in v and ("mix_lo" in v or "mix_hi" in v):
        raise RequestError("mix_lo and mix_hi need mix (the column seed)")
    req = ImageRequest(
        net=net_index, snap=snap, seed=parse_seed(v["seed"]),
        psi=parse_number(v.get("psi", 1), "psi", -PSI_LIMIT, PSI_LIMIT),
        cutoff=integer("cutoff", 0, num_ws) if "cutoff" in v else None,
        class_idx=integer("class", 0, c_dim - 1) if c_dim else None, noise=noise,
        tx=parse_number(v.get("tx", 0), "tx", -TRANSLATE_LIMIT, TRANSLATE_LIMIT),
        ty=parse_number(v.get("ty", 0), "ty", -TRANSLATE_LIMIT, TRANSLATE_LIMIT),
        rot=parse_number(v.get("rot", 0), "rot", -ROTATE_LIMIT, ROTATE_LIMIT),
        seed2=parse_seed(v["seed2"], "seed2") if "seed2" in v else None,
        t=parse_number(v.get("t", 0), "t", 0, 1),
        mix=parse_seed(v["mix"], "mix") if "mix" in v else None,
        mix_lo=integer("mix_lo", 0, num_ws - 1) if "mix" in v else 0,
        mix_hi=integer("mix_hi", 0, num_ws - 1) if "mix" in v else 0, view=view)
    if req.mix_lo > req.mix_hi:
        raise RequestError("mix_lo must be <= mix_hi")
    return req


class ExploreRenderer:
    """Renders batches of ImageRequests (all of one `batch_key`); the batcher's worker is its only caller in
    batched mode, the lock keeps unbatched callers (window 0) from sharing the transform buffer."""

    def __init__(self, networks: Sequence[Network], precision: str = "fp32") -> None:
        self.networks, self.precision = networks, precision
        self._lock = threading.Lock()

    def __call__(self, reqs: list[ImageRequest]) -> list[np.ndarray]:
        """One image per request: float32 [C, H, W] in about [-1, 1] (PyTorch) or uint8 [H, W, C] (ONNX)."""
        first = reqs[0]
        net = self.networks[first.net]
        model = net.cache.get(net.source.path(first.snap))
        with self._lock:
            if not isinstance(model, torch.nn.Module):
                return self._onnx(model, reqs)
            return self._torch(model, reqs)

    @staticmethod
    def _onnx(model: OnnxGenerator, reqs: list[ImageRequest]) -> list[np.ndarray]:
        classes = None if reqs[0].class_idx is None else [r.class_idx for r in reqs]
        return list(model.render([r.seed for r in reqs], [r.psi for r in reqs], classes))

    @torch.no_grad()
    def _torch(self, G: torch.nn.Module, reqs: list[ImageRequest]) -> list[np.ndarray]:
        from models.precision import generator_precision

        device = next(G.parameters()).device
        # Every w the batch needs, once: (seed, psi, cutoff, class) -> row; one mapping call per (psi, cutoff).
        rows: dict[tuple[Any, ...], int] = {}
        for r in reqs:
            for seed in (r.seed, r.seed2, r.mix):
                if seed is not None:
                    rows.setdefault((seed, r.psi, r.cutoff, r.class_idx), len(rows))
        keys = list(rows)
        w_rows: list[torch.Tensor | None] = [None] * len(keys)
        groups: dict[tuple[float, int | None], list[int]] = collections.defaultdict(list)
        for i, (_, psi, cutoff, _) in enumerate(keys):
            groups[(psi, cutoff)].append(i)
        for (psi, cutoff), idx in groups.items():
            z = seeds_to_z([keys[i][0] for i in idx], G.z_dim).to(device)
            c = torch.zeros([len(idx), G.c_dim], device=device)
            for j, i in enumerate(idx):
                if keys[i][3] is not None:
                    c[j, keys[i][3]] = 1
            ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)  # [n, num_ws, w_dim]
            for j, i in enumerate(idx):
                w_rows[i] = ws[j]

        def w_of(seed: int, r: ImageRequest) -> torch.Tensor:
            return w_rows[rows[(seed, r.psi, r.cutoff, r.class_idx)]]  # type: ignore[return-value]

        batch = []
        for r in reqs:
            w = w_of(r.seed, r)
            if r.seed2 is not None:
                w = torch.lerp(w, w_of(r.seed2, r), r.t)
            if r.mix is not None:
                w = w.clone()
                w[r.mix_lo : r.mix_hi + 1] = w_of(r.mix, r)[r.mix_lo : r.mix_hi + 1]
            batch.append(w)
        ws = torch.stack(batch)  # [N, num_ws, w_dim]
        transform = _transform_buffer(G)
        if transform is not None:  # the inverse of the user's transform, as gen_images.py sets it per image
            first = reqs[0]
            transform.copy_(torch.from_numpy(np.linalg.inv(make_transform((first.tx, first.ty), first.rot))))
        with generator_precision(self.precision, G, device):
            img = G.synthesis(ws, noise_mode=reqs[0].noise)  # [NCHW]
        return list(img.float().cpu().numpy())


def to_image(out: np.ndarray) -> np.ndarray:
    """A renderer output as uint8 [H, W, C] (floats by the official rule)."""
    if out.dtype == np.uint8:
        return out
    return nhwc(to_uint8(torch.from_numpy(out[None])))[0]


def spectrum(out: np.ndarray, range_db: float = 50.0, beta: float = 8.0) -> np.ndarray:
    """Power spectrum of an image, centred, in dB around its mean, through viridis: uint8 [H, W, 3].

    The official visualizer's FFT view: subtract the mean per channel, apply a Kaiser window (`beta`) along both
    axes, sum |FFT|^2 over channels, roll the zero frequency to the centre, 10 log10(P / mean P), and map
    [-range_db, range_db] onto the colour map.
    """
    sig = out.astype(np.float32) if out.dtype != np.uint8 else out.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    h, w = sig.shape[1:]  # sig: [CHW]
    sig = sig - sig.mean(axis=(1, 2), keepdims=True)
    sig = sig * np.kaiser(h, beta)[None, :, None] * np.kaiser(w, beta)[None, None, :]
    power = (np.abs(np.fft.fft2(sig)) ** 2).sum(axis=0)  # [HW]
    power = np.roll(power, (h // 2, w // 2), axis=(0, 1))
    db = 10 * np.log10(power / max(float(power.mean()), 1e-30) + 1e-30)
    x = np.clip((db / range_db + 1) / 2, 0, 1) * (len(VIRIDIS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(VIRIDIS) - 2)
    frac = (x - lo)[..., None]
    rgb = VIRIDIS[lo] * (1 - frac) + VIRIDIS[lo + 1] * frac
    return (rgb + 0.5).astype(np.uint8)


def with_spectrum(out: np.ndarray, range_db: float, beta: float) -> np.ndarray:
    """[image | spectrum] side by side, uint8 [H, 2W, 3]."""
    img = to_image(out)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.concatenate([img[:, :, :3], spectrum(out, range_db, beta)], axis=1)
