"""Per-matrix spectral metrics from the eigenvalues (docs/math.md §1): norms, stable rank, entropy."""

from __future__ import annotations

import math

import torch

METRIC_COLUMNS = ("lambda_max", "spectral_norm", "frobenius_norm", "stable_rank", "log_spectral_norm",
                  "log_norm", "entropy")


def spectral_metrics(eigs: torch.Tensor, exponent: int = 0) -> dict[str, float]:
    """Metrics of one ESD given all its min(rows, cols) eigenvalues (zeros included), sorted ascending, each
    scaled by 4^-exponent (see esd.scaled_eigenvalues): the logarithms and ratios are exact whatever the
    scale; lambda_max is inf where it passes float64's range (entries near 1e160).

    An all-zero spectrum has zero norms; ratios and logarithms of zero are NaN rather than -inf.
    """
    m = eigs.numel()
    top = float(eigs[-1]) if m else 0.0
    total = float(eigs.sum())
    out = {"lambda_max": ldexp(top, 2 * exponent), "spectral_norm": ldexp(math.sqrt(top), exponent),
           "frobenius_norm": ldexp(math.sqrt(total), exponent)}
    if top <= 0.0:
        return out | {"stable_rank": math.nan, "log_spectral_norm": math.nan, "log_norm": math.nan,
                      "entropy": math.nan}
    p = eigs / total
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros((), dtype=p.dtype, device=p.device))
    entropy = float(-plogp.sum()) / math.log(m) if m > 1 else 0.0
    shift = 2 * exponent * math.log10(2.0)
    return out | {"stable_rank": total / top, "log_spectral_norm": math.log10(top) + shift,
                  "log_norm": math.log10(total) + shift, "entropy": entropy}


def ldexp(x: float, exponent: int) -> float:
    """x · 2^exponent, inf (not OverflowError) past float64's range."""
    try:
        return math.ldexp(x, exponent)
    except OverflowError:
        return math.inf


def nan_metrics() -> dict[str, float]:
    """The metrics of a matrix whose spectrum could not be computed (NaN/Inf entries)."""
    return dict.fromkeys(METRIC_COLUMNS, math.nan)
