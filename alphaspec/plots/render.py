"""The figures of `alphaspec plot` drawn into a folder by kind: each one that this table can give, and why
each other one was skipped."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alphaspec.choices import CHECKPOINT_FIGURES, MODEL_FIGURES
from alphaspec.errors import AlphaspecError
from alphaspec.plots.maps import decay_figure, map_figure
from alphaspec.plots.spectra import alpha_depth_figure, alpha_modules_figure, esd_figure, spectra_figure
from alphaspec.plots.style import safe_filename, save_figure
from alphaspec.spectra.randomize import RANDOMIZED_SUFFIX


class Rendered(NamedTuple):
    written: list[Path]
    skipped: list[str]  # "figure: why it was not drawn"


def render_figures(table: pd.DataFrame, spectra: dict[str, np.ndarray], out_dir: Path, kinds=MODEL_FIGURES,
           fmt: str = "png", names: list[str] = (), decay_map=None, excess: bool = False, *,
           value_map=None) -> Rendered:
    """Draw `kinds` into out_dir as FORMAT files; `esd` draws one figure per name in `names`,
    `decay` draws `decay_map` and `map` draws `value_map` (each skipped without one); excess: alpha-depth
    draws alpha - alpha_random.

    A figure that cannot be drawn from this table (no spectra saved, no fitted alpha, ...) is skipped
    and the others are drawn: returns the files written and one line per skipped figure saying why.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    jobs = []
    for kind in kinds:
        if kind == "esd":
            est = str(table["estimator"].iloc[0])
            jobs += [(f"esd-{safe_filename(n)}", lambda n=n, est=est: esd_figure(
                n, spectra[n], est, _bulk_of(table, n), spectra.get(n + RANDOMIZED_SUFFIX))) for n in names]
        elif kind == "decay":
            jobs.append(("decay", lambda: decay_figure(_needed(decay_map, "a decay map (build_decay_map)"))))
        elif kind == "map":
            jobs.append((f"map-{value_map.kind}" if value_map is not None else "map",
                         lambda: map_figure(_needed(value_map, "a map of lr, sparsity or lora_rank (alphaspec map)"))))
        elif kind == "alpha-depth":
            jobs.append((kind, lambda: alpha_depth_figure(table, excess)))
        elif kind in _FIGURES:
            jobs.append((kind, lambda kind=kind: _FIGURES[kind](table, spectra)))
        else:
            raise ValueError(f"unknown figure kind {kind!r}; choose from {', '.join(CHECKPOINT_FIGURES)}")
    for stem, draw in jobs:
        try:
            fig = draw()
        except (ValueError, AlphaspecError) as err:
            skipped.append(f"{stem}: {err}")
            continue
        written.append(save_figure(fig, out_dir / f"{stem}.{fmt}"))
    return Rendered(written, skipped)


def _bulk_of(table: pd.DataFrame, name: str) -> tuple | None:
    """(sigma_mp, rows, cols) of a row, for the MP curve of its esd figure (None for tables without it)."""
    if "sigma_mp" not in table:
        return None
    row = table.loc[table["name"] == name].iloc[0]
    return float(row["sigma_mp"]), int(row["rows"]), int(row["cols"])


def _needed(value, what: str):
    if value is None:
        raise ValueError(f"needs {what}")
    return value


def _spectra_or_why(table: pd.DataFrame, spectra: dict[str, np.ndarray]) -> Figure:
    if not spectra:
        raise ValueError("needs the eigenvalues: run analyze with --save-spectra FILE.npz (or pass --spectra)")
    return spectra_figure(table, spectra)


_FIGURES = {"spectra": _spectra_or_why, "alpha-modules": lambda t, _: alpha_modules_figure(t)}
