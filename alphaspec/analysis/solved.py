"""What every solve of an analysis needs (`Solve`), what solving one matrix gives (`Solved`), and how both
meet the eigenvalue store (analysis/store.py).

The store holds one entry per matrix and precision (its spectrum, and the fits made on it: rows.Fits), one
more per randomised and FARMS solve (their settings in the key). A matrix is taken from the store only when
every part its analysis needs is there.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch

from alphaspec.analysis.rows import Fits, json_safe, matrix_row
from alphaspec.analysis.store import EigenStore, Entry, entry_key
from alphaspec.sources.matrices import MatrixSpec
from alphaspec.spectra.verdicts import WEIGHTS


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


@dataclass
class Solved:
    """What solving one matrix gives: its spectrum scaled by 4^-exponent (None: NaN/Inf entries), the
    randomised columns (and the permuted spectrum under "_randomized"), the FARMS alpha, and the fits made
    on the spectrum so far."""

    eigs: torch.Tensor | None
    exponent: int = 0
    randomized: dict = field(default_factory=dict)
    farms: float = math.nan
    fits: Fits = field(default_factory=Fits)

    def row(self, spec: MatrixSpec, how: Solve) -> tuple[dict, torch.Tensor | None]:
        """The results row and the true spectrum."""
        e = self.eigs
        row = matrix_row(spec, e, how.estimator, how.dtypes.get(spec.tensor, ""), self.exponent, how.precision,
                         how.content, self.fits)
        if how.randomize:
            row |= self.randomized
        if e is not None and self.exponent:
            e = torch.ldexp(e, torch.tensor(2.0 * self.exponent, dtype=e.dtype, device=e.device))  # the true spectrum
        if how.quants:
            row["quant"] = how.quants.get(spec.tensor, "")
        if how.farms:
            row["alpha_farms"] = self.farms
        return row, e


def _keys(spec: MatrixSpec, key: str, how: Solve) -> dict[str, str]:
    keys = {"eigs": entry_key(key, spec.rows, spec.cols, how.precision)}
    if how.randomize:  # each matrix's permutations are seeded by its name
        keys["randomized"] = entry_key(key, spec.rows, spec.cols, how.precision, "randomize", how.seed, how.randomize,
                                       spec.name)
    if how.farms:
        keys["farms"] = entry_key(key, spec.rows, spec.cols, "farms", how.estimator)
    return keys


def view_key(tensor_key: str, spec: MatrixSpec) -> str:
    """The content key of one matrix of a tensor keyed as stored (Checkpoint.stored_key): the tensor's key and
    the view spec takes of it (expert, transpose, rows)."""
    sel = spec.rows_sel
    if isinstance(sel, torch.Tensor):
        sel = hashlib.sha256(sel.cpu().numpy().tobytes()).hexdigest()
    elif isinstance(sel, slice):
        sel = (sel.start, sel.stop, sel.step)
    return entry_key(tensor_key, "view", spec.expert, spec.stacked, spec.transpose, sel, spec.rows, spec.cols)


def stored(spec: MatrixSpec, key: str | None, how: Solve) -> Solved | None:
    """What the store holds of this matrix's analysis (key: its content key), None unless it holds every part."""
    if how.store is None or key is None:
        return None
    entries = {}
    for part, k in _keys(spec, key, how).items():
        if (entries.setdefault(part, how.store.get(k))) is None:
            return None
    eigs = torch.from_numpy(entries["eigs"].arrays["eigs"])
    if eigs.numel() != min(spec.rows, spec.cols):  # a key collision cannot pass this; a bug in a writer might
        return None
    facts = entries["eigs"].facts
    solved = Solved(eigs, int(facts["exponent"]), fits=Fits.from_json(facts.get("fits")))
    if "randomized" in entries:
        solved.randomized = {k: math.nan if v is None else v for k, v in entries["randomized"].facts["columns"].items()}
        if "eigs" in entries["randomized"].arrays:
            solved.randomized["_randomized"] = torch.from_numpy(entries["randomized"].arrays["eigs"])
    if "farms" in entries:
        farms = entries["farms"].facts["alpha_farms"]
        solved.farms = math.nan if farms is None else float(farms)
    return solved


def keep(spec: MatrixSpec, key: str, solved: Solved, how: Solve) -> None:
    """Put what was solved of this matrix (and fitted on it: keep after making its row) into the store."""
    keys = _keys(spec, key, how)
    how.store.put(keys["eigs"], Entry({"eigs": solved.eigs.cpu().numpy()},
                                      {"exponent": solved.exponent, "fits": solved.fits.to_json()}))
    if "randomized" in keys:
        columns = {k: v for k, v in solved.randomized.items() if k != "_randomized"}
        permuted = solved.randomized.get("_randomized")
        how.store.put(keys["randomized"], Entry({} if permuted is None else {"eigs": permuted.cpu().numpy()},
                                                {"columns": json_safe(columns)}))
    if "farms" in keys:
        how.store.put(keys["farms"], Entry({}, {"alpha_farms": json_safe(solved.farms)}))

