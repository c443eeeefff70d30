"""`alphaspec report`: one self-contained HTML page to open, read and share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alphaspec.cli.common import Device, Estimator, EstimatorOption, Quiet, app, given, out

EPILOG = """
**Examples**

    # a checkpoint, analysed now
    alphaspec report example:minilm -o minilm.html

    # a results table (and r.npz beside it)
    alphaspec report r.json -o r.html

    # training runs compared, with intervals
    alphaspec report runs/uniform-* runs/alphadecay-* -o study.html

    # with the decay map's figure and table
    alphaspec report ./my-llama --decay-map wd.json -o llama.html
"""


@app.command(no_args_is_help=True, epilog=EPILOG)
def report(
    ctx: typer.Context,
    sources: Annotated[list[str] | None, typer.Argument(help="Checkpoints (anything analyze takes), results tables, "
                                                        "or training run directories.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="The page to write (.html).")] = Path("report.html"),
    decay_map: Annotated[Path | None, typer.Option("--decay-map", help="Add a decay map's figure and table.")] = None,
    estimator: EstimatorOption = Estimator.median,
    device: Device = "auto",
    quiet: Quiet = False,
) -> None:
    """One self-contained HTML page: provenance, the summary and verdicts, figures, every matrix (sortable,
    filterable, each opening its spectrum); training runs and their comparison."""
    from alphaspec.files import check_output, input_paths
    from alphaspec.report import render, write

    inputs = [p for s in [*(sources or []), *([decay_map] if decay_map is not None else [])] for p in input_paths(s)]
    check_output(output, (".html", ".htm"), inputs=inputs)
    html = render(sources or [], decay_map=decay_map, device=device,
                  estimator=estimator.value if given(ctx, "estimator") else None)
    write(html, output)
    if not quiet:
        out.print(f"wrote {output} ({len(html.encode()) / 1e6:.1f} MB)", highlight=False)
