"""The results table's files: CSV, JSON (the documented layout) or Parquet by suffix, written atomically and
read back checked; the spectra beside it as .npz."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from alphaspec.errors import AlphaspecError, UsageError, check_input_file, first_line, parse_json
from alphaspec.files import atomic_write, check_output

if TYPE_CHECKING:
    from alphaspec.analysis.solve import Analysis

def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def write_results(result: Analysis, path: Path) -> None:
    """Write the table in the format its suffix names; a crash never leaves a half-written file."""
    if path.suffix != ".json":
        write_table(result.table, path)
        return
    check_output(path)
    text = json.dumps(result.to_json(), indent=1, allow_nan=False, default=_json_default)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def write_table(table: pd.DataFrame, path: Path) -> None:
    """Any DataFrame as CSV, JSON (a list of records) or Parquet by suffix, atomically."""
    check_output(path)
    if path.suffix == ".csv":
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    elif path.suffix == ".parquet":
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    else:
        text = json.dumps(json.loads(table.to_json(orient="records")), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def write_spectra(result: Analysis, path: Path) -> None:
    """Eigenvalues (ascending, zeros included) keyed by row name, for plotting without recomputing."""
    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **result.spectra)

    atomic_write(path, save)


RESULT_COLUMNS = {"name": "text", "layer": "number", "module": "text", "rows": "number", "cols": "number",
                  "estimator": "text", "alpha": "number"}  # what figures and decay maps read
# Text columns of an analysis table: a CSV column with no value in any row reads back as floats (NaN), on
# which string operations fail; they are read back as text.
TEXT_COLUMNS = ("module", "estimator", "status", "expert", "tensor", "dtype", "stack", "warning", "quant")
# Every numeric column analyze writes: each a finite number or empty in a table read back (inf and text refused);
# the counts and sizes whole numbers in [0, 2^31), rows and cols in every row and at least 1.
NUMBER_COLUMNS = ("layer", "rows", "cols", "n_eigs", "n_zero", "alpha", "xmin", "ks_d", "n_tail", "lambda_max",
                  "spectral_norm", "frobenius_norm", "stable_rank", "log_spectral_norm", "log_norm", "alpha_weighted",
                  "entropy", "expert", "alpha_random", "alpha_gof", "sigma_mp", "bulk_max", "num_spikes", "mp_softrank",
                  "alpha_farms", "rand_lambda_max", "rand_distance", "traps", "trap_z", "trap_z_low", "trap_share",
                  "permutations", "trap_entries", "trap_max_entry", "rel_change", "subspace_overlap")
WHOLE_COLUMNS = ("layer", "rows", "cols", "n_eigs", "n_zero", "n_tail", "expert", "num_spikes", "traps", "permutations",
                 "trap_entries")
MAX_WHOLE = 1 << 31


class ResultsError(AlphaspecError):
    """A results table or spectra file that alphaspec cannot read back."""


def read_results(path: Path) -> pd.DataFrame:
    """Load a table written by `write_results` (any of the three formats), its columns checked."""
    check_input_file(path, "results file")
    try:
        if path.suffix == ".csv":
            table = pd.read_csv(path)
        elif path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            doc = parse_json(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("matrices"), list):
                raise ValueError("a JSON object with a 'matrices' list was expected")
            table = pd.DataFrame(doc["matrices"])
            table.attrs.update(_json_attrs(doc))
    except Exception as err:  # noqa: BLE001 - pandas, pyarrow and json each raise their own kinds
        raise ResultsError(f"{path}: not a results file written by alphaspec analyze ({first_line(err)})") from err
    return _checked(table, path)


def fitted_with(table: pd.DataFrame) -> str | None:
    """The estimator a results table was fitted with (None when it does not say)."""
    if "estimator" in table and len(table):
        return str(table["estimator"].iloc[0])
    return table.attrs.get("estimator")


def check_fitted_with(path: Path | str, table: pd.DataFrame, estimator: str | None, asked: str = "-e") -> None:
    """A results table's alphas are fitted once: asking it for another estimator is a usage error, not a silent
    answer with the table's own (re-analyse the checkpoint, where -e applies). asked: the option that asked."""
    have = fitted_with(table)
    if estimator is None or have is None or have == estimator:
        return
    if asked == "-e":
        raise UsageError(f"{path}: its alphas were fitted with {have}, not {estimator}; leave out -e to use them, "
                         f"or analyse the checkpoint again with -e {estimator}")
    raise UsageError(f"{path}: its alphas were fitted with {have}, but {asked} fits with {estimator}; give the "
                     "checkpoint itself")


