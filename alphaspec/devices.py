"""The device work runs on (`--device auto|cpu|cuda|cuda:N`), and the errors of work that failed there."""

from __future__ import annotations

import torch

from alphaspec.errors import AlphaspecError, first_line


class DeviceError(AlphaspecError, ValueError):
    """The requested device does not exist on this machine."""


class SolveError(AlphaspecError):
    """An eigen-solve that failed (out of memory, no convergence), naming the matrices and what to try."""

    @classmethod
    def of(cls, specs: list, err: RuntimeError, device: torch.device, during: str = "the eigen-solve") -> SolveError:
        """The error for `specs` (objects with name, rows, cols) whose solve on `device` raised `err`."""
        first = specs[0]
        what = f"{first.name} ({first.rows}x{first.cols}" + (f", and {len(specs) - 1} more of that shape)"
                                                             if len(specs) > 1 else ")")
        text = first_line(err)
        if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text:
            advice = "--workers 1 or --device cpu" if device.type == "cuda" else "a machine with more memory"
            return cls(f"{what}: out of memory on {device} in {during}; try {advice} "
                       "(--precision fp32 halves the solver's memory)")
        if isinstance(err, torch.linalg.LinAlgError):
            return cls(f"{what}: the eigen-solver did not converge on {device} ({text})"
                       + ("; try --device cpu" if device.type == "cuda" else ""))
        return cls(f"{what}: {during} failed on {device} ({text})")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to use, always with an index on CUDA (`cuda` is the current device, `cuda:0` by default).

    `auto` means the current CUDA device when there is one, else the CPU; a missing CUDA is an error.
    An indexed device means the same GPU in every thread (a thread's current device starts at 0) and
    is what `torch.cuda.set_device` requires.
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} requested but CUDA is not available on this machine")
        if dev.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu" and not isinstance(device, torch.device):  # torch.device objects: the caller's choice
        raise DeviceError(f"unsupported device {str(device)!r}; use auto, cpu, cuda or cuda:N")
    return dev
