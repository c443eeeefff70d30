"""The `alphaspec` command line: parses options, calls the Python API, renders with rich.

One module per command; `common` holds the command group and what the commands share, `help` the command
classes.
"""

from __future__ import annotations

import os
import sys

from alphaspec.cli import analyze, cache, compare, diff, map, plot, report, tokenize, train  # noqa: F401 - importing registers the commands
from alphaspec.cli.common import app, err


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
    """Run the command group; its exit status (130 after Ctrl-C outside a command)."""
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
