"""Parity of our StyleGAN3 generator and equivariance operators with the official StyleGAN3 code, on CPU.

    python tests/benchmarks/parity_official_sg3.py --official-repo /path/to/stylegan3 [--json out.json]

For -t and -r configurations (small widths and resolutions, conditional and not), it builds the official
generator, moves every parameter away from its init and sets each magnitude EMA to the magnitude a real
batch has (so activations have a realistic scale), copies the state dict into ours with strict names, and
reports the largest absolute difference of

    mapping psi=1; mapping psi=0.7 with a cutoff; the image with psi=1 and psi=0.7; the image under a user
    transform (the inverse of rotate + translate, as the official gen_images.py sets it)

and, for the evaluate stage, of the equivariance operators against `metrics/equivariance.py` (the
band-limit filter, integer / fractional translation, rotation and pseudo-rotation with their masks).
Finally EQ-T, EQ-T_frac and EQ-R of one -t and one -r network by our evaluate stage and by the official
`compute_equivariance_metrics` (--eq-samples each; the draws differ, so these agree statistically only and
are reported, not gated), after checking one batch of each metric with the same draws on both sides (gated
by --tol-db). Prints one JSON document; exit status 1 when an error exceeds its tolerance.

The official code is imported only from --official-repo, at run time, and only here. It imports
`pkg_resources` (setuptools) for `parse_version` alone; when that is not installed, a stand-in made of
`packaging.version.parse` is written to a temporary folder for the duration of the run.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import json
import math
import platform
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from models.serialization.snapshot import load_state_strict  # noqa: E402
from models.stylegan3.generator import StyleGAN3Generator  # noqa: E402

# Configurations: the official -t / -r option sets (train.py --cfg) at reduced widths and sizes.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("t 32px", dict(img_resolution=32, c_dim=0, channel_base=1024, channel_max=64)),
    ("t 64px c4", dict(img_resolution=64, c_dim=4, channel_base=1024, channel_max=32, magnitude_ema_beta=0.99)),
    ("r 32px c3", dict(img_resolution=32, c_dim=3, channel_base=2048, channel_max=64, conv_kernel=1,
                       use_radial_filters=True)),
    ("r 64px", dict(img_resolution=64, c_dim=0, channel_base=2048, channel_max=32, conv_kernel=1,
                    use_radial_filters=True, conv_clamp=None, num_fp16_res=0)),
]
Z_DIM = 32


def _pkg_resources_standin() -> None:
    """Make `from pkg_resources import parse_version` work without setuptools (removed at exit)."""
    if importlib.util.find_spec("pkg_resources") is not None:
        return
    folder = Path(tempfile.mkdtemp(prefix="sg3-official-stub-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "pkg_resources").mkdir()
    (folder / "pkg_resources" / "__init__.py").write_text(
        '"""Stand-in for setuptools\' pkg_resources: the official StyleGAN3 code only uses parse_version."""\n'
        "from packaging.version import parse as parse_version  # noqa: F401\n")
    sys.path.insert(0, str(folder))


def import_official(repo: Path) -> types.SimpleNamespace:
    """The official networks_stylegan3 and metrics.equivariance modules from a stylegan3 checkout."""
    if not (repo / "training" / "networks_stylegan3.py").is_file():
        raise SystemExit(f"{repo} does not look like an NVlabs/stylegan3 checkout (training/networks_stylegan3.py)")
    _pkg_resources_standin()
    sys.path.insert(0, str(repo))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        networks = importlib.import_module("training.networks_stylegan3")
        equivariance = importlib.import_module("metrics.equivariance")
        metric_utils = importlib.import_module("metrics.metric_utils")
    return types.SimpleNamespace(networks=networks, equivariance=equivariance, metric_utils=metric_utils)


def inverse_transform(angle_deg: float, tx: float, ty: float) -> torch.Tensor:
    """What gen_images.py puts in synthesis.input.transform for --rotate angle_deg --translate tx,ty."""
    s, c = math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))
    return torch.from_numpy(np.linalg.inv(np.array([[c, s, tx], [-s, c, ty], [0, 0, 1.0]]))).float()


