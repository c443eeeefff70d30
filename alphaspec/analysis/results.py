"""A results file or a checkpoint analysed now: the one way every command that takes either gets its table
(map, decay-map, plot, report)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from alphaspec.errors import UsageError
from alphaspec.files import TABLE_SUFFIXES


def is_results_file(source: object) -> bool:
    """Whether SOURCE names a results table `analyze` wrote (.csv, .json, .parquet), not a checkpoint."""
    path = Path(str(source))
    return path.suffix in TABLE_SUFFIXES and path.is_file()


def long_table(source: object) -> pd.DataFrame | None:
    """A results table of several sources (`analyze A B ... -o TABLE`), read; None for anything else (a
    checkpoint, a table of one source), told from the header alone where the format has one (CSV, Parquet)."""
    from alphaspec.analysis.table import read_results

    if not is_results_file(source):
        return None
    path = Path(str(source))
    try:
        if path.suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), [])
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            header = pq.read_schema(path).names
        else:
            header = ["source"]  # JSON: known once read
    except Exception:  # noqa: BLE001 - a damaged file: the reader that follows says what is wrong
        return None
    if "source" not in header:
        return None
    table = read_results(path)
    return table if "source" in table else None


def results_or_analysis(source: str, estimator: str | None = None, device: str = "auto", *,
                        asked: str | None = None, spectra_file: Path | None = None, rounded_to: str | None = None,
                        refit: bool = False, analyse: Callable | None = None,
                        **options) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(table, spectra) of SOURCE: a results file as `analyze` wrote it (its spectra from the .npz beside it, or
    `spectra_file`; verdicts added to a table from before them), or the checkpoint analysed now with `analyse`
    (analyze_checkpoint, or a caller's wrapper that draws progress) and `options`.

    A results file fitted with another estimator than `estimator` is re-fitted from its spectra when they are
    there and `asked` or `refit` (a method fitting with its own estimator) say so; without its spectra it is
    refused when `asked` names the option that asked ("-e", "--paper-compat"), and used as it is otherwise.
    rounded_to: a dtype the weights are rounded to before their spectra (a release's, under --paper-compat); a
    results file must hold weights of that dtype."""
    from alphaspec.analysis.table import check_fitted_with, fitted_with, other_dtypes, read_results, read_spectra

    if not is_results_file(source):
        return _analysed(source, estimator or "median", device, rounded_to, analyse, options)
    path = Path(str(source))
    table = read_results(path)
    npz = spectra_file or path.with_suffix(".npz")
    spectra = read_spectra(npz) if spectra_file or npz.exists() else {}
    if estimator and (asked or refit) and fitted_with(table) not in (None, estimator):
        table = refitted(table, spectra, estimator) if spectra else None if asked else table
        if table is None:
            check_fitted_with(path, read_results(path), estimator, asked)
    if rounded_to and (stored := other_dtypes(table, rounded_to)):
        raise UsageError(f"{path}: holds the spectra of {', '.join(stored)} weights; --paper-compat rounds them to "
                         f"{rounded_to} first, as the release loads them: give the checkpoint instead")
    if "warning" not in table:
        from alphaspec.spectra.verdicts import verdicts

        table["warning"] = verdicts(table)
    return table, spectra


REFITTED = ("alpha", "xmin", "ks_d", "n_tail", "status", "alpha_weighted")  # what an estimator changes in a row


def refitted(table: pd.DataFrame, spectra: dict[str, np.ndarray], estimator: str) -> pd.DataFrame | None:
    """The table fitted again with `estimator` from its spectra (`analyze --save-spectra`): the fit columns,
    alpha_random, the estimator and the verdicts; None when a fitted row has no spectrum to fit."""
    import torch

    from alphaspec.analysis.rows import metrics_of
    from alphaspec.spectra.gaussian import random_alpha
    from alphaspec.spectra.verdicts import UNCHANGED, verdicts

    if any(n not in spectra for n, status in zip(table["name"], table["status"], strict=True) if status == "ok"):
        return None
    out = table.copy()
    precision = str(table.attrs.get("precision", "fp64"))
    again = [i for i, (name, status) in enumerate(zip(table["name"], table["status"], strict=True))
             if name in spectra and status != UNCHANGED]
    fits = [metrics_of(torch.from_numpy(np.asarray(spectra[table["name"].iloc[i]], dtype=np.float64)), estimator, 0,
                       precision) for i in again]
    for column in REFITTED:  # one column at a time, every re-fitted row at once
        values = out[column].astype(object if column == "status" else float).to_numpy(copy=True)
        values[again] = [fit[column] for fit in fits]
        out[column] = pd.Series(values, index=out.index).astype(table[column].dtype) if column == "status" else values
    out["alpha_random"] = [random_alpha(int(r), int(c), estimator) for r, c in zip(out["rows"], out["cols"],
                                                                                   strict=True)]
    out["estimator"] = estimator
    out.attrs["estimator"] = estimator
    out["warning"] = verdicts(out)
    return out


def _analysed(source: str, estimator: str, device: str, rounded_to: str | None, analyse: Callable | None,
              options: dict) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    if rounded_to is not None:
        import torch

        from alphaspec.sources.deltas import RoundedCheckpoint, open_source

        options["checkpoint"] = RoundedCheckpoint(open_source(source), getattr(torch, rounded_to))
    if analyse is None:
        from alphaspec.analysis.engine import analyze_checkpoint as analyse
    result = analyse(source, estimator, device, keep_spectra=True, **options)
    return result.table, result.spectra
