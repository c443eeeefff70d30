"""`alphaspec report`: one self-contained HTML page to open, read and share."""

from __future__ import annotations

from pathlib import Path

import click

from alphaspec.cli.common import (
    app,
    cache_option,
    device_option,
    estimator_option,
    given,
    out,
    progress_analysis,
    quiet_option,
)
from alphaspec.cli.help import PATH, argument, option, with_options

EPILOG = """
Examples:

    # a checkpoint, analysed now
    alphaspec report example:minilm -o minilm.html

    # a results table (and r.npz beside it)
    alphaspec report r.json -o r.html

    # training runs compared, with intervals
    alphaspec report runs/uniform-* runs/alphadecay-* -o study.html

    # with the decay map's figure and table
    alphaspec report ./my-llama --decay-map wd.json -o llama.html

    # many checkpoints (analyze A B ... -o series.csv), with scores
    alphaspec report series.csv --scores scores.csv -o series.html
"""


OPTIONS = [
    argument("sources", nargs=-1, help="Checkpoints (anything analyze takes), results tables, or training run "
             "directories."),
    option("-o", "--output", type=PATH, default=Path("report.html"), help="The page to write (.html)."),
    option("--decay-map", type=PATH, help="Add a decay map's figure and table."),
    option("--scores", type=PATH, help="With a long table of many sources: a CSV of source,score, for the zoo "
           "figure and the rank correlations."),
    estimator_option,
    device_option,
    cache_option,
    quiet_option,
]


@app.command(no_args_is_help=True, epilog=EPILOG)
@with_options(OPTIONS)
@click.pass_context
def report(ctx: click.Context, sources: tuple[str, ...], output: Path, decay_map: Path | None, scores: Path | None,
           estimator: str, device: str, cache: bool, quiet: bool) -> None:
    """One self-contained HTML page: provenance, the summary and verdicts, figures, every matrix (sortable,
    filterable, each opening its spectrum); training runs and their comparison."""
    from alphaspec.files import check_output, input_paths
    from alphaspec.report import render, write

    inputs = [p for s in [*sources, *([decay_map] if decay_map is not None else [])] for p in input_paths(s)]
    check_output(output, (".html", ".htm"), inputs=inputs)
    html = render(list(sources), decay_map=decay_map, device=device,
                  estimator=estimator if given(ctx, "estimator") else None, analyse=progress_analysis(quiet, cache),
                  scores=scores)
    write(html, output)
    if not quiet:
        out.print(f"wrote {output} ({len(html.encode()) / 1e6:.1f} MB)", highlight=False)
