"""The report's checkpoint section: provenance, the summary by module type, verdicts, figures, every matrix."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from alphaspec.plots.spectra import alpha_depth_figure, alpha_modules_figure, spectra_figure
from alphaspec.report.html import esc, figure, json_for_script, key_values, number, table
from alphaspec.sources.matrices import MODULE_TYPES
from alphaspec.spectra.gaussian import random_alpha
from alphaspec.spectra.verdicts import WARNINGS, health_line

ESD_BINS = 40  # log-spaced bins of each matrix's spectrum, drawn by the page's script
COLUMNS = [("name", "matrix"), ("layer", "layer"), ("module", "module"), ("stack", "stack"), ("shape", "shape"),
           ("alpha", "alpha"), ("alpha_random", "α random"), ("xmin", "xmin"), ("ks_d", "KS D"), ("n_tail", "tail"),
           ("num_spikes", "spikes"), ("mp_softrank", "MP softrank"), ("traps", "traps"), ("status", "status"),
           ("warning", "warning")]


def esd_data(name: str, eigs: np.ndarray, row: pd.Series) -> dict | None:
    """A matrix's spectrum as the page draws it: density per unit λ on log bins, and its fit."""
    lam = np.sort(np.asarray(eigs, dtype=np.float64))
    lam = lam[lam > 1e-12 * lam[-1]] if lam.size and lam[-1] > 0 else lam[:0]
    if lam.size < 2 or lam[-1] <= lam[0] * (1 + 1e-12):  # a constant spectrum (an orthogonal matrix) has no density
        return None
    edges = np.logspace(np.log10(lam[0]), np.log10(lam[-1]), ESD_BINS + 1)
    counts, _ = np.histogram(lam, bins=edges)
    density = counts / (lam.size * np.diff(edges))
    keep = counts > 0
    fit = {}
    if pd.notna(row.get("alpha")) and pd.notna(row.get("xmin")) and row.get("n_tail"):
        fit = {"alpha": float(row["alpha"]), "xmin": float(row["xmin"]), "frac": float(row["n_tail"]) / lam.size}
    return {"name": name, "x": np.log10(np.sqrt(edges[:-1] * edges[1:])[keep]).round(5).tolist(),
            "y": np.log10(density[keep]).round(5).tolist(), **fit}


def summary_table(frame: pd.DataFrame, estimator: str) -> str:
    """Per module type: count, fitted, mean/median/min/max alpha, and the alpha of a Gaussian matrix of its shape."""
    rows = []
    for module in [m for m in MODULE_TYPES if m in set(frame["module"])]:
        part = frame[frame["module"] == module]
        fitted = part.dropna(subset=["alpha"])
        shape = fitted[["rows", "cols"]].value_counts().idxmax() if len(fitted) else None
        ref = random_alpha(int(shape[0]), int(shape[1]), estimator) if shape is not None else None
        stats = [fitted["alpha"].mean(), fitted["alpha"].median(), fitted["alpha"].min(), fitted["alpha"].max()] \
            if len(fitted) else [None] * 4
        rows.append([esc(module), number(len(part)), number(len(fitted)), *map(number, stats), number(ref)])
    return table(["module", "count", "fitted", "mean α", "median α", "min α", "max α", "random α"], rows,
                 "alpha per module type; random: a Gaussian matrix of the type's most common shape", "summary")


def verdicts_block(frame: pd.DataFrame) -> str:
    if "warning" not in frame:
        return ""
    healthy = health_line(frame)
    opening = f'<p class="verdicts ok">{esc(healthy)}</p>' if healthy else ""
    flagged = frame[frame["warning"].fillna("") != ""]
    if flagged.empty:
        return opening + '<p class="verdicts ok">Needs attention: none (no verdict for any matrix).</p>'
    counts = Counter(w for ws in flagged["warning"] for w in ws.split(","))
    gof = "alpha_gof" in flagged and (flagged.get("estimator", pd.Series("gof")) != "gof").any()
    items = "".join(f"<li>{esc(r['name'])}: {esc(r['warning'])} (alpha {number(r['alpha'], 2)}"
                    + (f", gof {number(r['alpha_gof'], 2)}" if gof else "") + ")</li>"
                    for _, r in flagged.head(20).iterrows())
    more = f"<li>… and {len(flagged) - 20} more (filter the table by warning)</li>" if len(flagged) > 20 else ""
    summary = ", ".join(f"{counts[w]} {esc(w)}" for w in WARNINGS if counts[w])
    return opening + f'<div class="verdicts"><h3>Needs attention: {summary}</h3><ul>{items}{more}</ul></div>'


