"""Eigenvalues of W^T W (or W W^T) in float64 on the chosen device (MATH.md §1)."""

from __future__ import annotations

import torch

EPS_ZERO = 1e-12  # eigenvalues <= EPS_ZERO * lambda_max count as zero


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU; a missing CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def eigenvalues(w: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Ascending eigenvalues (squared singular values) of a (rows, cols) matrix or a (B, rows, cols) batch.

    The matrix is moved in its own dtype and promoted to float64 on the device; the Gram matrix is
    formed on the smaller side, so there are min(rows, cols) eigenvalues. Round-off negatives become 0.
    """
    w = w.to(device=device or w.device, non_blocking=True).to(torch.float64)
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT
    return torch.linalg.eigvalsh(gram).clamp_min_(0.0)


def finite_rows(w: torch.Tensor) -> torch.Tensor:
    """Which matrices of a (B, rows, cols) batch hold only finite numbers."""
    return torch.isfinite(w).flatten(1).all(1)
