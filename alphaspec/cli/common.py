"""What every command shares: the Typer app, consoles, one-line errors, loading with a progress bar."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .. import __version__

MODEL_KINDS = ("spectra", "alpha-modules", "alpha-depth")  # plots.MODEL_KINDS, without importing matplotlib

app = typer.Typer(
    name="alphaspec",
    help="Heavy-tailed spectral analysis of language-model checkpoints (HT-SR), and AlphaDecay weight decay.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class Estimator(str, Enum):
    median = "median"
    gof = "gof"
    fix_finger = "fix-finger"
    fix_finger_legacy = "fix-finger-legacy"


def fail(message: str, code: int = 1) -> None:
    """One `error:` line on stderr and a non-zero exit, never a traceback."""
    err.print(Text(f"error: {message}"), style="bold red", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def show_version(value: bool) -> None:
    if value:
        out.print(f"alphaspec {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """alphaspec: look inside language-model checkpoints through their weight spectra."""


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} matrices/s" if task.speed else "", style="progress.data.speed")


def analyse(source: str, estimator: str, device, quiet: bool, **options):
    """run() with a progress bar (matrices done, matrices/s, ETA) on stderr; bad input ends in `error:`."""
    from ..analysis import run
    from ..checkpoint import SourceError
    from ..esd import DeviceError

    columns = [TextColumn("analysing"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=err, disable=quiet) as bar:
            task = bar.add_task("analyse", total=None)
            return run(source, estimator, device, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total), **options)
    except (SourceError, DeviceError) as e:
        fail(str(e))


def load(source: str, estimator: str, device: str, quiet: bool, spectra_file: Path | None = None):
    """(table, spectra) from a results file written by `analyze` (spectra from its .npz, when there is one),
    or from a checkpoint analysed now."""
    from ..output import TABLE_SUFFIXES, read_results, read_spectra

    path = Path(source)
    if path.suffix not in TABLE_SUFFIXES or not path.is_file():
        result = analyse(source, estimator, device, quiet, keep_spectra=True)
        return result.table, result.spectra
    try:
        npz = spectra_file or path.with_suffix(".npz")
        return read_results(path), (read_spectra(npz) if npz.is_file() else {})
    except (OSError, ValueError, KeyError) as e:
        fail(f"{source}: not a results file written by alphaspec analyze ({e})")


def regexes(patterns: list[str], option: str) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise typer.BadParameter(f"{p!r} is not a valid regular expression ({e})", param_hint=option) from e
    return patterns


def draw(table, spectra, out_dir: Path, kinds: list[str], fmt: str, names: list[str], dmap=None) -> list[Path]:
    from ..plots import render  # matplotlib is loaded only when figures are asked for

    try:
        return render(table, spectra, out_dir, kinds, fmt, names, dmap)
    except (ValueError, OSError) as e:
        fail(str(e))
