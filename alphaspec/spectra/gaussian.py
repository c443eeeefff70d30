"""The alpha a random Gaussian matrix of the same shape would give: the baseline to read trained alphas against.

Alpha depends on shape even for noise (docs/math.md §2: ~2.13 square, ~3.0 at aspect 0.375). Instead of
sampling a matrix and solving it, the spectrum is taken as the M quantiles of the Marchenko–Pastur
law of that aspect ratio (from its distribution function in closed form), which is deterministic and
takes a millisecond, and agrees with sampled Gaussian matrices to ~0.5% in median-alpha.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from alphaspec.spectra.powerlaw import fit


def mp_quantiles(rows: int, cols: int) -> np.ndarray:
    """The min(rows, cols) mid-point quantiles of the Marchenko–Pastur law with ratio q = min/max."""
    return _mp_quantiles(rows, cols).copy()


def mp_cdf(t: np.ndarray, q: float) -> np.ndarray:
    """The Marchenko–Pastur law's distribution function at x = a + (b - a)(1 - cos t)/2, t in [0, π].

    The law's density sqrt((b - x)(x - a)) / (2πqx) becomes (b - a)²/4 · sin²t / (2πqx) in t, whose integral
    has a closed form (write sin²t over 1 + q - 2√q·cos t as a polynomial in cos t plus a multiple of the
    reciprocal): the arctan term carries the 1/x of the density and vanishes for a square matrix (q = 1)."""
    f = (1 + q) * t + 2 * np.sqrt(q) * np.sin(t)
    if q < 1:
        a, b = (1 - np.sqrt(q)) ** 2, (1 + np.sqrt(q)) ** 2
        f = f - 2 * (1 - q) * np.arctan(np.sqrt(b / a) * np.tan(t / 2))
    return f / (2 * np.pi * q)


@lru_cache(maxsize=512)
def _mp_quantiles(rows: int, cols: int) -> np.ndarray:
    """mp_quantiles, computed once per shape (random_alpha and mp_bulk both read it); read-only.

    Each quantile solves mp_cdf(t) = (i + 1/2)/m for t by bisection, all at once: 53 halvings of [0, π]
    reach float64's resolution, so the quantiles are exact to round-off."""
    m = min(rows, cols)
    q = m / max(rows, cols)
    a, b = (1 - np.sqrt(q)) ** 2, (1 + np.sqrt(q)) ** 2
    p = (np.arange(m) + 0.5) / m
    lo, hi = np.zeros(m), np.full(m, np.pi)
    for _ in range(53):
        mid = (lo + hi) / 2
        below = mp_cdf(mid, q) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    quantiles = a + (b - a) * (1 - np.cos((lo + hi) / 2)) / 2
    quantiles.setflags(write=False)
    return quantiles


@lru_cache(maxsize=256)
def random_alpha(rows: int, cols: int, estimator: str = "median") -> float:
    """alpha of a Gaussian random (rows, cols) matrix under `estimator`, from its Marchenko–Pastur spectrum."""
    return fit(mp_quantiles(rows, cols), estimator).alpha
