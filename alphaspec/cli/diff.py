"""`alphaspec diff`: two or more checkpoints side by side, matrix by matrix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from alphaspec.cli.common import (
    app,
    cache_option,
    device_option,
    err,
    estimator_option,
    exclude_option,
    include_option,
    out,
    quiet_option,
)
from alphaspec.cli.help import PATH, argument, option, with_options
from alphaspec.cli.progress import progress
from alphaspec.spectra.subspaces import TOP_K

if TYPE_CHECKING:
    import pandas as pd

EPILOG = """
Examples:

    # what fine-tuning changed, per matrix
    alphaspec diff ./base ./fine-tuned -o diff.csv --plot diff.png

    # what quantisation changed
    alphaspec diff ./Llama-3.1-8B ./Llama-3.1-8B-Q4_K_M.gguf

    # training steps (hub revisions)
    alphaspec diff org/model@step-1000 org/model@step-2000 org/model@main

    # the checkpoints a training run kept
    alphaspec diff runs/alphadecay -o steps.csv
"""


OPTIONS = [
    argument("sources", nargs=-1, required=True, help="Two or more checkpoints (anything analyze takes), compared in "
             "order (A→B, B→C, ...); or one training run directory."),
    option("-o", "--output", type=PATH, help="Write the table: .csv, .json or .parquet."),
    option("--plot", type=PATH, help="Draw the changes over depth: .png, .svg or .pdf."),
    estimator_option,
    option("--top-k", type=click.IntRange(min=1), default=TOP_K, help="Singular directions compared by "
           "subspace_overlap."),
    include_option,
    exclude_option,
    device_option,
    option("--workers", type=click.IntRange(min=0), default=0, help="Matrices solved concurrently; 0: one per core "
           "on the CPU, 1 on a GPU."),
    cache_option,
    quiet_option,
]


@app.command(no_args_is_help=True, epilog=EPILOG)
@with_options(OPTIONS)
def diff(sources: tuple[str, ...], output: Path | None, plot: Path | None, estimator: str, top_k: int,
         include: list[str], exclude: list[str], device: str, workers: int, cache: bool, quiet: bool) -> None:
    """Compare checkpoints matrix by matrix: the change of alpha and the other metrics, how far the weights
    moved, how many top directions they kept, and the verdicts gained or lost."""
    from alphaspec.analysis.cpu_threads import auto_workers, one_thread_per_solve
    from alphaspec.analysis.diff import diff_checkpoints
    from alphaspec.analysis.table import write_table
    from alphaspec.devices import resolve_device
    from alphaspec.files import check_output, input_paths
    from alphaspec.train.weights import expand_sources

    inputs = [p for s in sources for p in input_paths(s)]
    if output is not None:
        check_output(output, inputs=inputs)
    if plot is not None:
        check_output(plot, (".png", ".svg", ".pdf"), inputs=inputs)
    dev = resolve_device(device)
    found = expand_sources(list(sources))  # every checkpoint opened (headers) before the bar: bad input is one line
    workers = workers or auto_workers(dev, 1)
    with one_thread_per_solve(workers, dev), progress(err, "comparing", "matrices", quiet) as update:
        result = diff_checkpoints([], estimator, dev, include=include, exclude=exclude,
                                  top_k=top_k, workers=workers, progress=update, checkpoints=found, cache=cache)
    if output is not None:
        write_table(result.table, output)
    if plot is not None:
        from alphaspec.plots.diff import diff_figure
        from alphaspec.plots.style import save_figure

        save_figure(diff_figure(result.table), plot)
    if not quiet:
        for summary in _summaries(result.table):
            out.print(summary)
        for line in _verdict_lines(result.table):
            out.print(line, highlight=False)
        for path in (p for p in (output, plot) if p is not None):
            out.print(f"wrote {path}", highlight=False)


def _summaries(table: pd.DataFrame) -> list[Table]:
    """Per pair, a table by module type: matrices, mean Δalpha, mean and largest relative change, lowest overlap."""
    from alphaspec.analysis.diff import short

    out = []
    for (a, b), pair in table.groupby(["from", "to"], sort=False):
        summary = Table(title=f"{short(a)} → {short(b)}: changes per module type", title_justify="left",
                        header_style="bold")
        for col in ("module", "count", "Δ alpha", "rel change", "max rel", "min overlap"):
            summary.add_column(col, justify="left" if col == "module" else "right")
        for module, rows in pair.groupby("module", sort=False):
            summary.add_row(str(module), str(len(rows)), f"{rows['delta_alpha'].mean():+.3f}",
                            f"{rows['rel_change'].mean():.3g}", f"{rows['rel_change'].max():.3g}",
                            f"{rows['subspace_overlap'].min():.2f}")
        out.append(summary)
    return out


def _verdict_lines(table: pd.DataFrame) -> list[str]:
    changed = table[table["verdict_change"].fillna("") != ""]
    if changed.empty:
        return ["verdicts: no matrix gained or lost one"]
    lines = [f"verdicts changed for {len(changed)} matrices:"]
    lines += [f"  {r.name} ({r.to}): {r.verdict_change}" for r in changed.head(8).itertuples()]
    return lines + ([f"  ... and {len(changed) - 8} more (see verdict_change)"] if len(changed) > 8 else [])
