"""What every command shares: the command group, consoles, one-line errors, loading with a progress bar."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from alphaspec._version import __version__
from alphaspec.choices import ESTIMATORS
from alphaspec.cli.help import Group, Option, option
from alphaspec.errors import AlphaspecError, describe_os_error


class Commands(Group):
    """The command group; the one place where errors become an `error:` line and an exit status.

    AlphaspecError (bad input or output): exit 1 (2 for a usage error); an OSError nobody else
    explained: exit 1 with its path; click's usage errors: one line and exit 2.
    """

    order = ("analyze", "diff", "plot", "report", "decay-map", "map", "tokenize", "train", "compare", "cache")

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands in the order of the work (analyse, compare, draw, report, map, train), not alphabetically."""
        return sorted(self.commands, key=lambda name: self.order.index(name) if name in self.order else len(self.order))

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            with terminate_as_interrupt():
                rv = super().main(*args, standalone_mode=False, **kwargs)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.NoArgsIsHelpError as e:  # a command called bare: its help
            click.echo(e.ctx.get_help())
            code = 2
        except click.exceptions.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "alphaspec"
            code = _error_line(f"{e.format_message()} (see '{command} --help')", 2)
        except click.exceptions.ClickException as e:
            code = _error_line(e.format_message(), e.exit_code)
        except click.exceptions.Abort:
            code = _error_line("aborted", 1)
        except Stopped as e:
            code = e.report()
        except AlphaspecError as e:  # under torchrun, each rank says what happened there (RankFailure.own_line)
            code = _error_line(getattr(e, "own_line", "") or str(e), e.exit_code)
        except OSError as e:
            code = _error_line(describe_os_error(e), 1)
        except KeyboardInterrupt as e:  # outside a command (while parsing)
            code = Stopped(e).report()
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx):
        """Run the command; Ctrl-C, SIGTERM and a closed pipe leave it as Stopped, which click passes on
        (it would turn Ctrl-C into a bare "Aborted!" and a closed pipe into a bare exit 1)."""
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, BrokenPipeError) as e:
            raise Stopped(e) from None


class Stopped(Exception):  # noqa: N818 - a command stopped from outside, not a failure of its own
    """A command stopped by Ctrl-C, SIGTERM or its reader closing the pipe."""

    def __init__(self, cause: BaseException):
        super().__init__(type(cause).__name__)
        self.cause = cause

    def report(self) -> int:
        """The exit status, with one line saying what stopped the command and what it left (none for a pipe)."""
        if isinstance(self.cause, BrokenPipeError):  # `alphaspec ... | head`: the reader left, as SIGPIPE would end it
            with contextlib.suppress(OSError, ValueError):  # nothing more to flush at exit (no fd under a test runner)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        return _interrupted(self.cause)


RESUME_HINTS = {  # what an interrupted command leaves, by command
    "train": "the run keeps its last checkpoint; the same command with --resume continues from it",
    "tokenize": "the cache keeps its complete shards; the same command again continues from the last one",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s), raised like Ctrl-C so that locks and temporary files are cleaned up."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises Terminated instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _interrupted(e: BaseException) -> int:
    """One line saying what stopped the command and what it left; 130 for Ctrl-C, 143 for SIGTERM."""
    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
    command = next((c for c in sys.argv[1:] if not c.startswith("-")), "")
    hint = RESUME_HINTS.get(command, "outputs are written whole or not at all, so none was left half-written")
    if (run := getattr(e, "run_dir", None)) is not None:  # `train` says where its run is: has it a checkpoint?
        from alphaspec.train.rundir import checkpoints

        if not checkpoints(Path(run)):
            hint = "no checkpoint was written yet; the same command starts the run again"
    return _error_line(f"{what}: {hint}", 143 if isinstance(e, Terminated) else 130)


