"""A matrix's spectrum -> its results row (fits, norms, the Marchenko–Pastur columns); rows -> the table.

A spectrum's fits can come in already made (`Fits`, kept beside the spectrum in the eigenvalue store):
a later command on the same checkpoint then fits only what no earlier one did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from alphaspec.digests import source_digest
from alphaspec.sources.matrices import MODULE_TYPES, MatrixSpec
from alphaspec.spectra import eigenvalues, gaussian, powerlaw
from alphaspec.spectra.eigenvalues import zero_threshold
from alphaspec.spectra.gaussian import random_alpha
from alphaspec.spectra.mp_bulk import BULK_COLUMNS, RANDOMIZED_COLUMNS, mp_bulk
from alphaspec.spectra.norms import ldexp, nan_metrics, spectral_metrics
from alphaspec.spectra.powerlaw import PowerLawFit, fit_with_gof
from alphaspec.spectra.subspaces import UPDATE_COLUMNS
from alphaspec.spectra.verdicts import UNCHANGED, WEIGHTS, verdicts

COLUMNS = ["name", "layer", "module", "rows", "cols", "n_eigs", "n_zero", "estimator", "alpha", "xmin",
           "ks_d", "n_tail", "lambda_max", "spectral_norm", "frobenius_norm", "stable_rank",
           "log_spectral_norm", "log_norm", "alpha_weighted", "entropy", "status", "expert", "tensor", "dtype", "stack",
           "alpha_random", "alpha_gof", "content", *BULK_COLUMNS, "warning"]
OPTIONAL_COLUMNS = ("alpha_farms", "quant", *RANDOMIZED_COLUMNS, *UPDATE_COLUMNS)
_FIT_FIELDS = ("alpha", "xmin", "ks_d", "n_tail", "status")


@dataclass
class Fits:
    """What has been fitted on one spectrum so far: its zero count, its fits by estimator (gof's comes with
    every other, from the same KS scan) and its shape's alpha_random by estimator."""

    n_zero: int | None = None
    fits: dict[str, PowerLawFit] = field(default_factory=dict)
    random: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON values (NaN as None), marked with the revision of the code that made them."""
        return json_safe({"revision": fits_revision(), "n_zero": self.n_zero, "random": self.random,
                          "fits": {e: [getattr(f, k) for k in _FIT_FIELDS] for e, f in self.fits.items()}})

    @classmethod
    def from_json(cls, data: dict | None) -> Fits:
        """to_json's Fits; none (an empty Fits) when another revision of the code made them."""
        if not isinstance(data, dict) or data.get("revision") != fits_revision():
            return cls()

        def number(x):
            return math.nan if x is None else float(x)

        try:
            fits = {e: PowerLawFit(number(a), number(x), number(d), int(n), str(s))
                    for e, (a, x, d, n, s) in data["fits"].items()}
            return cls(int(data["n_zero"]), fits, {e: number(a) for e, a in data["random"].items()})
        except (AttributeError, KeyError, TypeError, ValueError):  # not this layout: fit again
            return cls()


def json_safe(value):
    """A JSON-safe copy of dicts, lists and numbers: numbers as Python numbers, NaN as None (read back as NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


@lru_cache(maxsize=1)
def fits_revision() -> str:
    """Which code makes a row's fits (digests.source_digest of the fitting modules, with torch's and numpy's
    versions): a fit kept by another release, an edited checkout or another torch is made again."""
    return source_digest(powerlaw.__file__, gaussian.__file__, eigenvalues.__file__, __file__,
                         versions=f"torch {torch.__version__} numpy {np.__version__}")


def matrix_row(spec: MatrixSpec, eigs: torch.Tensor | None, estimator: str, dtype: str, exponent: int = 0,
               precision: str = "fp64", content: str = WEIGHTS, fits: Fits | None = None) -> dict:
    """One results row from a matrix's eigenvalues, scaled by 4^-exponent (None when the matrix held NaN/Inf).

    content: what the matrix is (weights, or an update: delta, adapter); an all-zero update is `unchanged`.
    fits: what was fitted on this spectrum before (read, and filled with what is fitted here)."""
    fits = Fits() if fits is None else fits
    if estimator not in fits.random:  # the same shape's Gaussian matrix
        fits.random[estimator] = random_alpha(spec.rows, spec.cols, estimator)
    row = {"name": spec.name, "layer": spec.layer, "module": spec.module, "rows": spec.rows, "cols": spec.cols,
           "n_eigs": min(spec.rows, spec.cols), "estimator": estimator, "expert": spec.expert, "tensor": spec.tensor,
           "dtype": dtype, "stack": spec.stack, "content": content, "alpha_random": fits.random[estimator]}
    if eigs is None:
        fit = PowerLawFit.empty("matrix contains NaN or Inf")
        return (row | {"n_zero": 0} | _fit_columns(fit) | nan_metrics() | {"alpha_weighted": math.nan,
                "alpha_gof": math.nan} | mp_bulk(eigs, spec.rows, spec.cols))
    row |= metrics_of(eigs, estimator, exponent, precision, fits) | mp_bulk(eigs, spec.rows, spec.cols, exponent)
    if content != WEIGHTS and row["status"] == "all-zero matrix":
        row["status"] = UNCHANGED
    return row


def metrics_of(eigs: torch.Tensor, estimator: str, exponent: int = 0, precision: str = "fp64",
               fits: Fits | None = None) -> dict:
    """n_zero, the fit columns, alpha_gof (what the over/under-trained verdicts read) and the norm metrics of one
    ascending float64 spectrum (zeros included), its values scaled by 4^-exponent: the fits are scale-free, so
    they use the scaled values; xmin and the norms are scaled back. Eigenvalues within the solver's round-off
    of zero (`esd.zero_threshold`) are zeros. fits: as for matrix_row."""
    fits = Fits() if fits is None else fits
    metrics = spectral_metrics(eigs, exponent)
    top = float(eigs[-1]) if eigs.numel() else 0.0
    if fits.n_zero is None:
        fits.n_zero = int((eigs <= zero_threshold(precision, eigs.numel()) * top).sum()) if top > 0 else eigs.numel()
    fit = gof = PowerLawFit.empty("all-zero matrix")
    if top > 0 and {estimator, "gof"} <= fits.fits.keys():
        fit, gof = fits.fits[estimator], fits.fits["gof"]
    elif top > 0:
        fit, gof = fit_with_gof(eigs[fits.n_zero:], estimator)
        fits.fits |= {estimator: fit, "gof": gof}
    weighted = fit.alpha * metrics["log_spectral_norm"]
    return ({"n_zero": fits.n_zero} | _fit_columns(fit) | {"xmin": ldexp(fit.xmin, 2 * exponent)} | metrics
            | {"alpha_weighted": weighted, "alpha_gof": gof.alpha})


def _fit_columns(fit: PowerLawFit) -> dict:
    return {k: getattr(fit, k) for k in _FIT_FIELDS}


def records(table: pd.DataFrame) -> list[dict]:
    """Table rows as plain dicts, empty and non-finite values as None (for JSON and for sending between ranks)."""
    def clean(v):
        return None if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)) else v

    return [{k: clean(v) for k, v in row.items()} for row in table.astype(object).to_dict("records")]


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
