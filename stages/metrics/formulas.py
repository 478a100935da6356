"""The metric formulas as pure functions of feature arrays: no detectors, generators or files.

Each is the specification the tests check against closed forms; the feature-extraction code elsewhere
only feeds them. Constants (subset counts, neighbourhood sizes, percentiles) follow the official
StyleGAN2-ADA metrics and the papers they cite.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

# sqrtm of a product of two PSD matrices is real in exact arithmetic; round-off adds an imaginary part.
# Above this relative size the result is not trusted and the eigendecomposition path is used instead.
IMAG_TOLERANCE = 1e-3


def _sqrtm_trace_eig(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(Σ1 Σ2)) via the symmetric form: sqrt(Σ1) Σ2 sqrt(Σ1) is PSD with the same eigenvalues as Σ1 Σ2."""
    w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     trace: str = "eig") -> float:
    """FID = |μ1-μ2|² + tr(Σ1 + Σ2 - 2 sqrt(Σ1 Σ2))  (Heusel et al. 2017, eq. 6).

    `trace="eig"` (default) takes tr(sqrt(Σ1 Σ2)) from the eigenvalues of the symmetric PSD matrix
    sqrt(Σ1) Σ2 sqrt(Σ1), which has the same eigenvalues as Σ1 Σ2: two symmetric eigendecompositions, about
    2 s at 2048x2048 on 2 cores where scipy's sqrtm took 10.7 s (random covariances) to 60 s (real ones).
    `trace="sqrtm"` is the official computation (`scipy.linalg.sqrtm`, real part); it falls back to "eig" with
    a warning when sqrtm is inaccurate (a complex part above IMAG_TOLERANCE x the trace scale, or non-finite values from
    singular covariances). The result is clipped at 0, which round-off can cross for equal distributions.
    """
    if trace not in ("eig", "sqrtm"):
        raise ValueError(f"trace must be 'eig' or 'sqrtm', got {trace!r}")
    mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
    sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
    m = float(np.square(mu1 - mu2).sum())
    tr_covmean = _sqrtm_trace_eig(sigma1, sigma2) if trace == "eig" else _sqrtm_trace_scipy(sigma1, sigma2)
    fid = m + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * tr_covmean
    return max(fid, 0.0)


