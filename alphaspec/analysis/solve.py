"""A checkpoint's matrices -> ESD -> fits and metrics -> one results row per matrix.

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
from alphaspec.analysis.store import EigenStore, Entry, entry_key, matrix_key, store_enabled
from alphaspec.devices import SolveError
from alphaspec.sources.checkpoint import Checkpoint, SourceError
from alphaspec.sources.matrices import MODULE_TYPES, MatrixSpec, ModelConfigError, Plan, Skipped, plan
from alphaspec.sources.read_ahead import read_ahead
from alphaspec.spectra.eigenvalues import finite_scale, scaled_eigenvalues, zero_threshold
from alphaspec.spectra.farms import farms_alpha
from alphaspec.spectra.gaussian import random_alpha
from alphaspec.spectra.mp_bulk import BULK_COLUMNS, RANDOMIZED_COLUMNS, mp_bulk
from alphaspec.spectra.norms import ldexp, nan_metrics, spectral_metrics
from alphaspec.spectra.powerlaw import PowerLawFit, fit_with_gof
from alphaspec.spectra.randomize import NAN_RANDOMIZED, RANDOMIZED_SUFFIX, randomized_rows
from alphaspec.spectra.subspaces import TOP_K, UPDATE_COLUMNS, pair_metrics
from alphaspec.spectra.verdicts import UNCHANGED, WEIGHTS, verdicts

COLUMNS = ["name", "layer", "module", "rows", "cols", "n_eigs", "n_zero", "estimator", "alpha", "xmin",
           "ks_d", "n_tail", "lambda_max", "spectral_norm", "frobenius_norm", "stable_rank",
           "log_spectral_norm", "log_norm", "alpha_weighted", "entropy", "status", "expert", "tensor", "dtype", "stack",
           "alpha_random", "alpha_gof", "content", *BULK_COLUMNS, "warning"]
NATIVE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OPTIONAL_COLUMNS = ("alpha_farms", "quant", *RANDOMIZED_COLUMNS, *UPDATE_COLUMNS)
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


def records(table: pd.DataFrame) -> list[dict]:
    """Table rows as plain dicts, empty and non-finite values as None (for JSON and for sending between ranks)."""
    def clean(v):
        return None if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)) else v

    return [{k: clean(v) for k, v in row.items()} for row in table.astype(object).to_dict("records")]


def _batches(items: Iterable[tuple[MatrixSpec, torch.Tensor]], max_bytes: int) -> Iterator[list]:
    """Group consecutive matrices of one shape and dtype while their float64 size stays within max_bytes."""
    batch: list = []
    for spec, mat in items:
        first = batch[0][1] if batch else None
        if batch and (mat.shape != first.shape or mat.dtype != first.dtype or _size(spec) != _size(batch[0][0])
                      or (len(batch) + 1) * mat.numel() * 8 > max_bytes):
            yield batch
            batch = []
        batch.append((spec, mat))
    if batch:
        yield batch


def _size(spec: MatrixSpec) -> tuple[int, int]:
    return spec.rows, spec.cols


def is_core(spec: MatrixSpec, mat: torch.Tensor) -> bool:
    """Whether `mat` stands for a larger low-rank matrix (an adapter's s·B·A, deltas.low_rank_core): a small
    matrix with the same non-zero singular values, whose spectrum is padded with zeros to spec's size."""
    return tuple(mat.shape[-2:]) != _size(spec)


def matrix_row(spec: MatrixSpec, eigs: torch.Tensor | None, estimator: str, dtype: str, exponent: int = 0,
               precision: str = "fp64", content: str = WEIGHTS) -> dict:
    """One results row from a matrix's eigenvalues, scaled by 4^-exponent (None when the matrix held NaN/Inf).

    content: what the matrix is (weights, or an update: delta, adapter); an all-zero update is `unchanged`."""
    row = {"name": spec.name, "layer": spec.layer, "module": spec.module, "rows": spec.rows, "cols": spec.cols,
           "n_eigs": min(spec.rows, spec.cols), "estimator": estimator, "expert": spec.expert, "tensor": spec.tensor,
           "dtype": dtype, "stack": spec.stack, "content": content,
           "alpha_random": random_alpha(spec.rows, spec.cols, estimator)}  # the same shape's Gaussian matrix
    if eigs is None:
        fit = PowerLawFit.empty("matrix contains NaN or Inf")
        return (row | {"n_zero": 0} | _fit_columns(fit) | nan_metrics() | {"alpha_weighted": math.nan,
                "alpha_gof": math.nan} | mp_bulk(eigs, spec.rows, spec.cols))
    row |= metrics_of(eigs, estimator, exponent, precision) | mp_bulk(eigs, spec.rows, spec.cols, exponent)
    if content != WEIGHTS and row["status"] == "all-zero matrix":
        row["status"] = UNCHANGED
    return row


def metrics_of(eigs: torch.Tensor, estimator: str, exponent: int = 0, precision: str = "fp64") -> dict:
    """n_zero, the fit columns, alpha_gof (what the over/under-trained verdicts read) and the norm metrics of one
    ascending float64 spectrum (zeros included), its values scaled by 4^-exponent: the fits are scale-free, so
    they use the scaled values; xmin and the norms are scaled back. Eigenvalues within the solver's round-off
    of zero (`esd.zero_threshold`) are zeros."""
    metrics = spectral_metrics(eigs, exponent)
    top = float(eigs[-1]) if eigs.numel() else 0.0
    n_zero = int((eigs <= zero_threshold(precision, eigs.numel()) * top).sum()) if top > 0 else eigs.numel()
    fit = gof = PowerLawFit.empty("all-zero matrix")
    if top > 0:
        fit, gof = fit_with_gof(eigs[n_zero:], estimator)
    weighted = fit.alpha * metrics["log_spectral_norm"]
    return ({"n_zero": n_zero} | _fit_columns(fit) | {"xmin": ldexp(fit.xmin, 2 * exponent)} | metrics
            | {"alpha_weighted": weighted, "alpha_gof": gof.alpha})


@dataclass(frozen=True)
class Solve:
    """What every solve of one analysis needs: the estimator, each tensor's stored dtype (and GGUF
    quantisation type), whether FARMS alphas are wanted too, and the solver's precision (fp64 | fp32)."""

    estimator: str
    dtypes: dict[str, str]
    farms: bool = False
    quants: dict[str, str] = field(default_factory=dict)
    precision: str = "fp64"
    randomize: int = 0  # permutations of each matrix's entries to solve as well (spectra/randomize.py); 0: none
    seed: int = 0  # of those permutations
    content: str = WEIGHTS  # what the checkpoint's matrices are: weights, or updates (delta, adapter)
    store: EigenStore | None = None  # the eigenvalue store to read and fill (None: solve everything)


def solve_batch(batch: list[tuple[MatrixSpec, torch.Tensor]], dev: torch.device, how: Solve,
                keys: list[str | None] | None = None) -> list[tuple[dict, torch.Tensor | None]]:
    """Rows (and spectra) of same-shape matrices solved together on `dev`; NaN/Inf matrices get no spectrum.

    keys: each matrix's content key (store.matrix_key; None: not kept). With a store in `how`, the matrices it
    holds are not solved again and those solved here are kept. A failed solve (out of memory, no convergence)
    is a SolveError naming the matrices.
    """
    keys = keys or [None] * len(batch)
    stored = [_stored(spec, key, how) for (spec, _), key in zip(batch, keys, strict=True)]
    todo = [i for i, entry in enumerate(stored) if entry is None]
    solved = dict(zip(todo, _solve(*zip(*[batch[i] for i in todo], strict=True), dev, how) if todo else [],
                      strict=True))
    out = []
    for i, (spec, _) in enumerate(batch):
        parts = solved[i] if i in solved else stored[i]
        if i in solved and keys[i] is not None and how.store is not None and parts.eigs is not None:
            _keep(spec, keys[i], parts, how)
        out.append(parts.row(spec, how))
    return out


@dataclass
class Solved:
    """What solving one matrix gives: its spectrum scaled by 4^-exponent (None: NaN/Inf entries), the
    randomised columns (and the permuted spectrum under "_randomized"), the FARMS alpha."""

    eigs: torch.Tensor | None
    exponent: int = 0
    randomized: dict = field(default_factory=dict)
    farms: float = math.nan

    def row(self, spec: MatrixSpec, how: Solve) -> tuple[dict, torch.Tensor | None]:
        """The results row and the true spectrum."""
        e = self.eigs
        row = matrix_row(spec, e, how.estimator, how.dtypes.get(spec.tensor, ""), self.exponent, how.precision,
                         how.content)
        if how.randomize:
            row |= self.randomized
        if e is not None and self.exponent:
            e = torch.ldexp(e, torch.tensor(2.0 * self.exponent, dtype=e.dtype, device=e.device))  # the true spectrum
        if how.quants:
            row["quant"] = how.quants.get(spec.tensor, "")
        if how.farms:
            row["alpha_farms"] = self.farms
        return row, e


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


# -- the eigenvalue store (analysis/store.py): one entry per matrix and precision, one more per randomised and
# -- FARMS solve (their settings in the key); a matrix is taken from the store only when every part it needs is there
def _keys(spec: MatrixSpec, key: str, how: Solve) -> dict[str, str]:
    keys = {"eigs": entry_key(key, spec.rows, spec.cols, how.precision)}
    if how.randomize:  # each matrix's permutations are seeded by its name
        keys["randomized"] = entry_key(key, spec.rows, spec.cols, how.precision, "randomize", how.seed, how.randomize,
                                       spec.name)
    if how.farms:
        keys["farms"] = entry_key(key, spec.rows, spec.cols, "farms", how.estimator)
    return keys


def _stored(spec: MatrixSpec, key: str | None, how: Solve) -> Solved | None:
    if how.store is None or key is None:
        return None
    entries = {}
    for part, k in _keys(spec, key, how).items():
        if (entries.setdefault(part, how.store.get(k))) is None:
            return None
    eigs = torch.from_numpy(entries["eigs"].arrays["eigs"])
    if eigs.numel() != min(spec.rows, spec.cols):  # a key collision cannot pass this; a bug in a writer might
        return None
    solved = Solved(eigs, int(entries["eigs"].facts["exponent"]))
    if "randomized" in entries:
        solved.randomized = {k: math.nan if v is None else v for k, v in entries["randomized"].facts["columns"].items()}
        if "eigs" in entries["randomized"].arrays:
            solved.randomized["_randomized"] = torch.from_numpy(entries["randomized"].arrays["eigs"])
    if "farms" in entries:
        farms = entries["farms"].facts["alpha_farms"]
        solved.farms = math.nan if farms is None else float(farms)
    return solved


def _keep(spec: MatrixSpec, key: str, solved: Solved, how: Solve) -> None:
    keys = _keys(spec, key, how)
    how.store.put(keys["eigs"], Entry({"eigs": solved.eigs.cpu().numpy()}, {"exponent": solved.exponent}))
    if "randomized" in keys:
        columns = {k: v for k, v in solved.randomized.items() if k != "_randomized"}
        permuted = solved.randomized.get("_randomized")
        how.store.put(keys["randomized"], Entry({} if permuted is None else {"eigs": permuted.cpu().numpy()},
                                                {"columns": _plain(columns)}))
    if "farms" in keys:
        how.store.put(keys["farms"], Entry({}, {"alpha_farms": _plain(solved.farms)}))


def _plain(value):
    """A JSON-safe copy: numbers as Python numbers, NaN as None (read back as NaN)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _solver(dev: torch.device, how: Solve, workers: int, keys: dict[str, str | None]) -> Callable[[list], list]:
    """solve_batch for bounded_map, with each matrix's content key (of a matrix in CPU memory computed here, in
    the solver threads, in parallel): with several workers on a GPU, each thread on a CUDA stream of its own."""
    def solve_batch_keyed(batch):
        if how.store is None:
            return solve_batch(batch, dev, how)
        return solve_batch(batch, dev, how, [keys.get(spec.name) or matrix_key(m) for spec, m in batch])

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


def row_order(row: dict) -> tuple:
    """Embeddings, then blocks by layer and module type, then other tensors, then the head."""
    module = row["module"]
    group = 0 if module == "embed" else 3 if module == "lm_head" else 1 if row["layer"] is not None else 2
    expert = -1 if row["expert"] is None else row["expert"]
    return group, row["stack"] or "", row["layer"] or 0, MODULE_TYPES.index(module), expert, row["name"]


def ordered_table(rows: list[dict]) -> pd.DataFrame:
    """Rows in reading order for people (see row_order), integer columns that may be empty as Int64."""
    extra = [c for c in OPTIONAL_COLUMNS if rows and c in rows[0]]  # columns only some analyses have
    table = pd.DataFrame(sorted(rows, key=row_order), columns=COLUMNS + extra)
    for col in ("layer", "expert"):
        table[col] = table[col].astype("Int64")
    table["warning"] = verdicts(table)  # with the default thresholds; the CLI applies the user's
    return table


def _fit_columns(fit: PowerLawFit) -> dict:
    return {"alpha": fit.alpha, "xmin": fit.xmin, "ks_d": fit.ks_d, "n_tail": fit.n_tail, "status": fit.status}


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

    keys: dict[str, str | None] = {}  # content keys of matrices staged on a GPU, computed before the copy

    def key(spec: MatrixSpec, m: torch.Tensor) -> None:
        keys[spec.name] = matrix_key(m)

    staged = read_ahead(ckpt, matrices, threading.Event(), dev, on_versions=compare,
                        on_read=key if how.store is not None and dev.type == "cuda" else None)
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
