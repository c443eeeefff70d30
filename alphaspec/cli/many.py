"""`alphaspec analyze A B C ...`: many checkpoints into one long table, a summary per source, correlations with
a score (analysis/many.py, analysis/summary.py); what the terminal shows of them."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.table import Table
from rich.text import Text

from alphaspec.cli.common import err, fail, out
from alphaspec.errors import UsageError


def is_many(sources: tuple[str, ...]) -> bool:
    """Whether the sources make a series or a zoo: several, a glob, an @FILE list, or a run's checkpoints folder."""
    if len(sources) != 1:
        return True
    from alphaspec.train.rundir import run_of_checkpoints_folder
    from alphaspec.train.weights import is_glob

    return sources[0].startswith("@") or is_glob(sources[0]) or \
        run_of_checkpoints_folder(Path(sources[0]).expanduser()) is not None


def parse_steps(text: str | None) -> list[int] | None:
    """--steps 1000,2000,3000: whole numbers >= 0, one per source."""
    if text is None:
        return None
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError as e:
        raise UsageError(f"--steps {text!r}: whole numbers separated by commas, one per source") from e
    if any(s < 0 for s in steps):
        raise UsageError(f"--steps {text!r}: steps are >= 0")
    return steps


def run_many(sources: tuple[str, ...], options, device, *, output: Path | None, summary_file: Path | None,
             scores_file: Path | None, steps: str | None, plots: Path | None, failing_on, thresholds,
             quiet: bool) -> None:
    """Analyse every source into one table; write it, the summary and the figures; say what failed (exit 1)."""
    from alphaspec.analysis.cpu_threads import one_thread_per_solve
    from alphaspec.analysis.many import analyze_many, with_steps, write_long_table
    from alphaspec.analysis.summary import correlate, read_scores, summarize
    from alphaspec.analysis.table import write_table
    from alphaspec.cli.progress import clock, progress
    from alphaspec.cli.verdicts import check_verdicts
    from alphaspec.distributed import joined, launched
    from alphaspec.spectra.verdicts import verdicts
    from alphaspec.train.weights import many_sources

    todo = with_steps(many_sources(sources, options), parse_steps(steps))  # bad input fails before any work
    labels = [s.label for s in todo]
    scores = read_scores(scores_file, labels) if scores_file is not None else None

    started = time.perf_counter()

    def on_source(i: int, n: int, label: str) -> None:
        if not quiet:
            err.print(Text(f"[{i + 1}/{n}] {label} ({clock(time.perf_counter() - started)} elapsed)"), highlight=False,
                      soft_wrap=True)

    # a bar per source on a terminal; in a log, the line per source is the progress. Under torchrun every rank
    # takes part in each source (its matrices split by cost, as for one); rank 0 reports and writes.
    rank, _, _ = launched()
    quiet = quiet or rank > 0
    with joined(device.type == "cuda"), one_thread_per_solve(options.workers, device), \
            progress(err, "analysing", "matrices", quiet or not err.is_terminal) as update:
        result = analyze_many(todo, options=options, device=device, on_source=on_source, progress=update)
    if rank > 0:
        return
    for label, reason in result.failures:  # a reason names its file already, mostly: the source said once
        said = " ".join(reason.split())
        err.print(Text(f"error: {said if said.startswith(label) else f'{label}: {said}'}"), style="bold red",
                  soft_wrap=True)
    if result.table.empty:
        fail(f"none of the {len(todo)} sources could be analysed")
    result.table["warning"] = verdicts(result.table, thresholds)
    if output is not None:
        write_long_table(result, output)
    summary = summarize(result.table)
    if summary_file is not None:
        write_table(summary, summary_file)
    correlations, notes = correlate(summary, scores) if scores is not None else (None, [])
    if plots is not None:
        _figures(result.table, summary, scores, correlations, plots, quiet)
    if not quiet:
        _show(summary, correlations, notes, result, output, summary_file)
    if result.failures:
        fail(f"{len(result.failures)} of {len(todo)} sources failed (named above); the table holds the "
             f"{len(result.sources)} others")
    check_verdicts(result.table, failing_on)


def _figures(table, summary, scores, correlations, folder: Path, quiet: bool) -> None:
    from alphaspec.plots.series import series_figure, zoo_figure
    from alphaspec.plots.style import save_figure

    folder.mkdir(parents=True, exist_ok=True)
    drawn = [folder / "series.png"]
    save_figure(series_figure(table), drawn[0])
    if scores:
        drawn.append(folder / "zoo.png")
        save_figure(zoo_figure(summary, scores, correlations), drawn[1])
    for path in [] if quiet else drawn:
        out.print(f"drew {path}", highlight=False)


def _show(summary, correlations, notes, result, output, summary_file) -> None:
    """Per source: its matrices, median alpha, alpha above the Gaussian reference and verdicts; then the
    correlations with the score, and what was written."""
    import pandas as pd

    from alphaspec.spectra.verdicts import WARNINGS

    overall = summary[summary["module"] == "all"]
    table = Table(title=f"{len(overall)} sources (n: matrices; excess: alpha above a Gaussian matrix's)",
                  title_justify="left", header_style="bold", caption="verdicts: matrices over-trained, under-trained, "
                  "random-like, with traps, rank collapse, no tail", caption_justify="left")
    table.add_column("source", overflow="fold", ratio=3)  # a long path folds over lines, read whole
    for col in ("step", "n", "alpha med", "excess"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("verdicts", overflow="fold", ratio=2, min_width=18)
    for i, r in overall.iterrows():
        said = ", ".join(f"{summary.loc[i, w]} {SHORT.get(w, w)}" for w in WARNINGS if summary.loc[i, w])
        table.add_row(str(r["source"]), "-" if pd.isna(r["step"]) else str(int(r["step"])), str(r["matrices"]),
                      f"{r['alpha_median']:.3f}", f"{r['alpha_excess_mean']:+.3f}", said or "-")
    out.print(table)
    if correlations is not None and not correlations.empty:
        corr = Table(title="rank correlation with the score (95 % bootstrap interval)", title_justify="left",
                     header_style="bold")
        for col in ("metric", "models", "Spearman", "Kendall"):
            corr.add_column(col, justify="left" if col == "metric" else "right")
        for r in correlations.itertuples():
            corr.add_row(r.metric, str(r.models), _rho(r.spearman, r.spearman_low, r.spearman_high),
                         _rho(r.kendall, r.kendall_low, r.kendall_high))
        out.print(corr)
    for note in notes:
        out.print(Text(f"note: {note}"), style="yellow")
    for path in (p for p in (output, summary_file) if p is not None):
        out.print(f"wrote {path}", highlight=False)


SHORT = {"over-trained": "over", "under-trained": "under", "random-like": "random", "rank-collapse": "collapse",
         "no-tail": "no tail"}  # the verdicts as the terminal's narrow column names them


def _rho(value: float, low: float, high: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"
