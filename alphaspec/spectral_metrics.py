"""Per-matrix spectral metrics from the eigenvalues (docs/math.md §1): norms, stable rank, entropy."""

from __future__ import annotations

import math

import torch

METRIC_COLUMNS = ("lambda_max", "spectral_norm", "frobenius_norm", "stable_rank", "log_spectral_norm",
                  "log_norm", "entropy")


def spectral_metrics(eigs: torch.Tensor) -> dict[str, float]:
    """Metrics of one ESD given all its min(rows, cols) eigenvalues (zeros included), sorted ascending.

    An all-zero spectrum has zero norms; ratios and logarithms of zero are NaN rather than -inf.
    """
    m = eigs.numel()
    lam_max = float(eigs[-1]) if m else 0.0
    total = float(eigs.sum())
    out = {"lambda_max": lam_max, "spectral_norm": math.sqrt(lam_max), "frobenius_norm": math.sqrt(total)}
    if lam_max <= 0.0:
        return out | {"stable_rank": math.nan, "log_spectral_norm": math.nan, "log_norm": math.nan,
                      "entropy": math.nan}
    p = eigs / total
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros((), dtype=p.dtype, device=p.device))
    entropy = float(-plogp.sum()) / math.log(m) if m > 1 else 0.0
    return out | {"stable_rank": total / lam_max, "log_spectral_norm": math.log10(lam_max),
                  "log_norm": math.log10(total), "entropy": entropy}


def nan_metrics() -> dict[str, float]:
    """The metrics of a matrix whose spectrum could not be computed (NaN/Inf entries)."""
    return dict.fromkeys(METRIC_COLUMNS, math.nan)
