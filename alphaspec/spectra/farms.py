"""FARMS (Hu et al., ICML 2025): alpha without the aspect-ratio bias, from square windows of a matrix.

The alpha of a random matrix depends on its shape (≈2.1 square, ≈3 at aspect 0.375; docs/math.md §2),
so matrices of different shapes are not comparable. FARMS cuts the matrix into overlapping square
windows on a regular grid (`per_dim` starts along each axis), pools the eigenvalues of every
window's Gram matrix into one spectrum and fits that. The windows are solved in batches with one
`eigvalsh` call per batch, on the matrix's device. Unlike the paper's code, a window is never larger
than the matrix: it is min(window, rows, cols) on a side, so small matrices keep square windows.
"""

from __future__ import annotations

import torch

from alphaspec.spectra.eigenvalues import EPS_ZERO
from alphaspec.spectra.powerlaw import PowerLawFit, fit_sorted

WINDOW = 2000  # the paper's LLaMA setting (num_row_samples)
PER_DIM = 10  # windows along each axis (sampling_ops_per_dim)


def window_starts(dim: int, window: int, per_dim: int = PER_DIM) -> list[int]:
    """The starts of a window along an axis of length `dim`, on the authors' grid (FARMS's `fixed_sampling`):
    an integer step ⌊(dim − window)/(per_dim − 1)⌋ (at least 1), at most `per_dim` starts, the last no
    further than dim − window. When per_dim − 1 does not divide dim − window the last window stops short
    of the end, as in their code."""
    if per_dim < 1 or window > dim:
        raise ValueError(f"need per_dim >= 1 and a window ({window}) no longer than the axis ({dim})")
    if per_dim == 1 or window == dim:
        return [0]
    step = max(1, (dim - window) // (per_dim - 1))
    count = min(per_dim, max(1, (dim - window) // step + 1))
    return [min(i * step, dim - window) for i in range(count)]


def farms_spectrum(w: torch.Tensor, window: int = WINDOW, per_dim: int = PER_DIM,
                   batch_bytes: int = 1 << 28) -> torch.Tensor:
    """The pooled eigenvalues (ascending, float64, on w's device) of the Gram matrices of w's square windows."""
    if w.ndim != 2:
        raise ValueError(f"FARMS needs a matrix, got shape {tuple(w.shape)}")
    m = min(window, *w.shape)
    w = w.detach().to(torch.float64)
    corners = [(r, c) for r in window_starts(w.shape[0], m, per_dim) for c in window_starts(w.shape[1], m, per_dim)]
    per_batch = max(1, batch_bytes // (2 * 8 * m * m))  # a window and its Gram matrix, float64
    pooled = []
    for i in range(0, len(corners), per_batch):
        blocks = torch.stack([w[r:r + m, c:c + m] for r, c in corners[i:i + per_batch]])
        pooled.append(torch.linalg.eigvalsh(blocks.transpose(1, 2) @ blocks).flatten())
    return torch.sort(torch.cat(pooled).clamp_min(0)).values


def farms_alpha(w: torch.Tensor, estimator: str = "median", window: int = WINDOW,
                per_dim: int = PER_DIM) -> PowerLawFit:
    """The power-law fit (any estimator) of the pooled window spectrum; zeros (<= 1e-12 of the largest) left out."""
    lam = farms_spectrum(w, window, per_dim)
    if lam.numel() == 0 or float(lam[-1]) == 0.0:
        return PowerLawFit.empty("all-zero matrix")
    return fit_sorted(lam[lam > EPS_ZERO * lam[-1]], estimator)