def _sqrtm_trace_scipy(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    with warnings.catch_warnings():  # scipy warns on ill-conditioned input; that case is handled just below
        warnings.simplefilter("ignore")
        s = scipy.linalg.sqrtm(sigma1 @ sigma2)
    scale = max(float(np.abs(np.trace(sigma1)) + np.abs(np.trace(sigma2))), 1e-12)
    if not np.all(np.isfinite(s)) or (np.iscomplexobj(s) and np.abs(s.imag).max() > IMAG_TOLERANCE * scale):
        warnings.warn("FID: sqrtm was inaccurate (complex or non-finite); using the eigendecomposition form",
                      RuntimeWarning, stacklevel=3)
        return _sqrtm_trace_eig(sigma1, sigma2)
    return float(np.real(np.trace(s)))


def kernel_inception_distance(
    real: np.ndarray,           # [N, D] features
    gen: np.ndarray,            # [M, D] features
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int | None = 0,       # subset draws; the official code uses the unseeded global RNG
) -> float:
    """KID: unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³ (Bińkowski et al. 2018, eq. 4),
    averaged over random subsets of min(N, M, max_subset_size) rows. Can be slightly negative."""
    rng = np.random.default_rng(seed)
    d = real.shape[1]
    m = min(real.shape[0], gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    t = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)].astype(np.float64)
        y = real[rng.choice(real.shape[0], m, replace=False)].astype(np.float64)
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        # Diagonal k(x_i, x_i) terms are excluded: that is what makes the estimator unbiased.
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def knn_radii(
    features: torch.Tensor,     # [N, D]
    k: int = 3,
    row_batch_size: int = 10000,
    col_batch_size: int = 10000,
    rows: slice | None = None,  # compute only these rows (for splitting across processes)
) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in `features` (itself excluded).

    Memory is one [row_batch, col_batch] block: a running k+1 smallest per row is merged block by block,
    instead of holding whole rows of N distances as the official code does.
    """
    rows = rows or slice(0, features.shape[0])
    row_feats = features[rows]
    out = []
    for rs in _chunks(row_feats.shape[0], row_batch_size):
        best = None
        for cs in _chunks(features.shape[0], col_batch_size):
            dist = torch.cdist(row_feats[rs].unsqueeze(0), features[cs].unsqueeze(0))[0]  # [R, C]
            if best is not None:
                dist = torch.cat([best, dist], dim=1)
            best = dist.topk(min(k + 1, dist.shape[1]), dim=1, largest=False).values
        # k+1: the point itself is its own nearest neighbour at distance 0.
        out.append(best[:, k] if best.shape[1] > k else best[:, -1])
    return torch.cat(out)


def within_manifold(
    probes: torch.Tensor,       # [P, D]
    manifold: torch.Tensor,     # [N, D]
    radii: torch.Tensor,        # [N] k-NN radius of each manifold point
    row_batch_size: int = 10000,
    col_batch_size: int = 10000,
) -> torch.Tensor:
    """bool [P]: probe lies inside the hypersphere of at least one manifold point (Kynkäänniemi et al. 2019, eq. 1)."""
    out = []
    for rs in _chunks(probes.shape[0], row_batch_size):
        hit = torch.zeros(rs.stop - rs.start, dtype=torch.bool)
        for cs in _chunks(manifold.shape[0], col_batch_size):
            dist = torch.cdist(probes[rs].unsqueeze(0), manifold[cs].unsqueeze(0))[0]
            hit |= (dist <= radii[cs].unsqueeze(0)).any(dim=1).cpu()
        out.append(hit)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def precision_recall(
    real: torch.Tensor,
    gen: torch.Tensor,
    k: int = 3,
    row_batch_size: int = 10000,
    col_batch_size: int = 10000,
) -> tuple[float, float]:
    """Improved precision (fraction of generated samples inside the real manifold) and recall (reals inside
    the generated manifold), manifolds as unions of k-NN balls."""
    prec = within_manifold(gen, real, knn_radii(real, k, row_batch_size, col_batch_size), row_batch_size,
                           col_batch_size)
    rec = within_manifold(real, gen, knn_radii(gen, k, row_batch_size, col_batch_size), row_batch_size,
                          col_batch_size)
    return float(prec.float().mean()), float(rec.float().mean())


def as_probabilities(out: np.ndarray) -> np.ndarray:
    """Class probabilities from a detector's IS output.

    The official Inception TorchScript already applies the softmax (called with no_output_bias=True, as the
    original TF code omits the bias), so rows are probabilities and are used as they are. A stand-in that
    returns logits (rows not on the simplex) gets the softmax here, so either kind gives the same score.
    """
    out = np.asarray(out, dtype=np.float64)
    if out.min() >= 0 and np.allclose(out.sum(axis=1), 1, atol=1e-3):
        return out
    out = out - out.max(axis=1, keepdims=True)
    e = np.exp(out)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split; mean and std over splits (Salimans et al. 2016)."""
    n = probs.shape[0]
    if n < num_splits:
        raise ValueError(f"inception score: {n} samples cannot fill {num_splits} splits")
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        # 0·log 0 = 0: confident one-hot rows have exact zeros, which the official code turns into NaN.
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        kl = np.where(part > 0, kl, 0.0).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of a and b (z is ~uniform on a sphere), unit-length result."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d.clamp(-1, 1))  # round-off can push |cos| just above 1
    c = b - d * a
    c = c / c.norm(dim=-1, keepdim=True)
    out = a * torch.cos(p) + c * torch.sin(p)
    return out / out.norm(dim=-1, keepdim=True)


def ppl_from_distances(dist: np.ndarray) -> float:
    """Mean of the scaled LPIPS distances after rejecting the lowest and highest 1% (Karras et al. 2019, sec. 3.2)."""
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    return float(dist[(dist >= lo) & (dist <= hi)].mean())
