"""Many checkpoints at once: a series over training or a zoo of models, analysed one after the other into one
long table — the usual columns after `source`, `step` and `tokens` — so that one table, one figure and one
page hold them all.

Sources are opened and analysed one at a time (the peak memory is the largest source's, as for one); a
source that cannot be read is recorded with its reason and the others go on. A source is what `analyze`
takes, or a `Source` made by train.weights.many_sources from globs, @FILE lists and training runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from alphaspec.analysis.options import AnalysisOptions
from alphaspec.errors import AlphaspecError, UsageError, describe_os_error

FRONT = ["source", "step", "tokens"]  # the long table's first columns
# how a step is read from a source's name: a run's checkpoint (run@500), Pythia/OLMo revisions (step143000,
# stage1-step5000-tokens21B), Trainer and Megatron saves (checkpoint-5000, global_step5000, iter_0005000)
STEP_PATTERNS = [re.compile(p, re.I) for p in (r"@(\d+)$", r"(?:^|[^a-z])step[_-]?(\d+)", r"checkpoint[_-](\d+)",
                                                   r"global[_-]?step[_-]?(\d+)", r"iter[_-]?(\d+)")]
MAX_SOURCES = 10_000


@dataclass
class Source:
    """One source of a series: its label (as the table names it), how to open it, and its step and tokens."""

    label: str
    open: Callable
    step: int | None = None
    tokens: int | None = None


@dataclass
class ManyAnalysis:
    """The long table of every source analysed, and the sources that failed with their one-line reasons."""

    table: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # analysed, in order


def detect_step(label: str) -> int | None:
    """The training step a source's name says (its last path part or revision), or None."""
    tail = re.split(r"[/\\]", label.rstrip("/\\"))[-1]
    for pattern in STEP_PATTERNS:
        for text in (label, tail) if pattern.pattern.startswith("@") else (tail, label.rsplit("@", 1)[-1]):
            if found := pattern.search(text):
                return int(found.group(1))
    return None


def as_source(given, options: AnalysisOptions) -> Source:
    """A source as analyze takes it (a path, a hub id, ...), or a Source already made (train.weights.many_sources
    makes them from lists, globs and run directories)."""
    from alphaspec.sources.deltas import open_source

    if isinstance(given, Source):
        return given
    label = str(given)
    return Source(label, lambda: open_source(label, options.base, options.merge), detect_step(label))


def check_unique(sources: list[Source]) -> list[Source]:
    """The same source twice is a usage error (its rows would be indistinguishable)."""
    seen: set[str] = set()
    twice = [s.label for s in sources if s.label in seen or seen.add(s.label)]
    if twice:
        raise UsageError(f"{twice[0]} is given more than once ({len(twice)} such source(s)): each source once")
    if len(sources) > MAX_SOURCES:
        raise UsageError(f"{len(sources):,} sources: at most {MAX_SOURCES:,} in one table")
    return sources


def with_steps(sources: list[Source], steps: list[int] | None) -> list[Source]:
    """`--steps`: one step per source, in order, replacing what the names say."""
    if steps is None:
        return sources
    if len(steps) != len(sources):
        raise UsageError(f"--steps gives {len(steps)} step(s) for {len(sources)} source(s): one per source, in order")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in steps):
        raise UsageError("--steps: whole numbers >= 0, one per source")
    for source, step in zip(sources, steps, strict=True):
        source.step = step
    return sources


def analyze_many(sources: Iterable, estimator: str = "median", device="auto", *, steps: list[int] | None = None,
                 options: AnalysisOptions | None = None, on_source: Callable[[int, int, str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None, **settings) -> ManyAnalysis:
    """Analyse each source in turn into one long table (`source`, `step`, `tokens`, then `analyze`'s columns,
    and `log_alpha_norm`). on_source(i, n, label): before each source. A source that fails (an AlphaspecError
    or an OSError) is kept in `failures` with its one-line reason; the others go on."""
    from alphaspec.analysis.engine import analyze_checkpoint

    opts = options or AnalysisOptions.of(estimator=estimator, **settings)
    opts = replace(opts, keep_spectra=True)  # log_alpha_norm is read off the spectra
    todo = with_steps(check_unique([as_source(s, opts) for s in sources]), steps)
    parts, failures, done = [], [], []
    for i, source in enumerate(todo):
        if on_source:
            on_source(i, len(todo), source.label)
        try:
            result = analyze_checkpoint(source.label, opts.estimator, device, options=opts, checkpoint=source.open(),
                                        progress=progress)
        except AlphaspecError as err:
            failures.append((source.label, str(err)))
            continue
        except OSError as err:
            failures.append((source.label, describe_os_error(err)))
            continue
        table = result.table
        table["log_alpha_norm"] = [_log_alpha_norm(result.spectra.get(n), a)
                                   for n, a in zip(table["name"], table["alpha"], strict=True)]
        parts.append(table.assign(source=source.label, step=source.step, tokens=source.tokens))
        done.append(source.label)
    if not parts:
        return ManyAnalysis(pd.DataFrame(columns=FRONT), failures, done)
    long = pd.concat(parts, ignore_index=True)
    long = long[FRONT + [c for c in long.columns if c not in FRONT]]
    for column in ("step", "tokens", "layer", "expert"):
        long[column] = long[column].astype("Int64")
    long.attrs = {"estimator": opts.estimator, "sources": done}
    return ManyAnalysis(long, failures, done)


def _log_alpha_norm(eigs: np.ndarray | None, alpha: float) -> float:
    """log10 of the sum of the eigenvalues to the power alpha (WeightWatcher's log_alpha_norm, a Schatten norm)."""
    if eigs is None or not math.isfinite(alpha):
        return math.nan
    logs = alpha * np.log(eigs[eigs > 0].astype(np.float64))
    if not len(logs):
        return math.nan
    top = float(logs.max())  # summed as exp(x - top): no overflow for large eigenvalues or alphas
    return (top + math.log(float(np.exp(logs - top).sum()))) / math.log(10)


def write_long_table(result: ManyAnalysis, path: Path) -> None:
    """The long table as CSV or Parquet, or as JSON in analyze's layout (`matrices`, with the sources and the
    failures beside them), so that every command that reads a results table reads it back."""
    import json

    from alphaspec._version import __version__
    from alphaspec.analysis.rows import records
    from alphaspec.analysis.table import write_table
    from alphaspec.files import atomic_write

    if path.suffix != ".json":
        return write_table(result.table, path)
    doc = {"alphaspec": __version__, "estimator": result.table.attrs.get("estimator"), "sources": result.sources,
           "failures": [{"source": s, "reason": r} for s, r in result.failures], "matrices": records(result.table)}
    text = json.dumps(doc, indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
