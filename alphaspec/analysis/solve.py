"""A checkpoint's matrices -> ESD -> one results row per matrix (analysis/rows.py), the store read and filled.

A reader thread streams tensors file by file (each read once, and on a GPU copied there) into a
small queue while the main thread solves eigenproblems on the device, so reading and transferring
the next tensors overlaps with compute. The entry points (`analyze`, in one process or split over
torchrun's ranks) are in analysis/engine.py.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from alphaspec._version import __version__
from alphaspec.analysis.options import AnalysisOptions
from alphaspec.analysis.pool import bounded_map
from alphaspec.analysis.rows import ordered_table, records
from alphaspec.analysis.solved import Solve, Solved, keep, stored, view_key
from alphaspec.analysis.store import EigenStore, matrix_key, store_enabled
from alphaspec.devices import SolveError
from alphaspec.sources.checkpoint import Checkpoint, SourceError
from alphaspec.sources.matrices import MatrixSpec, ModelConfigError, Plan, Skipped, plan
from alphaspec.sources.read_ahead import read_ahead
from alphaspec.spectra.eigenvalues import finite_scale, scaled_eigenvalues
from alphaspec.spectra.farms import farms_alpha
from alphaspec.spectra.randomize import NAN_RANDOMIZED, RANDOMIZED_SUFFIX, randomized_rows
from alphaspec.spectra.subspaces import TOP_K, pair_metrics
from alphaspec.spectra.verdicts import UNCHANGED

NATIVE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BATCH_BYTES = {"cpu": 8 << 20, "cuda": 1 << 30}  # float64 bytes of same-shape matrices solved together


@dataclass
class Analysis:
    """The results table plus everything needed to account for each tensor of the checkpoint."""

    table: pd.DataFrame
    skipped: list[Skipped]
    notes: list[str]
    source: str
    estimator: str
    device: str
    spectra: dict[str, np.ndarray] = field(default_factory=dict)
    n_tensors: int = 0  # in the checkpoint: analysed, split or skipped
    precision: str = "fp64"

    def to_json(self) -> dict:
        """The JSON layout documented in docs/analyze.md (NaN becomes null)."""
        return {"alphaspec": __version__, "source": self.source, "estimator": self.estimator,
                "device": self.device, "precision": self.precision, "matrices": records(self.table),
                "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped], "notes": self.notes}


def _batches(items: Iterable[tuple[MatrixSpec, torch.Tensor | Solved]], max_bytes: int) -> Iterator[list]:
    """Group consecutive matrices of one shape and dtype while their float64 size stays within max_bytes (what
    the store held, as Solved, in groups of its own under the same bound)."""
    batch: list = []
    for spec, mat in items:
        if batch and (_kind(spec, mat) != _kind(*batch[0]) or (len(batch) + 1) * _numel(spec, mat) * 8 > max_bytes):
            yield batch
            batch = []
        batch.append((spec, mat))
    if batch:
        yield batch


def _kind(spec: MatrixSpec, mat: torch.Tensor | Solved) -> tuple:
    return ("kept",) if isinstance(mat, Solved) else (tuple(mat.shape), mat.dtype, _size(spec))


def _numel(spec: MatrixSpec, mat: torch.Tensor | Solved) -> int:
    return spec.rows * spec.cols if isinstance(mat, Solved) else mat.numel()


def _size(spec: MatrixSpec) -> tuple[int, int]:
    return spec.rows, spec.cols


def is_core(spec: MatrixSpec, mat: torch.Tensor) -> bool:
    """Whether `mat` stands for a larger low-rank matrix (an adapter's s·B·A, deltas.low_rank_core): a small
    matrix with the same non-zero singular values, whose spectrum is padded with zeros to spec's size."""
    return tuple(mat.shape[-2:]) != _size(spec)


def solve_batch(batch: list[tuple[MatrixSpec, torch.Tensor | Solved]], dev: torch.device, how: Solve,
                keys: list[str | None] | None = None) -> list[tuple[dict, torch.Tensor | None]]:
    """Rows (and spectra) of same-shape matrices solved together on `dev`; NaN/Inf matrices get no spectrum.

    keys: each matrix's content key (store.matrix_key; None: not kept). With a store in `how`, the matrices it
    holds are not solved again and those solved here are kept; a matrix given as Solved was taken from it
    already. A failed solve (out of memory, no convergence) is a SolveError naming the matrices.
    """
    keys = keys or [None] * len(batch)
    kept = [m if isinstance(m, Solved) else stored(spec, key, how) for (spec, m), key in zip(batch, keys, strict=True)]
    todo = [i for i, entry in enumerate(kept) if entry is None]
    solved = dict(zip(todo, _solve(*zip(*[batch[i] for i in todo], strict=True), dev, how) if todo else [],
                      strict=True))
    out = []
    for i, (spec, _) in enumerate(batch):
        parts = solved[i] if i in solved else kept[i]
        out.append(parts.row(spec, how))  # (fills parts.fits)
        if i in solved and keys[i] is not None and how.store is not None and parts.eigs is not None:
            keep(spec, keys[i], parts, how)
    return out


def _solve(specs: tuple[MatrixSpec, ...], matrices: tuple[torch.Tensor, ...], dev: torch.device,
           how: Solve) -> list[Solved]:
    """Solve same-shape matrices together (see solve_batch)."""
    if dev.type == "cuda":
        for m in matrices:
            if m.is_cuda:  # staged on the reader's stream: keep the allocator from reusing it too early
                m.record_stream(torch.cuda.current_stream(dev))
    mats = [m.to(dev, non_blocking=True) for m in matrices]
    w = mats[0].unsqueeze(0) if len(mats) == 1 else torch.stack(mats)  # a batch of one is a view, not a copy
    if w.dtype not in NATIVE_FLOATS:  # float8 and other narrow floats lack reductions: promote (exact)
        w = w.float()
    ok, _ = finite_scale(w)
    ok = ok.tolist()
    failure = None
    finite = w if all(ok) else w[torch.tensor(ok, device=w.device)]
    eigs, exponents, randomized = [], torch.zeros(0, dtype=torch.int64), []
    core = is_core(specs[0], w)  # a batch holds matrices of one size: all cores or none
    try:
        if len(finite):
            eigs, exponents = scaled_eigenvalues(finite, dev, how.precision)
            if core:  # the rest of the spectrum of a rank-r matrix: zeros
                m = min(_size(specs[0]))
                eigs = torch.cat([eigs.new_zeros(len(eigs), m - eigs.shape[-1]), eigs], dim=-1)
            if how.randomize and not core:
                names = [spec.name for spec, good in zip(specs, ok, strict=True) if good]
                randomized = randomized_rows(finite, eigs, names, how.seed, dev, how.precision, how.randomize)
    except RuntimeError as err:  # torch.OutOfMemoryError, LinAlgError and CUDA/cuSOLVER errors are RuntimeErrors
        failure = err
    if failure is not None:  # raised outside the handler, so the exception holds no frame (or GPU buffer) of the solve
        del w, mats, finite
        raise SolveError.of(list(specs), failure, dev)
    solved = iter(zip(eigs, exponents.tolist(), randomized or [{}] * len(eigs), strict=True))
    out = []
    for i in range(len(specs)):
        if not ok[i]:
            out.append(Solved(None, 0, dict(NAN_RANDOMIZED)))
            continue
        e, exponent, rand = next(solved)
        if core and how.randomize:
            rand = dict(NAN_RANDOMIZED)  # the entries of a low-rank product are never formed, so not permuted
        # FARMS: the same matrix, cut into square windows (spectra/farms.py)
        farms = farms_alpha(w[i], how.estimator).alpha if how.farms and not core else math.nan
        out.append(Solved(e, exponent, rand, farms))
    return out


def _solver(dev: torch.device, how: Solve, workers: int, keys: dict[str, str | None]) -> Callable[[list], list]:
    """solve_batch for bounded_map, with each matrix's content key (of a matrix in CPU memory computed here, in
    the solver threads, in parallel): with several workers on a GPU, each thread on a CUDA stream of its own."""
    def solve_batch_keyed(batch):
        if how.store is None:
            return solve_batch(batch, dev, how)
        return solve_batch(batch, dev, how, [keys.get(spec.name) or (None if isinstance(m, Solved) else matrix_key(m))
                                             for spec, m in batch])

    if workers <= 1 or dev.type != "cuda":
        return solve_batch_keyed
    local = threading.local()

    def solve(batch):
        if not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(dev)  # dev has an index (resolve_device): right in any thread
        with torch.no_grad(), torch.cuda.device(dev), torch.cuda.stream(local.stream):
            out = solve_batch_keyed(batch)
            local.stream.synchronize()
            return out

    return solve


def _store_callbacks(ckpt: Checkpoint, dev: torch.device, how: Solve, keys: dict[str, str | None]) -> dict:
    """read_ahead's callbacks for the eigenvalue store, filling `keys`: `kept` asks the store for a tensor keyed
    as stored (a GGUF file's blocks) before it is read; on a GPU, `on_read` keys a matrix before its copy."""
    if how.store is None:
        return {}

    def on_read(spec: MatrixSpec, m: torch.Tensor) -> None:
        if spec.name not in keys:
            keys[spec.name] = matrix_key(m)

    def kept(name: str, specs: list[MatrixSpec]) -> list[Solved] | None:
        key = ckpt.stored_key(name, dev)
        if key is None:
            return None
        keys.update({spec.name: view_key(key, spec) for spec in specs})
        parts = [stored(spec, keys[spec.name], how) for spec in specs]
        return None if any(part is None for part in parts) else parts

    return {"kept": kept} | ({"on_read": on_read} if dev.type == "cuda" else {})


def plan_checkpoint(ckpt: Checkpoint, include: Iterable[str], exclude: Iterable[str], split_fused: bool) -> Plan:
    """The module map of a checkpoint; a checkpoint without any weight matrix is an error that says why."""
    try:
        todo = plan(ckpt.tensors, ckpt.config, split_fused=split_fused, include=include, exclude=exclude)
    except ModelConfigError as err:
        raise SourceError(f"{ckpt.config_file}: {err}") from err
    if not todo.matrices:
        reasons = Counter(s.reason for s in todo.skipped).most_common(2)
        raise SourceError(f"{ckpt.source}: no weight matrix to analyse among its {len(ckpt.tensors)} tensor(s) ("
                          + "; ".join(f"{n} x {r}" for r, n in reasons) + ")")
    return todo


def solve_options(ckpt: Checkpoint, options: AnalysisOptions) -> Solve:
    """What every solve of this checkpoint needs, from the analysis options and the checkpoint's own headers."""
    return Solve(options.estimator, {t.name: t.dtype for t in ckpt.tensors}, options.farms,
                 {t.name: t.quant for t in ckpt.tensors if t.quant}, options.precision, options.randomize, options.seed,
                 ckpt.content, EigenStore() if options.cache and store_enabled() else None)


def solve_matrices(ckpt: Checkpoint, matrices: list[MatrixSpec], dev: torch.device, how: Solve, *, workers: int = 1,
                   keep_spectra: bool = False, on_solved: Callable[[int], None] | None = None
                   ) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Rows (and spectra) of `matrices`, read from the checkpoint's files in order, solved on `dev`."""
    rows: list[dict] = []
    spectra: dict[str, np.ndarray] = {}
    compared: dict[str, dict] = {}  # an update's rel_change and subspace_overlap against its base, by matrix

    def compare(spec: MatrixSpec, before: torch.Tensor, after: torch.Tensor) -> None:
        compared[spec.name] = pair_metrics(before, after, TOP_K)

    def collect(solved: list[tuple[dict, torch.Tensor | None]]) -> None:
        for row, eigs in solved:
            randomized = row.pop("_randomized", None)  # --randomize: the permuted matrix's spectrum
            rows.append(row | compared.pop(row["name"], {}))
            if keep_spectra and eigs is not None:
                spectra[row["name"]] = eigs.cpu().numpy()
            if keep_spectra and randomized is not None:
                spectra[row["name"] + RANDOMIZED_SUFFIX] = randomized.cpu().numpy()
        if on_solved:
            on_solved(len(solved))

    keys: dict[str, str | None] = {}  # content keys computed in the reader thread (_store_callbacks)
    staged = read_ahead(ckpt, matrices, threading.Event(), dev, on_versions=compare,
                        **_store_callbacks(ckpt, dev, how, keys))
    batches = _batches(staged, BATCH_BYTES["cuda" if dev.type == "cuda" else "cpu"])
    failure = None
    try:
        with torch.no_grad():  # (worker threads set it for themselves in _solver)
            for solved in bounded_map(_solver(dev, how, workers, keys), batches, workers, "alphaspec-solver"):
                collect(solved)
    except SolveError as err:
        failure = SolveError(f"{ckpt.source}: {err}")
    finally:
        staged.close()  # stops and joins the reader thread and drops what it staged, also after a failure
    if failure is not None:
        raise failure
    if how.store is not None:
        how.store.trim()
    return rows, spectra


def assemble(rows: list[dict], spectra: dict[str, np.ndarray], ckpt: Checkpoint, todo: Plan, source: str,
             how: Solve, device: str) -> Analysis:
    """The Analysis of solved rows: the ordered table, with source, skips and notes also in its attrs."""
    table = ordered_table(rows)
    notes = ckpt.notes + todo.notes
    if len(table) and table["status"].isin(["all-zero matrix", UNCHANGED]).all():
        notes.append("every matrix is all zeros" + (": the base holds exactly these weights (nothing changed)"
                                                    if getattr(ckpt, "base", None) is not None else ""))
    if how.precision != "fp64":
        notes.append(f"eigenvalues solved in {how.precision} (--precision): alphas differ from the float64 ones "
                     "by the error measured in docs/analyze.md")
    table.attrs.update({"source": source, "estimator": how.estimator, "device": device, "precision": how.precision,
                        "skipped": [{"name": s.name, "reason": s.reason} for s in todo.skipped], "notes": list(notes)})
    return Analysis(table, todo.skipped, notes, source, how.estimator, device, spectra, len(ckpt.tensors),
                    how.precision)
