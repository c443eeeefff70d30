"""The Marchenko–Pastur (MP) bulk of a spectrum: the scale of W's entries, the bulk's edges, the spikes above it.

A matrix of independent entries with variance σ² has, for its n×m shape (n ≥ m, aspect y = m/n), the
eigenvalues of WᵀW spread over the MP law between n·σ²·(1 ∓ √y)². The fit here is a quantile match,
from the eigenvalues already solved: the i-th smallest eigenvalue of such a matrix sits near n·σ²·q_i,
q_i the i-th of m quantiles of the unit MP law (random_baseline.mp_quantiles), so σ² is the median of
λ_i / (n·q_i) over the middle half of the spectrum. A few large eigenvalues (spikes, a heavy tail) do
not move it; what it assumes is that the middle of the spectrum is noise-like, which fails when the
whole spectrum is structured (a low-rank matrix, a heavily trained one: σ then describes the middle of
the spectrum, not noise).

Spikes are the eigenvalues above the largest one a noise matrix of that σ would reach: Johnstone's
Tracy–Widom centring μ = (√(n−1) + √m)² and scale s = (√(n−1) + √m)(1/√(n−1) + 1/√m)^(1/3), in units of
σ², plus TW_MARGIN scale units (a Gaussian matrix passes it in about 2 draws in 10,000; the test
suite measures the rate with the fitted σ).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from alphaspec.spectra.gaussian import mp_quantiles
from alphaspec.spectra.norms import ldexp

TW_MARGIN = 4.0  # Tracy–Widom scale units above the centring: the spike threshold
BULK_COLUMNS = ("sigma_mp", "bulk_max", "num_spikes", "mp_softrank")
RANDOMIZED_COLUMNS = ("rand_lambda_max", "rand_distance", "traps", "trap_z", "trap_z_low", "trap_share",
                      "permutations", "trap_entries", "trap_max_entry", "trap_where")  # analyze --randomize


@lru_cache(maxsize=512)
def _quantiles(rows: int, cols: int) -> torch.Tensor:
    return torch.from_numpy(mp_quantiles(rows, cols))  # float64, on the CPU; shared: never written


def _tw_centre_and_unit(rows: int, cols: int) -> tuple[float, float]:
    n, m = max(rows, cols), min(rows, cols)
    a, b = math.sqrt(max(n - 1, 1)), math.sqrt(m)
    return (a + b) ** 2, (a + b) * (1 / a + 1 / b) ** (1 / 3)


def tracy_widom_unit(sigma2: float, rows: int, cols: int) -> float:
    """Johnstone's Tracy–Widom scale of the largest eigenvalue of WᵀW for noise of variance sigma2."""
    return sigma2 * _tw_centre_and_unit(rows, cols)[1]


def spike_threshold(sigma2: float, rows: int, cols: int) -> float:
    """The largest eigenvalue of WᵀW that noise of variance sigma2 reaches, plus the Tracy–Widom margin."""
    centre, unit = _tw_centre_and_unit(rows, cols)
    return sigma2 * (centre + TW_MARGIN * unit)


def mp_bulk(eigs: torch.Tensor | None, rows: int, cols: int, exponent: int = 0) -> dict[str, float]:
    """sigma_mp (the entries' scale), bulk_max (the MP edge n·σ²·(1 + √y)²), num_spikes (eigenvalues above
    the noise threshold) and mp_softrank (bulk_max / λ_max) of one ascending spectrum, all min(rows, cols)
    eigenvalues, each scaled by 4^-exponent (esd.scaled_eigenvalues); σ and the edge are scaled back."""
    nan = {"sigma_mp": math.nan, "bulk_max": math.nan, "num_spikes": 0, "mp_softrank": math.nan}
    if eigs is None or eigs.numel() < 4 or float(eigs[-1]) <= 0:  # no spectrum (NaN/Inf entries), too few, all zero
        return nan
    m = eigs.numel()
    n = max(rows, cols)
    q = _quantiles(rows, cols).to(eigs.device)
    lo, hi = m // 4, max(m // 4 + 1, (3 * m) // 4)
    sigma2 = float(torch.median(eigs[lo:hi] / (n * q[lo:hi])))
    if not sigma2 > 0:
        return nan
    edge = n * sigma2 * (1 + math.sqrt(min(rows, cols) / n)) ** 2
    spikes = int((eigs > spike_threshold(sigma2, rows, cols)).sum())
    return {"sigma_mp": ldexp(math.sqrt(sigma2), exponent), "bulk_max": ldexp(edge, 2 * exponent),
            "num_spikes": spikes, "mp_softrank": edge / float(eigs[-1])}
