"""The program's entry point: SIGTERM is answered from the first instruction, before the command line (and
torch) load; once a command runs, cli.common turns it into a clean stop with cleanup."""

from __future__ import annotations

import os
import signal
import sys


def _terminated_outside_a_command(signum, frame) -> None:
    sys.stderr.write("error: terminated (SIGTERM) before the command started its work: nothing was written\n")
    sys.stderr.flush()
    os._exit(143)


def main() -> None:
    """`alphaspec` and `python -m alphaspec`."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a parent that chose otherwise keeps its choice
        signal.signal(signal.SIGTERM, _terminated_outside_a_command)
    from alphaspec.cli import entry

    entry()
