"""What an analysis would do, from the headers alone: the matrices with their shapes, types and splits, what
is skipped and why, and an estimate of its time and memory on this device (`analyze --dry-run`).

Nothing is read but the headers, so any size answers in seconds. The time is a model, not a measurement: each
matrix costs its Gram product (2·rows·cols·m multiply-adds for m = min(rows, cols)) and its symmetric
eigen-solve (about 9·m³), at the rate this device shows on one calibration solve with all its threads (the
workers share those cores), plus what fitting and writing a row costs.
The memory is what the solver holds at once: per worker, a matrix in float64 and its m×m Gram matrix twice
(the product and the solver's copy), plus what the reader stages ahead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pandas as pd
import torch

from alphaspec.analysis.options import AnalysisOptions
from alphaspec.analysis.rows import row_order
from alphaspec.analysis.solve import plan_checkpoint
from alphaspec.sources.checkpoint import Checkpoint
from alphaspec.sources.matrices import Skipped
from alphaspec.sources.read_ahead import STAGED_BYTES
from alphaspec.spectra.eigenvalues import scaled_eigenvalues

CALIBRATION = 512  # the side of the calibration matrix: a few milliseconds on any device
PER_MATRIX = 0.004  # seconds beside the solve: the fits, the norms, the row (measured on a 2-core CPU)
EIGH_FLOPS = 9.0  # multiply-adds of a symmetric eigen-solve, per m³ (tridiagonal reduction and QR/divide and conquer)
COLUMNS = ["name", "tensor", "module", "layer", "rows", "cols", "n_eigs", "dtype", "part", "cost"]


@dataclass
class DryRun:
    """The plan of an analysis: one row per matrix (`part`: the share of a fused tensor it is, or ""), the
    tensors left out and why, and the estimates."""

    table: pd.DataFrame
    skipped: list[Skipped]
    n_tensors: int
    device: str
    workers: int
    seconds: float  # estimated solve time on `device` with `workers`
    peak_bytes: int  # estimated memory the solver holds at once
    rate: float  # multiply-adds per second measured on the device

    def summary(self) -> pd.DataFrame:
        """Per module type: matrices, their most common shape, and their share of the estimated time."""
        t = self.table
        if t.empty:
            return pd.DataFrame(columns=["module", "matrices", "shape", "share"])
        groups = t.groupby("module", sort=False)
        shapes = groups.apply(lambda g: "{}x{}".format(*g[["rows", "cols"]].value_counts().idxmax()),
                              include_groups=False)
        return pd.DataFrame({"module": list(groups.groups), "matrices": groups.size().to_numpy(),
                             "shape": shapes.to_numpy(), "share": (groups["cost"].sum() / t["cost"].sum()).to_numpy()})


def matrix_cost(rows: int, cols: int) -> float:
    """Multiply-adds of one matrix's spectrum: its Gram product and the eigen-solve."""
    m = min(rows, cols)
    return 2.0 * rows * cols * m + EIGH_FLOPS * m**3


def device_rate(device: torch.device) -> float:
    """Multiply-adds per second of the solver on `device`, from one solve of a CALIBRATION-square matrix (the
    second of two: the first pays for start-up)."""
    w = torch.randn(1, CALIBRATION, CALIBRATION, dtype=torch.float32, device=device)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        scaled_eigenvalues(w, device, "fp64")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return matrix_cost(CALIBRATION, CALIBRATION) / max(seconds[-1], 1e-6)


def dry_run(ckpt: Checkpoint, options: AnalysisOptions, device: torch.device, rate: float | None = None) -> DryRun:
    """The plan of analysing `ckpt` by `options` on `device` (rate: multiply-adds per second, measured when
    not given)."""
    todo = plan_checkpoint(ckpt, options.include, options.exclude, options.split_fused)
    dtypes = {t.name: t.dtype for t in ckpt.tensors}
    per_tensor = pd.Series([m.tensor for m in todo.matrices]).value_counts() if todo.matrices else pd.Series()
    rows = [{"name": m.name, "tensor": m.tensor, "module": m.module, "layer": m.layer, "rows": m.rows,
             "cols": m.cols, "n_eigs": min(m.rows, m.cols), "dtype": dtypes.get(m.tensor, ""),
             "part": _part(m.name, m.tensor, int(per_tensor.get(m.tensor, 1)), m.expert),
             "cost": matrix_cost(m.rows, m.cols) * (1 + options.randomize), "expert": m.expert, "stack": m.stack}
            for m in todo.matrices]
    table = pd.DataFrame(sorted(rows, key=row_order), columns=COLUMNS)  # in the order of analyze's table
    rate = rate or device_rate(device)
    workers = max(1, options.workers)
    biggest = max(((r["rows"] * r["cols"] + 2 * r["n_eigs"] ** 2) * 8 for r in rows), default=0)
    staged = STAGED_BYTES["cuda" if device.type == "cuda" else "cpu"]
    return DryRun(table, todo.skipped, len(ckpt.tensors), str(device), workers,
                  float(table["cost"].sum()) / rate + PER_MATRIX * len(rows) * (1 + options.randomize),
                  biggest * workers + min(staged, sum(_nbytes(t.shape, t.dtype) for t in ckpt.tensors)), rate)


def _nbytes(shape: tuple[int, ...], dtype: str) -> int:
    kind = getattr(torch, dtype, None)
    return math.prod(shape) * (kind.itemsize if isinstance(kind, torch.dtype) else 4)


def _part(name: str, tensor: str, parts: int, expert: int | None) -> str:
    """How the matrix relates to its tensor: a named part of a fused one ("q of 3"), an expert, or whole ("")."""
    if expert is not None:
        return f"expert {expert}"
    if parts > 1:
        label = name[len(tensor):].strip("[]") if name.startswith(tensor) else name
        return f"{label} of {parts}"
    return ""