def perturb_(G: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for t in G.parameters():
            t.add_(torch.randn(t.shape, generator=gen) * 0.2)
        G.mapping.w_avg.copy_(torch.randn(G.mapping.w_avg.shape, generator=gen))


def calibrate_(G: torch.nn.Module, c_dim: int, gen: torch.Generator) -> None:
    """Each magnitude EMA = the input magnitude of one real batch, times a factor in [0.8, 1.2]."""
    z = torch.randn([8, G.z_dim], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(8) % c_dim, c_dim).float() if c_dim else torch.zeros([8, 0])
    layers = [getattr(G.synthesis, name) for name in G.synthesis.layer_names]
    betas = [layer.magnitude_ema_beta for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.magnitude_ema_beta = 0.0
        G.synthesis(G.mapping(z, c), update_emas=True, force_fp32=True)
        for layer, beta in zip(layers, betas):
            layer.magnitude_ema_beta = beta
            layer.magnitude_ema.mul_(float(torch.rand([], generator=gen)) * 0.4 + 0.8)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise SystemExit(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.detach().double() - b.detach().double()).abs().max())


def build_pair(off: types.SimpleNamespace, kw: dict[str, Any], seed: int
               ) -> tuple[torch.nn.Module, StyleGAN3Generator, torch.Generator]:
    """(official G perturbed and calibrated, ours with its state, the generator of further draws)."""
    kw = dict(z_dim=Z_DIM, w_dim=Z_DIM, img_channels=3, mapping_kwargs=dict(num_layers=2), **{"conv_clamp": 256, **kw})
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    Go = off.networks.Generator(**kw).eval()
    perturb_(Go, gen)
    calibrate_(Go, kw["c_dim"], gen)
    G = StyleGAN3Generator(**kw).eval()
    load_state_strict(G, Go.state_dict(), what="ours <- official")
    return Go, G, gen


@torch.no_grad()
def network_case(off: types.SimpleNamespace, kw: dict[str, Any], seed: int) -> dict[str, float]:
    Go, G, gen = build_pair(off, kw, seed)
    n, c_dim = 4, G.c_dim
    z = torch.randn([n, Z_DIM], generator=gen)
    c = torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else torch.zeros([n, 0])
    out = {
        "mapping psi=1": maxdiff(G.mapping(z, c), Go.mapping(z, c)),
        "mapping psi=0.7 cutoff=4": maxdiff(G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=4),
                                            Go.mapping(z, c, truncation_psi=0.7, truncation_cutoff=4)),
        "image psi=1": maxdiff(G(z, c, force_fp32=True), Go(z, c, force_fp32=True)),
        "image psi=0.7": maxdiff(G(z, c, truncation_psi=0.7, force_fp32=True),
                                 Go(z, c, truncation_psi=0.7, force_fp32=True)),
    }
    m = inverse_transform(17.0, 0.13, -0.21)
    G.synthesis.input.transform.copy_(m)
    Go.synthesis.input.transform.copy_(m)
    out["image transformed (rotate 17 deg, translate 0.13,-0.21)"] = maxdiff(G(z, c, force_fp32=True),
                                                                             Go(z, c, force_fp32=True))
    out["image rms (official)"] = float(Go(z, c, force_fp32=True).square().mean().sqrt())
    return out


@torch.no_grad()
def equivariance_ops(off: types.SimpleNamespace) -> dict[str, float]:
    """Our stages.metrics.equivariance operators vs the official ones, on random images."""
    from stages.evaluate import equivariance as ours

    E = off.equivariance
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 24, 20], generator=gen)
    sq = torch.randn([2, 3, 24, 24], generator=gen)
    out: dict[str, float] = {}

    def record(key: str, value: float) -> None:
        out[key] = max(out.get(key, 0.0), value)

    for tx, ty in ((0.1, -0.05), (-0.125, 0.125), (0.031, 0.0)):
        for name, a, b in (("integer", ours.integer_translation, E.apply_integer_translation),
                           ("fractional", ours.fractional_translation, E.apply_fractional_translation)):
            (z1, m1), (z2, m2) = a(x, tx, ty), b(x, torch.tensor(tx), torch.tensor(ty))
            record(f"{name} translation", maxdiff(z1, z2))
            record(f"{name} translation mask", maxdiff(m1, m2))
    for angle in (0.3, -2.5, 1.0):
        record("band-limit filter", maxdiff(ours.affine_bandlimit_filter(ours.rotation_matrix(angle)),
                                            E.construct_affine_bandlimit_filter(E.rotation_matrix(torch.tensor(angle)))))
        for name, a, b in (("rotation", ours.fractional_rotation, E.apply_fractional_rotation),
                           ("pseudo-rotation", ours.pseudo_rotation, E.apply_fractional_pseudo_rotation)):
            (z1, m1), (z2, m2) = a(sq, angle), b(sq, torch.tensor(angle))
            record(name, maxdiff(z1, z2))
            record(f"{name} mask", maxdiff(m1, m2))
    return out


class _FixedDraws:
    """Stands in for the numpy generator of `batch_sums`: returns the uniform numbers given, in order."""

    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)

    def random(self, size: int | None = None) -> Any:
        value = self.values.pop(0)
        return np.asarray(value) if size is not None else value


