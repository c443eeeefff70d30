"""Eigenvalues of W^T W (or W W^T) in float64 on the chosen device (docs/math.md §1)."""

from __future__ import annotations

import math

import torch

from alphaspec.choices import ESD_PRECISIONS
from alphaspec.errors import UsageError

EPS_ZERO = 1e-12  # eigenvalues <= EPS_ZERO * lambda_max count as zero
SOLVE_DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
TRIANGLE_MIN = 512  # CPU Gram matrices from this size on are formed as their lower triangle only
TRIANGLE_BLOCKS = 4
BLOCK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}  # widened rows formed at a time: never the whole matrix


def check_precision(precision: str) -> str:
    if precision not in ESD_PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; use {' or '.join(ESD_PRECISIONS)}")
    return precision


def eigenvalues(w: torch.Tensor, device: torch.device | str | None = None, precision: str = "fp64") -> torch.Tensor:
    """Ascending float64 eigenvalues (squared singular values) of a (rows, cols) matrix or a (B, rows, cols) batch.

    See `scaled_eigenvalues`; here scaled back, so values beyond float64's range become inf or 0.
    """
    lam, exponent = scaled_eigenvalues(w, device, precision)
    return torch.ldexp(lam, (2 * exponent).to(torch.float64)[..., None])


def scaled_eigenvalues(w: torch.Tensor, device: torch.device | str | None = None,
                       precision: str = "fp64") -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues of each matrix scaled by 4^-exponent (so the largest is O(rows)), and the exponents.

    The matrix is moved in its own dtype; on the device, blocks of its rows are widened to float64 (or,
    with precision="fp32", float32) and summed into the Gram matrix of the smaller side, so there are
    min(rows, cols) eigenvalues and the widened copy of a large matrix never exists whole. Each matrix
    is first scaled by 2^-exponent, the power of two that brings its largest entry into [0.5, 1):
    exact in binary floating point, it keeps the Gram product from overflowing (entries near 1e160 in
    float64, 1e20 in float32) or underflowing (1e-170, 1e-30), and the fits, which are scale-free,
    use these values. Round-off negatives become 0. Matrices must be finite (see `finite_scale`); no
    process-wide setting is written, so solver threads may run beside training.
    """
    w = w.to(device=device or w.device, non_blocking=True)
    a = w if w.shape[-2] >= w.shape[-1] else w.mT
    _, exponent = finite_scale(a)
    g = gram(a, gram_dtype(precision, a.device), exponent)
    return torch.linalg.eigvalsh(g.to(SOLVE_DTYPES[precision])).clamp_min_(0.0).to(torch.float64), exponent


def zero_threshold(precision: str, n: int) -> float:
    """Eigenvalues at or below this fraction of the largest count as zero: 1e-12 in float64; in float32 the
    solver's round-off, n·ε (a rank-1 matrix's zero eigenvalues come out near ε·λ_max, not at 0)."""
    return EPS_ZERO if precision == "fp64" else max(EPS_ZERO, n * float(torch.finfo(torch.float32).eps))


def finite_scale(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per matrix of a (..., rows, cols) tensor: whether it is finite, and the power of two of its largest entry.

    Two reductions in the matrix's own dtype (NaN propagates through max and min), no copy of it:
    finite[i] says matrix i holds no NaN/Inf; exponent[i] (int64) is e with max|w_i| in [2^(e-1), 2^e).
    """
    dims = (-2, -1)
    top = torch.maximum(w.amax(dim=dims).double().abs(), w.amin(dim=dims).double().abs())
    finite = torch.isfinite(top)
    _, exponent = torch.frexp(torch.where(finite, top, 1.0))
    return finite, exponent.to(torch.int64)


def gram_dtype(precision: str, device: torch.device) -> torch.dtype:
    """float64 for fp64 solves; for fp32, float32 unless this process lets float32 products run in TF32
    or bfloat16 (then float64 products, rounded to float32 for the solve: never a 10-bit mantissa)."""
    if precision == "fp64":
        return torch.float64
    reduced = torch.get_float32_matmul_precision() != "highest" or (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    return torch.float64 if reduced else torch.float32


def gram(a: torch.Tensor, dtype: torch.dtype = torch.float64, exponent: torch.Tensor | None = None) -> torch.Tensor:
    """The Gram matrix aᵀa of a tall (…, rows, cols) tensor in `dtype`, as `eigvalsh` reads it.

    Rows are widened (and multiplied by 2^-exponent per matrix) a block at a time, BLOCK_BYTES of
    them, and the blocks' products summed. On the CPU, where the product costs as much as the
    eigen-solve, only the lower triangle is formed (block columns, ~35% less time at 5120 columns);
    `eigvalsh` never reads the upper one.
    """
    n = a.shape[-1]
    g = torch.zeros(*a.shape[:-2], n, n, dtype=dtype, device=a.device)
    batch = math.prod(a.shape[:-2])
    rows = max(1, BLOCK_BYTES[a.device.type if a.device.type in BLOCK_BYTES else "cuda"]
               // (batch * n * torch.finfo(dtype).bits // 8))
    if a.device.type != "cpu" or n < TRIANGLE_MIN:
        columns = [(0, n)]
    else:
        edges = [round(i * n / TRIANGLE_BLOCKS) for i in range(TRIANGLE_BLOCKS + 1)]
        columns = list(zip(edges[:-1], edges[1:], strict=True))
    wide = torch.float64 if a.dtype == torch.float64 else dtype  # float64 entries may need a float64 scale
    scale = None if exponent is None else torch.pow(2.0, -exponent.to(a.device, wide))[..., None, None]  # exact
    accumulate = torch.Tensor.addmm_ if a.ndim == 2 else torch.Tensor.baddbmm_
    for start in range(0, a.shape[-2], rows):
        block = a[..., start:start + rows, :].to(wide, copy=True)  # a copy, so scaling never touches `a`
        if scale is not None:
            block = block.mul_(scale).to(dtype)
        for lo, hi in columns:  # g[lo:, lo:hi] += block[:, lo:]ᵀ block[:, lo:hi]
            accumulate(g[..., lo:, lo:hi], block[..., lo:].mT, block[..., lo:hi])
    return g
