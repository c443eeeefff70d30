"""Power-law fits of an ESD tail (docs/math.md §2), vectorised over every xmin candidate at once.

All functions take eigenvalues as a float64 torch tensor sorted ascending with the zeros already
removed, and run on that tensor's device, so CPU and GPU follow the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from alphaspec.choices import ESTIMATORS

MIN_EIGS = 10  # fewer non-zero eigenvalues than this: no fit, the row says why
MIN_DISTINCT = 3  # distinct eigenvalues (relative gap > DISTINCT_RTOL) a tail needs to be fitted
DISTINCT_RTOL = 1e-9
ALPHA_MAX = 200.0  # above: no tail (Gaussian noise of the most elongated real shapes stays below ~90)
FIX_FINGER_BINS = 100
FIX_FINGER_WINDOW = (0.95, 1.5)
_BLOCK_ELEMENTS = 1 << 22  # candidates x tail points per block of the KS scan (32 MiB in float64)


@dataclass(frozen=True)
class PowerLawFit:
    """One fitted tail: alpha, xmin, the KS distance and the tail size; `status` says why a fit is empty."""

    alpha: float
    xmin: float
    ks_d: float
    n_tail: int
    status: str = "ok"
    # Per-candidate diagnostics (xmin, alpha, D), filled when fit(..., curves=True).
    curves: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def empty(cls, status: str) -> PowerLawFit:
        return cls(math.nan, math.nan, math.nan, 0, status)


def hill_alphas(lam: torch.Tensor) -> torch.Tensor:
    """alpha(i) = 1 + n_i / sum_{j>=i} ln(lam_j / lam_i) for every 0-based candidate i, n_i = N - i."""
    n_pts = lam.numel()
    ell = torch.log(lam)
    ell = ell - ell[-1]  # ratios are shift-invariant; centring keeps the suffix sums well conditioned
    suffix = torch.flip(torch.cumsum(torch.flip(ell, (0,)), 0), (0,))
    n = torch.arange(n_pts, 0, -1, dtype=lam.dtype, device=lam.device)
    return 1.0 + n / (suffix - n * ell)


def ks_distances(lam: torch.Tensor, alphas: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """D(i) = max_k |1 - (lam_{i+k}/lam_i)^(1-alpha_i) - k/n_i| for the candidates first <= i < stop.

    Candidates whose alpha is not a finite number above 1 get D = 1 (docs/math.md §2). Each block of
    candidates is a strided (candidate x tail point) view of the padded log-spectrum, so the
    triangle is evaluated without gathers, in blocks that bound memory.
    """
    n_pts = lam.numel()
    ell = torch.log(lam)
    padded = torch.cat([ell, ell.new_zeros(n_pts)])  # windows run past the end; masked out below
    k = torch.arange(n_pts, dtype=lam.dtype, device=lam.device)[None, :]
    out = torch.ones(stop - first, dtype=lam.dtype, device=lam.device)
    block = max(1, _BLOCK_ELEMENTS // n_pts)
    for s in range(first, stop, block):
        e = min(s + block, stop)
        a = alphas[s:e]
        n = torch.arange(n_pts - s, n_pts - e, -1, dtype=lam.dtype, device=lam.device)[:, None]
        x = padded.as_strided((e - s, n_pts), (1, 1), s) - ell[s:e, None]
        x.mul_((1.0 - a)[:, None]).expm1_().neg_()  # fitted CDF at each tail point
        x.sub_(k / n).abs_().masked_fill_(k >= n, 0.0)
        d = x.amax(1)
        out[s - first : e - first] = torch.where(torch.isfinite(a) & (a > 1), d, torch.ones_like(d))
    return out


def _best_of(lam: torch.Tensor, first: int, stop: int, curves: bool, alphas: torch.Tensor | None = None,
             ds: torch.Tensor | None = None) -> PowerLawFit:
    """The candidate with the smallest D among first <= i < stop (the first one on ties). alphas and ds: the
    Hill alphas of every candidate and the KS distances of these, when already computed (fit_with_gof)."""
    alphas = hill_alphas(lam) if alphas is None else alphas
    ds = ks_distances(lam, alphas, first, stop) if ds is None else ds
    best = int(torch.argmin(ds))
    i = first + best
    alpha = float(alphas[i])
    extra = {}
    if curves:
        extra = {"xmin": lam[first:stop].cpu().numpy(), "alpha": alphas[first:stop].cpu().numpy(),
                 "ks_d": ds.cpu().numpy()}
    why = _no_tail(lam[i:], alpha)
    if why:
        return PowerLawFit(math.nan, math.nan, math.nan, 0, why, extra)
    return PowerLawFit(alpha, float(lam[i]), float(ds[best]), lam.numel() - i, "ok", extra)


def _no_tail(tail: torch.Tensor, alpha: float) -> str | None:
    """Why a fitted tail is not a power law (None when it is one): too few distinct values, or alpha
    beyond ALPHA_MAX, which means the tail's eigenvalues are within ~0.5% of each other (an orthogonal
    or scaled-identity matrix: the "alpha" measures rounding noise, not a tail)."""
    distinct = 1 + int((torch.diff(torch.log(tail)) > DISTINCT_RTOL).sum())
    if distinct < MIN_DISTINCT:
        return f"no power-law tail: {distinct} distinct eigenvalue(s) in the tail"
    if not math.isfinite(alpha) or alpha > ALPHA_MAX:
        return f"no power-law tail: eigenvalues nearly equal (alpha {alpha:.3g} > {ALPHA_MAX:g})"
    return None


def fit_median(lam: torch.Tensor, curves: bool = False) -> PowerLawFit:
    """xmin at the median eigenvalue, 0-based index floor(N/2) (the paper's PL_Alpha_Hill)."""
    i = lam.numel() // 2
    return _best_of(lam, i, i + 1, curves)


def fit_gof(lam: torch.Tensor, curves: bool = False) -> PowerLawFit:
    """xmin minimising the KS distance over every candidate but the largest eigenvalue (Clauset et al.)."""
    return _best_of(lam, 0, lam.numel() - 1, curves)


def fix_finger_peak(lam: torch.Tensor) -> float:
    """10**(left edge of the most populated of 100 equal bins of log10(lam)), binned as numpy.histogram."""
    h = torch.log10(lam)
    lo, hi = float(h[0]), float(h[-1])
    if hi == lo:
        return 10.0**lo
    step = (hi - lo) / FIX_FINGER_BINS
    edges = lo + torch.arange(FIX_FINGER_BINS + 1, dtype=lam.dtype, device=lam.device) * step
    edges[-1] = hi
    b = ((h - lo) / (hi - lo) * FIX_FINGER_BINS).long().clamp(max=FIX_FINGER_BINS - 1)
    b = b - (h < edges[b]).long()
    b = b + ((h >= edges[(b + 1).clamp(max=FIX_FINGER_BINS)]) & (b != FIX_FINGER_BINS - 1)).long()
    counts = torch.bincount(b, minlength=FIX_FINGER_BINS)
    return float(10.0 ** edges[int(torch.argmax(counts))])


def _window(lam: torch.Tensor, low: float, high: float) -> tuple[int, int]:
    """The candidates (every eigenvalue but the largest) with low <= lambda <= high, as a range."""
    usable = lam[:-1]  # sorted, so the window is a contiguous range
    bounds = torch.tensor([low, high], dtype=lam.dtype, device=lam.device)
    return int(torch.searchsorted(usable, bounds[:1])), int(torch.searchsorted(usable, bounds[1:], right=True))


def fit_fix_finger(lam: torch.Tensor, curves: bool = False) -> PowerLawFit:
    """gof restricted to candidates in [0.95, 1.5] x the log-histogram peak (WeightWatcher's xmin_peak, intended window)."""
    peak = fix_finger_peak(lam)
    lo, hi = FIX_FINGER_WINDOW
    first, stop = _window(lam, lo * peak, hi * peak)
    if stop <= first:  # nothing in the window: the eigenvalue nearest the peak
        first = int(torch.argmin((lam[:-1] - peak).abs()))
        stop = first + 1
    return _best_of(lam, first, stop, curves)


def fit_fix_finger_legacy(lam: torch.Tensor, curves: bool = False) -> PowerLawFit:
    """fix-finger as WeightWatcher/TempBalance/AlphaDecay code it, to reproduce published numbers.

    Their lower bound log10(0.95 * peak) is compared with raw eigenvalues, which in effect removes it.
    """
    peak = fix_finger_peak(lam)
    lo, hi = FIX_FINGER_WINDOW
    first, stop = _window(lam, math.log10(lo * peak), hi * peak)
    if stop <= first:
        return PowerLawFit.empty("no candidate in the legacy fix-finger window")
    return _best_of(lam, first, stop, curves)


_FITTERS = {"median": fit_median, "gof": fit_gof, "fix-finger": fit_fix_finger,
            "fix-finger-legacy": fit_fix_finger_legacy}


def _candidates(lam: torch.Tensor, estimator: str) -> tuple[int, int] | None:
    """The candidate range [first, stop) an estimator searches (None: legacy fix-finger's empty window)."""
    if estimator == "median":
        return lam.numel() // 2, lam.numel() // 2 + 1
    if estimator == "gof":
        return 0, lam.numel() - 1
    peak = fix_finger_peak(lam)
    lo, hi = FIX_FINGER_WINDOW
    if estimator == "fix-finger-legacy":
        first, stop = _window(lam, math.log10(lo * peak), hi * peak)
        return (first, stop) if stop > first else None
    first, stop = _window(lam, lo * peak, hi * peak)
    if stop <= first:  # nothing in the window: the eigenvalue nearest the peak
        first = int(torch.argmin((lam[:-1] - peak).abs()))
        stop = first + 1
    return first, stop


def fit_with_gof(lam: torch.Tensor, estimator: str, *, min_eigs: int = MIN_EIGS) -> tuple[PowerLawFit, PowerLawFit]:
    """The fit of `estimator` and the goodness-of-fit one of the same sorted eigenvalues, from one KS scan of
    every candidate: each estimator searches a range within gof's, so both pick from the same distances."""
    check_estimator(estimator)
    if lam.numel() < max(min_eigs, 2):
        empty = PowerLawFit.empty(f"too few non-zero eigenvalues ({lam.numel()} < {max(min_eigs, 2)})")
        return empty, empty
    alphas = hill_alphas(lam)
    ds = ks_distances(lam, alphas, 0, lam.numel() - 1)
    gof = _best_of(lam, 0, lam.numel() - 1, False, alphas, ds)
    span = _candidates(lam, estimator)
    if span is None:
        return PowerLawFit.empty("no candidate in the legacy fix-finger window"), gof
    return _best_of(lam, *span, False, alphas, ds[span[0]:span[1]]), gof


def check_estimator(estimator: str) -> str:
    if estimator not in _FITTERS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    return estimator


def fit_sorted(lam: torch.Tensor, estimator: str = "median", *, min_eigs: int = MIN_EIGS,
               curves: bool = False) -> PowerLawFit:
    """Fit positive float64 eigenvalues already sorted ascending (the ESD engine's output, zeros removed)."""
    check_estimator(estimator)
    if lam.numel() < max(min_eigs, 2):
        return PowerLawFit.empty(f"too few non-zero eigenvalues ({lam.numel()} < {max(min_eigs, 2)})")
    return _FITTERS[estimator](lam, curves)


def fit(eigenvalues, estimator: str = "median", *, min_eigs: int = MIN_EIGS, eps_zero: float = 1e-12,
        curves: bool = False, device: str | torch.device | None = None) -> PowerLawFit:
    """Fit the power-law tail of any eigenvalue array (numpy, list or tensor; any order).

    Values <= eps_zero * max are treated as zero and excluded (docs/math.md §1). Non-finite input raises.
    """
    lam = torch.as_tensor(np.asarray(eigenvalues) if not torch.is_tensor(eigenvalues) else eigenvalues)
    lam = lam.detach().to(device=device or lam.device, dtype=torch.float64).flatten()
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("eigenvalues contain NaN or Inf")
    lam = torch.sort(lam.clamp_min(0)).values
    if lam.numel() == 0 or float(lam[-1]) == 0.0:
        return PowerLawFit.empty("all eigenvalues are zero")
    return fit_sorted(lam[lam > eps_zero * lam[-1]], estimator, min_eigs=min_eigs, curves=curves)
