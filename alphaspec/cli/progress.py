"""Progress on stderr: a bar on a terminal; elsewhere (nohup, SLURM and CI logs) plain lines, the first, then at
most one every PLAIN_EVERY seconds, and the last, as `train` prints its steps; nothing with -q."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

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

PLAIN_EVERY = 10.0  # seconds between plain progress lines

Update = Callable[[int, int], None]  # update(done, total)


class RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "", style="progress.data.speed")


@contextlib.contextmanager
def progress(console: Console, label: str, unit: str, quiet: bool) -> Iterator[Update]:
    """update(done, total) for work counted in `unit`s, on `console` (stderr): a bar, plain lines, or nothing."""
    if quiet:
        yield lambda done, total: None
    elif console.is_terminal:
        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), RateColumn(unit), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
    else:
        yield PlainLines(console, label, unit)


class PlainLines:
    """`analysing 12/40 matrices (30%) | 1.5 matrices/s | 0:00:08 elapsed, eta 0:00:19` lines."""

    def __init__(self, console: Console, label: str, unit: str, every: float = PLAIN_EVERY):
        self.console, self.label, self.unit, self.every = console, label, unit, every
        self.start = time.perf_counter()
        self.last: float | None = None  # when the last line was printed
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        due = self.last is None or now - self.last >= self.every or (done >= total and not self.finished)
        if not due or total <= 0:
            return
        self.last, self.finished = now, done >= total
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 and done else 0.0
        eta = f", eta {clock((total - done) / rate)}" if rate and done < total else ""
        self.console.print(Text(f"{self.label} {done}/{total} {self.unit} ({done / total:.0%}) | {rate:.1f} {self.unit}/s | "
                       f"{clock(elapsed)} elapsed{eta}"), highlight=False, soft_wrap=True)


def clock(seconds: float) -> str:
    """H:MM:SS, as the progress bar shows times."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