def _json_attrs(doc: dict) -> dict:
    """What a JSON results file says besides its rows (source, settings, skipped tensors, notes), as the
    table's attrs like `analyze` sets them; values of the wrong type are left out, never trusted as code."""
    attrs = {k: doc[k] for k in ("source", "estimator", "device", "precision") if isinstance(doc.get(k), str)}
    if isinstance(doc.get("notes"), list):
        attrs["notes"] = [str(n) for n in doc["notes"]]
    if isinstance(doc.get("skipped"), list):
        attrs["skipped"] = [{"name": str(s.get("name", "")), "reason": str(s.get("reason", ""))}
                            for s in doc["skipped"] if isinstance(s, dict)]
    return attrs


def _checked(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A results table as analyze writes it, or a ResultsError naming the column (and row) that is not."""
    missing = [c for c in RESULT_COLUMNS if c not in table.columns]
    if missing:
        raise ResultsError(f"{path}: not a results file written by alphaspec analyze (no column {', '.join(missing)})")
    if table.empty:
        raise ResultsError(f"{path}: the results table has no rows")
    keys = ["source", "name"] if "source" in table else ["name"]  # a long table names each row once per source
    if table["name"].isna().any() or table.duplicated(subset=keys).any():
        raise ResultsError(f"{path}: the name column must name every row once" + (" per source" if len(keys) > 1
                                                                                  else ""))
    table["name"] = table["name"].astype(str)
    for col in [c for c in NUMBER_COLUMNS if c in table.columns]:
        table[col] = _numbers(table, col, path)
    table["layer"] = table["layer"].astype("Int64")
    for col in TEXT_COLUMNS:
        if col in table and table[col].isna().all():
            table[col] = table[col].astype(object)
    return table


def _numbers(table: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """One numeric column checked: numbers or empty, never infinite; whole and in range where it counts."""
    parsed = pd.to_numeric(table[col], errors="coerce")
    values = parsed.astype(float)

    def refuse(bad: pd.Series, what: str):
        row = table["name"][bad].iloc[0]
        raise ResultsError(f"{path}: column {col} {what} (row {row})")

    if (bad := values.isna() & table[col].notna()).any():
        refuse(bad, "holds values that are not numbers")
    if (bad := np.isinf(values)).any():
        refuse(bad, "holds an infinite value")
    if col in WHOLE_COLUMNS and ((bad := (values % 1 != 0) | (values < 0) | (values >= MAX_WHOLE)) & values.notna()).any():
        refuse(bad & values.notna(), f"holds values that are not whole numbers in [0, {MAX_WHOLE})")
    if col in ("rows", "cols") and (bad := values.isna() | (values < 1)).any():
        refuse(bad, "must give every matrix's size (at least 1)")
    return parsed


def read_csv_checked(path: Path, columns: list[str], *, text: tuple[str, ...] = ("name", "module"),
                     required: tuple[str, ...] = ("step",)) -> pd.DataFrame:
    """A CSV that alphaspec wrote (metrics.csv, decay.csv, alphas.csv), refused when damaged: every
    column present, the non-`text` ones numeric, the `required` ones filled in every row."""
    check_input_file(path, "CSV file")
    try:
        table = pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - any parse failure is a property of the file
        raise ResultsError(f"{path}: unreadable CSV ({first_line(err)})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ResultsError(f"{path}: not written by alphaspec (no column {', '.join(missing)})")
    for col in columns:
        if col in text:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna() | (values.isna() if col in required else False)
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header
            raise ResultsError(f"{path}: line {line} is damaged or incomplete (column {col})")
        table[col] = values
    return table


def read_spectra(path: Path) -> dict[str, np.ndarray]:
    """Spectra saved by `write_spectra`, keyed by row name: 1-D arrays of finite numbers (never pickles)."""
    check_input_file(path, "spectra file")
    try:
        with np.load(path, allow_pickle=False) as data:
            spectra = {k: data[k] for k in data.files}
    except Exception as err:  # noqa: BLE001 - zip, npy-format and pickle refusals alike
        raise ResultsError(f"{path}: not a spectra file written by alphaspec analyze ({first_line(err)})") from err
    for name, values in spectra.items():
        if values.ndim != 1 or values.dtype.kind not in "fiu":
            raise ResultsError(f"{path}: entry {name!r} is not a 1-D array of numbers ({values.dtype}, {values.ndim}-D)")
        if not np.isfinite(values).all():
            raise ResultsError(f"{path}: entry {name!r} holds NaN or infinite eigenvalues")
    return {k: v.astype(np.float64) for k, v in spectra.items()}


def other_dtypes(table: pd.DataFrame, dtype: str) -> list[str]:
    """The stored dtypes of a results table's weights other than `dtype` (what a release's rounding would change)."""
    return sorted(set(table["dtype"].dropna().astype(str)) - {dtype, ""}) if "dtype" in table else []