def _error_line(message: str, code: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the message held
    err.print(Text(f"error: {text}"), style="bold red", soft_wrap=True, highlight=False)
    return code


class PipeConsole(Console):
    """rich's console, except that a reader closing the pipe (`| head`) stops the command as SIGPIPE would (exit
    141, no message) instead of rich's bare exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader closed the pipe")


out = PipeConsole()
err = PipeConsole(stderr=True)


def _regex_list(ctx: click.Context, param: click.Parameter, patterns: tuple[str, ...]) -> list[str]:
    """Callback of --include and --exclude: every pattern must compile."""
    return regexes(list(patterns), None)


# Options several commands share, declared once.
estimator_option = option("-e", "--estimator", type=click.Choice(ESTIMATORS), default=ESTIMATORS[0],
                          help="How xmin is chosen (when analysing).")
device_option = option("--device", default="auto", metavar_="DEVICE", help="auto, cpu, cuda or cuda:N (when analysing).")
include_option = option("--include", multiple=True, metavar_="REGEX", callback=_regex_list,
                        help="Only the tensors whose name matches (repeatable).")
tuned_include_option = option("--include", multiple=True, metavar_="REGEX", callback=_regex_list,
                              help="Tune the tensors whose name matches instead of the transformer-block matrices "
                              "(repeatable).")
exclude_option = option("--exclude", multiple=True, metavar_="REGEX", callback=_regex_list,
                        help="Leave out the tensors whose name matches (repeatable).")
cache_option = option("--cache/--no-cache", default=True, help="Take the spectra of matrices solved before from "
                      "the eigenvalue store and keep those solved now (see `alphaspec cache`).")
QUIET = "Print only warnings and errors."
quiet_option = option("-q", "--quiet", is_flag=True, help=QUIET)


def quiet_param() -> Option:
    """-q as a parameter object, for a command built from a list of them (train)."""
    return Option(["-q", "--quiet"], is_flag=True, help=QUIET)


def fail(message: str, code: int = 1) -> None:
    """End the command with one `error:` line on stderr and exit status `code` (see Commands)."""
    error = AlphaspecError(message)
    error.exit_code = code
    raise error


@click.group(cls=Commands, name="alphaspec", context_settings={"show_default": True, "max_content_width": 100})
@click.version_option(__version__, "--version", message="alphaspec %(version)s", help="Print the version and exit.")
def app() -> None:
    """Heavy-tailed spectral analysis of language-model checkpoints (HT-SR), and AlphaDecay weight decay."""


def analyze_with_progress(source: str, estimator: str, device, quiet: bool, header: str | None = None, **options):
    """analyze_checkpoint() with progress on stderr (cli/progress: a bar, or plain lines without a terminal), and
    `header` printed once the work is planned (so that bad input ends in a lone `error:` line)."""
    from alphaspec.analysis.engine import analyze_checkpoint
    from alphaspec.cli.progress import progress
    from alphaspec.devices import resolve_device
    from alphaspec.distributed import process_group
    from alphaspec.sources.checkpoint import open_checkpoint

    device = resolve_device(device)  # bad input fails before a progress bar is drawn
    if process_group()[1] == 1:  # under torchrun every rank opens it inside the collective analysis
        options["checkpoint"] = options.get("checkpoint") or open_checkpoint(source)
    with progress(err, "analysing", "matrices", quiet) as update:

        def on_progress(done: int, total: int) -> None:
            if done == 0 and header and not quiet:
                err.print(header, highlight=False)
            update(done, total)

        return analyze_checkpoint(source, estimator, device, progress=on_progress, **options)


def load(source: str, estimator: str, device: str, quiet: bool, spectra_file: Path | None = None,
         split_fused: bool = True, farms: bool = False, asked: str | None = None, rounded_to: str | None = None,
         cache: bool = True, refit: bool = False):
    """(table, spectra) from a results file or a checkpoint analysed now with a progress bar
    (analysis.results.results_or_analysis says how)."""
    from alphaspec.analysis.results import results_or_analysis

    return results_or_analysis(source, estimator, device, asked=asked, spectra_file=spectra_file,
                               rounded_to=rounded_to, refit=refit, analyse=progress_analysis(quiet, cache),
                               split_fused=split_fused, farms=farms)


def progress_analysis(quiet: bool, cache: bool = True) -> Callable:
    """analyze_checkpoint as the commands call it: with a progress bar (unless quiet) and the store setting."""
    def analyse(source, estimator, device, **options):
        return analyze_with_progress(source, estimator, device, quiet, cache=cache, **options)

    return analyse


def given(ctx: click.Context, name: str) -> bool:
    """Whether option `name` was set on the command line (or its environment variable), not left at its default."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT,
                                                  click.core.ParameterSource.DEFAULT_MAP)


def finite(ctx: click.Context | None, param: click.Parameter | None, value):
    """Callback: a float option (or a tuple of them) must be a finite number (not nan, not inf)."""
    values = value if isinstance(value, tuple) else (value,)
    bad = [v for v in values if v is not None and not math.isfinite(v)]
    if bad:
        raise click.BadParameter(f"{bad[0]} is not a finite number")
    return value


def ratio_pair(ctx: click.Context, param: click.Parameter, value: tuple[float, float] | None
               ) -> tuple[float, float] | None:
    """Callback of --ratio S1 S2 (None: not given, where it has no default), checked by the spec's own
    validator."""
    from alphaspec.maps.spec import ratio_problem

    if value is None:
        return None
    s1, s2 = finite(ctx, param, value)
    if problem := ratio_problem((s1, s2)):
        raise click.BadParameter(f"{s1:g} {s2:g}: {problem}")
    return value


def decay_policy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of --default-decay (all, matrices, or a finite number >= 0; None: not given), by the spec's
    validator."""
    from alphaspec.maps.spec import policy_problem

    if value is not None and (problem := policy_problem(value)):
        raise click.BadParameter(f"{value!r}: {problem}")
    return value


def regexes(patterns: list[str], option: str | None) -> list[str]:
    """The patterns, each checked to compile; a bad one is a usage error naming `option`."""
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise click.BadParameter(f"{p!r} is not a valid regular expression ({e})", param_hint=option) from e
    return patterns


def report_figures(rendered, quiet: bool = False) -> None:
    """`drew PATH` per figure (not with -q), `skipped FIGURE: why` per figure not drawn (a warning); none
    drawn at all is an error."""
    if not rendered.written:
        fail("no figure could be drawn: " + "; ".join(rendered.skipped))
    for path in [] if quiet else rendered.written:
        out.print(f"drew {path}", highlight=False)
    for line in rendered.skipped:
        err.print(Text(f"skipped {line}"), style="yellow", highlight=False)


def draw(table, spectra, out_dir: Path, kinds: list[str], fmt: str, names: list[str], dmap=None, excess: bool = False,
         vmap=None):
    from alphaspec.plots.render import render_figures  # matplotlib is loaded only when figures are asked for

    return render_figures(table, spectra, out_dir, kinds, fmt, names, dmap, excess, value_map=vmap)