def _official_batch_sums(E: Any, Go: torch.nn.Module, ws: torch.Tensor, kind: str, value: Any) -> np.ndarray:
    """The body of the official metric loop for one batch and one given translation / angle."""
    M = Go.synthesis.input.transform
    M[:] = torch.eye(3)
    orig = Go.synthesis(ws)
    if kind == "eqr":
        angle = torch.tensor(value)
        M[:] = E.rotation_matrix(-angle)
        ref, ref_mask = E.apply_fractional_rotation(orig, angle)
        img, img_mask = E.apply_fractional_pseudo_rotation(Go.synthesis(ws), angle)
        mask = ref_mask * img_mask
    else:
        t = torch.tensor(value)
        M[:2, 2] = -t
        apply = E.apply_integer_translation if kind == "eqt_int" else E.apply_fractional_translation
        img = Go.synthesis(ws)
        ref, mask = apply(orig, t[0], t[1])
    return np.array([float(((ref - img).square() * mask).double().sum()), float(mask.double().sum())])


@torch.no_grad()
def equivariance_sums(off: types.SimpleNamespace) -> dict[str, float]:
    """|PSNR difference| in dB of one batch, ours vs the official metric loop body, for the same network, ws,
    translation and angle (the mask counts must agree exactly)."""
    from stages.metrics.equivariance import ROTATE_MAX, TRANSLATE_MAX, batch_sums

    out: dict[str, float] = {}
    for name, kw in CASES[:3:2]:  # one -t, one -r
        Go, G, gen = build_pair(off, kw, seed=11)
        c = torch.nn.functional.one_hot(torch.arange(4) % kw["c_dim"], kw["c_dim"]).float() if kw["c_dim"] else None
        ws = Go.mapping(torch.randn([4, Z_DIM], generator=gen), c)
        for kind, value in (("eqt_int", [3 / kw["img_resolution"], -5 / kw["img_resolution"]]),
                            ("eqt_frac", [0.07, -0.11]), ("eqr", 0.9), ("eqr", -2.6)):
            uniform = (np.asarray(value) / (ROTATE_MAX * math.pi if kind == "eqr" else TRANSLATE_MAX) + 1) / 2
            ours = batch_sums(G, ws, kind, _FixedDraws([uniform.tolist()]))  # type: ignore[arg-type]
            ref = _official_batch_sums(off.equivariance, Go, ws, kind, value)
            if ours[1] != ref[1]:
                raise SystemExit(f"{name} {kind}: mask counts differ, ours {ours[1]}, official {ref[1]}")
            key = f"{name} {kind} PSNR of one batch, |dB difference|"
            out[key] = max(out.get(key, 0.0), abs(10 * math.log10(ours[0] / ref[0])))
    return out


def equivariance_metrics(off: types.SimpleNamespace, num_samples: int) -> dict[str, dict[str, float]]:
    """EQ-T / EQ-T_frac / EQ-R (dB) of the same unconditional -t and -r networks: ours vs official."""
    from stages.metrics.equivariance import equivariance_psnr

    out = {}
    for name, kw in CASES:
        if kw["c_dim"] != 0:
            continue  # the official label draw needs a dataset; unconditional networks suffice here
        Go, G, _ = build_pair(off, kw, seed=7)
        torch.manual_seed(0)  # the official metric draws from torch's global generator
        opts = off.metric_utils.MetricOptions(G=Go, device=torch.device("cpu"))
        official = off.equivariance.compute_equivariance_metrics(
            opts, num_samples=num_samples, batch_size=4, compute_eqt_int=True, compute_eqt_frac=True,
            compute_eqr=True)
        entry = {}
        for kind, value in zip(("eqt_int", "eqt_frac", "eqr"), official):
            entry[f"{kind} ours"] = round(equivariance_psnr(G, None, kind, num_samples, progress=False), 2)
            entry[f"{kind} official"] = round(float(value), 2)
        out[name] = entry
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="checkout of NVlabs/stylegan3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-4, help="largest acceptable max abs error")
    parser.add_argument("--tol-db", type=float, default=0.01, help="largest acceptable PSNR difference, same draws")
    parser.add_argument("--eq-samples", type=int, default=64, help="images per equivariance metric (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    off = import_official(args.official_repo.resolve())
    cases = {name: network_case(off, kw, seed=i + 1) for i, (name, kw) in enumerate(CASES)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official filter design calls meshgrid without `indexing`
        eq_ops = equivariance_ops(off)
        eq_same_draws = equivariance_sums(off)
        eq_metrics = equivariance_metrics(off, args.eq_samples) if args.eq_samples > 0 else {}
    errors = [v for case in cases.values() for k, v in case.items() if not k.startswith("image rms")]
    worst = max([*errors, *eq_ops.values()])
    worst_db = max(eq_same_draws.values())
    result = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=platform.processor() or platform.machine(), networks=cases, equivariance_ops=eq_ops,
                  equivariance_same_draws_db=eq_same_draws, equivariance_metrics_db=eq_metrics,
                  worst_max_abs_err=worst, tol=args.tol, worst_db=worst_db, tol_db=args.tol_db,
                  ok=worst <= args.tol and worst_db <= args.tol_db)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
