"""The report's section for many checkpoints (a long table of `analyze A B C ...`): the summary per source,
sortable, the series figure, and with scores the zoo figure and the rank correlations."""

from __future__ import annotations

import pandas as pd

from alphaspec.analysis.summary import correlate, summarize
from alphaspec.plots.series import series_figure, zoo_figure
from alphaspec.report.html import esc, figure, fixed, number
from alphaspec.spectra.verdicts import WARNINGS

SHOWN = [("source", "source"), ("step", "step"), ("matrices", "matrices"), ("alpha_median", "alpha median"),
         ("alpha_excess_mean", "alpha excess"), ("log_norm_mean", "log norm"), ("alpha_weighted_mean",
         "alpha weighted"), ("log_alpha_norm_mean", "log alpha norm"), ("stable_rank_mean", "stable rank"),
         ("mp_softrank_mean", "MP soft rank")] + [(w, w) for w in WARNINGS]


def series_section(table: pd.DataFrame, heading: str, scores: dict[str, float] | None = None) -> str:
    """The section: what the sources are, their summary, the figures."""
    summary = summarize(table)
    overall = summary[summary["module"] == "all"]
    parts = [f"<section class='series'><h2>{esc(heading)}</h2>", sortable_table(overall, SHOWN,
             f"{len(overall)} sources, one row each (click a column to sort); alpha excess: alpha above a Gaussian "
             "matrix's of the same shape"), figure(series_figure(table), "alpha per module type over the sources, "
             "alpha per layer, verdict counts")]
    if scores:
        correlations, notes = correlate(summary, scores)
        parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
        if not correlations.empty:
            rows = [[esc(r.metric), number(r.models), _rho(r.spearman, r.spearman_low, r.spearman_high),
                     _rho(r.kendall, r.kendall_low, r.kendall_high)] for r in correlations.itertuples()]
            head = "".join(f"<th scope='col'>{h}</th>" for h in ("metric", "models", "Spearman [95 %]",
                                                                   "Kendall [95 %]"))
            parts.append(f"<table><caption>rank correlation of each metric with the score</caption><thead><tr>{head}"
                         f"</tr></thead><tbody>{''.join('<tr>' + ''.join(f'<td>{c}</td>' for c in r) + '</tr>' for r in rows)}"
                         "</tbody></table>")
        parts.append(figure(zoo_figure(summary, scores, correlations), "each summary metric against the score"))
    return "".join(parts) + "</section>"


def sortable_table(frame: pd.DataFrame, columns: list[tuple[str, str]], caption: str) -> str:
    """A table the page sorts by a click on a column header (each cell carries its value to sort by)."""
    head = "".join(f'<th scope="col" data-col="{i}" tabindex="0">{esc(h)}</th>' for i, (_, h) in enumerate(columns))
    body = []
    for _, row in frame.iterrows():
        cells = []
        for column, _ in columns:
            value = row.get(column)
            if pd.isna(value):
                cells.append('<td data-v="">–</td>')
            elif isinstance(value, str):
                cells.append(f'<td data-v="{esc(value)}">{esc(value)}</td>')
            else:
                cells.append(f'<td data-v="{float(value)!r}">{number(value.item() if hasattr(value, "item") else value)}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="sortable"><caption>{esc(caption)}</caption><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def _rho(value: float, low: float, high: float) -> str:
    return "–" if pd.isna(value) else f"{fixed(value, 2, sign=True)} [{fixed(low, 2, sign=True)}, {fixed(high, 2, sign=True)}]"
