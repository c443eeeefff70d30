"""Writing results: CSV, JSON (DESIGN.md layout) or Parquet by suffix, atomically; spectra as .npz."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .analysis import Analysis

TABLE_SUFFIXES = (".csv", ".json", ".parquet")


def check_output(path: Path) -> None:
    """Fail before any work when the output cannot be written in the asked format."""
    if path.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unknown output format {path.suffix or '(no suffix)'}; "
                         f"use {', '.join(TABLE_SUFFIXES)}")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ValueError(f"{path}: Parquet output needs pyarrow (pip install 'alphaspec[parquet]')") from err
    if not path.parent.exists():
        raise ValueError(f"{path}: directory {path.parent} does not exist")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_results(path: Path) -> pd.DataFrame:
    """Load a table written by `write_results` (any of the three formats)."""
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.DataFrame(json.loads(path.read_text())["matrices"])


def read_spectra(path: Path) -> dict[str, np.ndarray]:
    """Spectra saved by `write_spectra`, keyed by row name."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
