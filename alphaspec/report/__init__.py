"""`alphaspec report`: one self-contained HTML page of a checkpoint, a results table, training runs, a decay map.

    html = alphaspec.report.render(["example:minilm"])             # or a results file, run directories
    alphaspec.report.write(html, "report.html")

The page holds everything: figures inlined (SVG, or PNG when large), the data its scripts read, small
hand-written styles and scripts; a Content-Security-Policy forbids every fetch. Without scripts the
tables and figures read as they are; with them, the matrix table sorts and filters and each row opens
its matrix's spectrum.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from alphaspec._version import __version__
from alphaspec.errors import UsageError


def render(sources: Iterable, *, decay_map=None, estimator: str | None = None, device: str = "auto",
           title: str | None = None, analyse: Callable | None = None, scores: str | Path | None = None) -> str:
    """The report's HTML for SOURCE(s): checkpoints (anything `analyze` takes) and results tables, or one or
    more training run directories (their comparison, then the last checkpoint); `decay_map`: a DecayMap or
    a map file, whose figure and table are added. estimator: for checkpoints analysed now (default median);
    a results table fitted with another one is refused. analyse: analyze_checkpoint or a wrapper of it (the
    CLI's draws progress). A long table of many sources (`analyze A B ... -o T`) is a series section: its
    summary, figures and, with `scores` (a CSV of source,score), the zoo and the correlations."""
    from alphaspec.analysis.results import long_table
    from alphaspec.report.html import page

    sources = [str(s) for s in sources]
    if not sources and decay_map is None:
        raise UsageError("report needs a SOURCE (a checkpoint, a results table or run directories) or a decay map")
    runs, others = _split_runs(sources)
    sections = []
    if runs:
        sections += _runs_sections(runs, estimator, device, analyse)
    for source in others:
        long = long_table(source)
        sections.append(_series_section(source, long, scores) if long is not None else
                        _checkpoint_section(source, estimator, device, analyse))
    if decay_map is not None:
        sections.append(_decay_section(decay_map))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = title or ", ".join(Path(s).name or s for s in (sources or [str(decay_map)]))
    return page(f"alphaspec report: {name}", sections, f"made {when} by alphaspec {__version__}")


def write(html: str, path: str | Path) -> Path:
    """Write the page atomically (a failure leaves any previous file as it was)."""
    from alphaspec.files import atomic_write, check_output

    path = Path(path)
    check_output(path, (".html", ".htm"))
    atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    return path


def _split_runs(sources: list[str]) -> tuple[list[str], list[str]]:
    from alphaspec.train.rundir import has_log

    runs = [s for s in sources if has_log(Path(s), "metrics")]
    return runs, [s for s in sources if s not in runs]


def _runs_sections(runs: list[str], estimator: str | None, device: str, analyse: Callable | None) -> list[str]:
    from alphaspec.report.runs import runs_section
    from alphaspec.train.compare import compare
    from alphaspec.train.rundir import has_log, read_log

    comparison = compare(runs)
    alphas = [read_log(Path(r), "alphas", "the report") if has_log(Path(r), "alphas") else None for r in runs]
    sections = [runs_section(comparison, alphas)]
    last = runs[-1]
    if (Path(last) / "model.safetensors").is_file():
        sections.append(_checkpoint_section(last, estimator, device, analyse, f"Last checkpoint of {Path(last).name}"))
    return sections


def _series_section(source: str, table: pd.DataFrame, scores: str | Path | None) -> str:
    from alphaspec.analysis.summary import read_scores
    from alphaspec.report.series import series_section

    given = read_scores(scores, list(dict.fromkeys(table["source"]))) if scores is not None else None
    return series_section(table, f"Many checkpoints: {Path(source).name} ({table['source'].nunique()} sources)", given)


def _checkpoint_section(source: str, estimator: str | None, device: str, analyse: Callable | None,
                        heading: str | None = None) -> str:
    from alphaspec.analysis.results import is_results_file, results_or_analysis
    from alphaspec.report.checkpoint import checkpoint_section

    saved = is_results_file(source)
    frame, spectra = results_or_analysis(source, estimator, device, asked="-e" if saved else None, analyse=analyse)
    heading = heading or (f"Results: {Path(source).name}" if saved else f"Checkpoint: {source}")
    return checkpoint_section(frame, spectra, provenance(source, frame, results=saved), heading)


def provenance(source: str, frame: pd.DataFrame, results: bool = False) -> list[tuple[str, object]]:
    """Where the numbers come from: source, its files' fingerprints (or hub revision), settings, versions, date."""
    import torch

    attrs = frame.attrs
    pairs: list[tuple[str, object]] = [("source", source)]
    revision = _hub_revision(source)
    if revision:
        pairs.append(("hub revision", revision))
    for file, digest in _fingerprints(source, results):
        pairs.append((f"file {file}", digest))
    pairs += [("estimator", attrs.get("estimator") or (frame["estimator"].iloc[0] if "estimator" in frame else "")),
              ("precision", attrs.get("precision", "fp64")), ("device", attrs.get("device", "")),
              ("matrices", len(frame)), ("alphaspec", __version__), ("torch", torch.__version__),
              ("python", platform.python_version()),
              ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    return [(k, v) for k, v in pairs if v not in (None, "")]


FINGERPRINT_BYTES = 1 << 20


def _fingerprints(source: str, results: bool) -> list[tuple[str, str]]:
    """Per local weight or results file: size and a SHA-256 of its first and last MiB (a full hash of a
    13B checkpoint would take minutes; this tells two files apart and costs nothing)."""
    path = _local(source)
    if path is None:
        return []
    if results:
        files = [path]
    elif path.is_dir():
        files = sorted([*path.glob("*.safetensors"), *path.glob("*.gguf"), *path.glob("*.bin")])[:64]
    elif path.is_file():
        files = [path]
    else:
        return []
    out = []
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(FINGERPRINT_BYTES)
            f.seek(max(0, size - FINGERPRINT_BYTES))
            tail = f.read(FINGERPRINT_BYTES)
        digest = hashlib.sha256(head + tail + str(size).encode()).hexdigest()[:16]
        out.append((file.name, f"{size:,} bytes, sha256(first+last MiB) {digest}"))
    return out


def _local(source: str) -> Path | None:
    """Where a source's files are on this machine: the path itself, the bundled example, or the hub cache's
    snapshot (already fetched by the analysis); None when it cannot be had without the network."""
    from alphaspec.errors import AlphaspecError
    from alphaspec.sources.checkpoint import resolve

    try:
        return resolve(source)
    except AlphaspecError:
        return None


def _hub_revision(source: str) -> str | None:
    """The commit a hub id resolved to (its snapshot folder's name), or the revision it names."""
    path = _local(source) if not Path(source).exists() else None
    if path is not None and path.parent.name == "snapshots":
        return path.name
    return source.rsplit("@", 1)[1] if "@" in source and not Path(source).exists() else None


def _decay_section(decay_map) -> str:
    from alphaspec.maps.file import DecayMap
    from alphaspec.plots.maps import decay_figure
    from alphaspec.report.html import esc, figure, number, table

    dmap = decay_map if isinstance(decay_map, DecayMap) else DecayMap.load(decay_map)
    rows = [[esc(m["name"]), esc(m.get("module", "")), number(m.get("layer")), number(m.get(dmap.metric)),
             number(m["weight_decay"], 4), number(m["weight_decay"] / dmap.weight_decay if dmap.weight_decay else None, 2)]
            for m in dmap.modules]
    body = table(["tensor", "module", "layer", esc(dmap.metric), "decay", "decay / w"], rows,
                 f"{len(rows)} tuned tensors; every other parameter: {dmap.default_policy} "
                 f"({dmap.default_weight_decay:g})", "decays")
    return (f"<section class='decay'><h2>Decay map</h2>"
            f"{figure(decay_figure(dmap), 'weight decay against the metric per tuned tensor')}"
            f"<div class='scroll'>{body}</div></section>")
