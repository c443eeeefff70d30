"""How two versions of one matrix differ (`diff`, and `analyze --base` for an update's rows):

  rel_change        ‖W_B − W_A‖_F / ‖W_A‖_F
  subspace_overlap  how much of A's top-k right singular subspace (its k strongest input directions) B
                    keeps: ‖V_Aᵀ V_B‖_F² / k, 1 when the same directions dominate, about k/m for unrelated
                    ones (m = columns). Exact: eigenvectors of the float64 Gram matrix of the smaller side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the solves, not with the CLI's option defaults
    import torch

TOP_K = 8  # the singular directions subspace_overlap compares (diff --top-k)
UPDATE_COLUMNS = ("rel_change", "subspace_overlap")  # an update's rows beside its base (analyze --base)


def top_right_subspace(w: torch.Tensor, k: int) -> torch.Tensor:
    """An orthonormal basis (cols × k) of w's top-k right singular subspace, exact: the eigenvectors of the
    float64 Gram matrix of w's smaller side (for a wide w, Wᵀ applied to its top left vectors)."""
    import torch

    w = w.double()
    w = w / w.abs().max()  # the subspace is scale-free; this keeps the Gram product in range
    if w.shape[0] >= w.shape[1]:
        return torch.linalg.eigh(w.mT @ w).eigenvectors[:, -k:]
    return torch.linalg.qr(w.mT @ torch.linalg.eigh(w @ w.mT).eigenvectors[:, -k:]).Q


def right_basis(w: torch.Tensor, k: int) -> torch.Tensor | None:
    """top_right_subspace of w for subspace_overlap; None where it has none to compare (k < 1, NaN/Inf entries,
    all zeros)."""
    import torch

    if k < 1 or not bool(torch.isfinite(w).all()) or not bool(w.any()):
        return None
    return top_right_subspace(w, k)


def pair_metrics(a: torch.Tensor, b: torch.Tensor, top_k: int, basis_a: torch.Tensor | None = None,
                 basis_b: torch.Tensor | None = None) -> dict[str, float]:
    """rel_change and subspace_overlap of two versions of one matrix. basis_a/basis_b: their right_basis when the
    caller has it already (diff's middle checkpoints are each the `b` of one pair and the `a` of the next); two
    equal versions share one (an unchanged matrix of a fine-tune costs one solve, not two)."""
    import torch

    a, b = a.double(), b.double()
    norm = float(torch.linalg.matrix_norm(a))
    rel = float(torch.linalg.matrix_norm(b - a)) / norm if norm > 0 else float("nan")
    k = min(top_k, *a.shape)
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return {"rel_change": float("nan"), "subspace_overlap": float("nan")}
    va = basis_a if basis_a is not None else right_basis(a, k)
    vb = basis_b if basis_b is not None else va if torch.equal(a, b) else right_basis(b, k)
    if va is None or vb is None:
        return {"rel_change": rel, "subspace_overlap": float("nan")}
    return {"rel_change": rel, "subspace_overlap": float((va.mT @ vb).square().sum()) / k}
