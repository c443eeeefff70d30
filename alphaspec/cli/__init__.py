"""The `alphaspec` command line: parses options, calls the Python API, renders with rich.

One module per command; `common` holds the app and what the commands share.
"""

from __future__ import annotations

import sys

from . import analyze, compare, decay, diff, helptext, plot, report, tokenize, train  # noqa: F401 - importing registers the commands
from .common import app, err

helptext.install()

ORDER = ["analyze", "diff", "plot", "report", "decay-map", "tokenize", "train", "compare"]  # as --help lists them
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