def _cell(column: str, row: pd.Series) -> tuple[str, str]:
    """(sort value, shown text) of one cell."""
    if column == "shape":
        return str(int(row["rows"]) * int(row["cols"])), f"{int(row['rows'])}×{int(row['cols'])}"
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "", "–"
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return repr(float(value)), number(value.item() if hasattr(value, "item") else value)
    return str(value), esc(value)


def matrices_table(frame: pd.DataFrame, with_esd: set[int]) -> str:
    """Every matrix, a row each, with the attributes the page's filters read; a row with a spectrum opens it."""
    columns = [(c, h) for c, h in COLUMNS if c == "shape" or c in frame]
    head = "".join(f'<th scope="col" data-col="{i}" tabindex="0">{esc(h)}</th>' for i, (_, h) in enumerate(columns))
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = "".join(f'<td data-v="{esc(v)}">{t}</td>' for v, t in (_cell(c, row) for c, _ in columns))
        layer = "" if pd.isna(row["layer"]) else int(row["layer"])
        attrs = (f'data-i="{i}" data-module="{esc(row["module"])}" data-stack="{esc(row.get("stack") or "")}" '
                 f'data-layer="{layer}" data-status="{"ok" if row["status"] == "ok" else "empty"}" '
                 f'data-warning="{esc(row.get("warning") or "")}"' + (' class="has-esd" tabindex="0"' if i in with_esd else ""))
        body.append(f"<tr {attrs}>{cells}</tr>")
    return (f'<table class="matrices"><caption>Every matrix (click a column to sort; a row with a '
            f'spectrum opens it)</caption><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def filters(frame: pd.DataFrame) -> str:
    def select(key: str, label: str, values: list[str]) -> str:
        options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        return f'<label>{label} <select data-filter="{key}"><option value="">all</option>{options}</select></label>'

    modules = [m for m in MODULE_TYPES if m in set(frame["module"])]
    stacks = sorted({s for s in frame.get("stack", pd.Series(dtype=object)).dropna() if s})
    parts = [select("module", "module type", modules), select("status", "status", ["ok", "empty"]),
             select("warning", "warning", ["any", "none", *WARNINGS]),
             '<label>layer <input data-filter="layer" type="number" min="0" inputmode="numeric"></label>',
             '<label>name <input data-filter="name" type="search"></label>']
    if stacks:
        parts.insert(1, select("stack", "stack", stacks))
    return f'<div class="filters" role="search">{"".join(parts)}<span class="shown" aria-live="polite"></span></div>'


def checkpoint_section(frame: pd.DataFrame, spectra: dict[str, np.ndarray], provenance: list[tuple[str, object]],
                       heading: str = "Checkpoint") -> str:
    """The section of one analysed checkpoint (or results table)."""
    estimator = str(frame["estimator"].iloc[0]) if "estimator" in frame and len(frame) else "median"
    esd = [esd_data(n, spectra[n], r) if n in spectra else None for n, (_, r) in zip(frame["name"], frame.iterrows(),
                                                                                      strict=True)]
    figures = []
    for make, alt in ((lambda: spectra_figure(frame, spectra), "spectra of each module type across layers"),
                      (lambda: alpha_modules_figure(frame), "alpha per module type beside a Gaussian matrix's"),
                      (lambda: alpha_depth_figure(frame), "alpha over depth per module type")):
        try:
            figures.append(figure(make(), alt))
        except (ValueError, KeyError):
            continue  # a table without spectra, without fits or without blocks: that figure is left out
    skipped = frame.attrs.get("skipped") or []
    notes = frame.attrs.get("notes") or []
    reasons = Counter(s["reason"] for s in skipped)
    skipped_html = table(["tensors", "reason"], [[number(n), esc(r)] for r, n in reasons.most_common()],
                         f"{len(skipped)} tensor(s) skipped") if skipped else ""
    notes_html = "<ul class='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""
    data = {"esd": {str(i): e for i, e in enumerate(esd) if e is not None}}
    return (f'<section class="checkpoint"><h2>{esc(heading)}</h2>{key_values(provenance, "provenance")}'
            f"<h3>By module type</h3>{summary_table(frame, estimator)}{verdicts_block(frame)}"
            f'<h3>Figures</h3><div class="figures">{"".join(figures)}</div>'
            f'<h3>Matrices</h3>{filters(frame)}<div class="scroll">{matrices_table(frame, set(map(int, data["esd"])))}</div>'
            f'<div class="esd" hidden></div>'
            f'<script type="application/json" class="report-data">{json_for_script(data)}</script>'
            f"{skipped_html}{notes_html}</section>")
