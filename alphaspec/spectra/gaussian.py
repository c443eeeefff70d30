"""The alpha a random Gaussian matrix of the same shape would give: the baseline to read trained alphas against.

Alpha depends on shape even for noise (docs/math.md §2: ~2.13 square, ~3.0 at aspect 0.375). Instead of
sampling a matrix and solving it, the spectrum is taken as the M quantiles of the Marchenko–Pastur
law of that aspect ratio, which is deterministic and instant, and agrees with sampled Gaussian
matrices to ~0.5% in median-alpha.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from alphaspec.spectra.powerlaw import fit


def mp_quantiles(rows: int, cols: int, grid: int = 200_001) -> np.ndarray:
    """The min(rows, cols) mid-point quantiles of the Marchenko–Pastur law with ratio q = min/max."""
    return _mp_quantiles(rows, cols, grid).copy()


@lru_cache(maxsize=4)
def _grid(grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The integration grid of every shape: t, cos t, sin² t and the steps of t (computed once)."""
    t = np.linspace(0.0, np.pi, grid)
    return t, np.cos(t), np.sin(t) ** 2, np.diff(t)


@lru_cache(maxsize=512)
def _mp_quantiles(rows: int, cols: int, grid: int) -> np.ndarray:
    """mp_quantiles, computed once per shape (random_alpha and mp_bulk both read it); read-only."""
    m = min(rows, cols)
    q = m / max(rows, cols)
    a, b = (1 - np.sqrt(q)) ** 2, (1 + np.sqrt(q)) ** 2
    # x = a + (b - a)(1 - cos t)/2 removes the square-root edges (and the 1/sqrt(x) pole when q = 1).
    t, cos_t, sin2_t, dt = _grid(grid)
    x = a + (b - a) * (1 - cos_t) / 2
    half = (b - a) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        g = half**2 * sin2_t / (2 * np.pi * q * x)
    g[0] = half**2 * 4 / (b * 2 * np.pi * q) if a == 0 else 0.0  # the limit at t = 0
    cdf = np.concatenate([[0.0], np.cumsum((g[1:] + g[:-1]) / 2 * dt)])
    cdf /= cdf[-1]
    ts = np.interp((np.arange(m) + 0.5) / m, cdf, t)
    quantiles = a + (b - a) * (1 - np.cos(ts)) / 2
    quantiles.setflags(write=False)
    return quantiles


@lru_cache(maxsize=256)
def random_alpha(rows: int, cols: int, estimator: str = "median") -> float:
    """alpha of a Gaussian random (rows, cols) matrix under `estimator`, from its Marchenko–Pastur spectrum."""
    return fit(mp_quantiles(rows, cols), estimator).alpha
