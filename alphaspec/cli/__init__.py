"""The `alphaspec` command line: parses options, calls the Python API, renders with rich.

One module per command; `common` holds the app and what the commands share.
"""

from __future__ import annotations

import os
import sys

from alphaspec.cli import analyze, compare, diff, helptext, map, plot, report, tokenize, train  # noqa: F401 - importing registers the commands
from alphaspec.cli.common import app, err

helptext.install()

ORDER = ["analyze", "diff", "plot", "report", "decay-map", "map", "tokenize", "train", "compare"]  # as --help lists them
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    """The command line, as a function: exits with the command's status (SystemExit)."""
    sys.exit(_status(app))


def entry() -> None:
    """The `alphaspec` program: main(), except that a rank of a torchrun job then ends without Python's
    shutdown (distributed.end_rank says why), its output flushed."""
    code = _status(app)
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        from alphaspec.distributed import end_rank

        end_rank(code)
    sys.exit(code)


def _status(command) -> int:
    """Run the Typer app; its exit status (130 after Ctrl-C outside a command)."""
    try:
        command()
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except SystemExit as done:
        if isinstance(done.code, str):
            err.print(done.code, markup=False, highlight=False)
        return done.code if isinstance(done.code, int) else 0 if done.code is None else 1
    return 0
