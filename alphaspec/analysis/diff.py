"""Checkpoints side by side (`alphaspec diff A B [C ...]`): per matrix, matched by name, how each pair of
consecutive checkpoints differs.

Each tensor is read once from every checkpoint, one checkpoint after the other, its matrices solved as
they arrive (on the same engine as `analyze`) and compared with the previous checkpoint's, then dropped:
at most two checkpoints' copies of one tensor in memory (per worker), however many checkpoints. Per pair (A→B) and matrix:

  delta_<metric>    B's value minus A's, for alpha and the other spectral metrics
  rel_change        ‖W_B − W_A‖_F / ‖W_A‖_F
  subspace_overlap  how much of A's top-k right singular subspace (its k strongest input directions,
                    k = --top-k, 8) B keeps: ‖V_Aᵀ V_B‖_F² / k, 1 when the same directions dominate, about
                    k/m for unrelated ones. The subspaces are exact: eigenvectors of the float64 Gram
                    matrix of the smaller side (NaN for a matrix with NaN/Inf entries or all zeros)
  verdict_change    verdicts B gained (+) and lost (−) relative to A
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from alphaspec.analysis.options import AnalysisOptions
from alphaspec.analysis.pool import bounded_map
from alphaspec.analysis.rows import ordered_table
from alphaspec.analysis.solve import plan_checkpoint, solve_batch, solve_options
from alphaspec.analysis.store import matrix_key
from alphaspec.devices import resolve_device
from alphaspec.errors import UsageError
from alphaspec.sources.checkpoint import Checkpoint, SourceError
from alphaspec.sources.deltas import open_source
from alphaspec.sources.read_ahead import reading_order
from alphaspec.spectra.subspaces import TOP_K, pair_metrics, right_basis
from alphaspec.spectra.verdicts import verdicts

DELTA_METRICS = ("alpha", "log_spectral_norm", "stable_rank", "entropy", "alpha_weighted", "num_spikes", "mp_softrank")


@dataclass
class DiffResult:
    """The pair table (one row per matrix and consecutive pair), each checkpoint's own analysis, their labels."""

    table: pd.DataFrame
    analyses: list[pd.DataFrame]
    labels: list[str]


def _check_matched(first: Checkpoint, other: Checkpoint, names: Iterable[str]) -> None:
    shapes = {t.name: tuple(t.shape) for t in other.tensors}
    mine = {t.name: tuple(t.shape) for t in first.tensors}
    missing = [n for n in names if n not in shapes]
    if missing:
        raise SourceError(f"{other.source}: has no {missing[0]} ({len(missing)} of {first.source}'s matrices missing: "
                          "checkpoints of different models?)")
    differ = [n for n in names if shapes[n] != mine[n]]
    if differ:
        n = differ[0]
        raise SourceError(f"{other.source}: {n} is {list(shapes[n])}, {list(mine[n])} in {first.source} "
                          f"({len(differ)} such; leave them out with --exclude)")


def short(label: str) -> str:
    """A checkpoint's label as titles and summaries show it: the last part of a local path (a hub id or run
    step as it is)."""
    path = Path(label)
    return path.name if path.exists() and path.name else label


def _verdict_change(before: str, after: str) -> str:
    was, now = set(filter(None, before.split(","))), set(filter(None, after.split(",")))
    return " ".join([f"+{w}" for w in sorted(now - was)] + [f"-{w}" for w in sorted(was - now)])


def pair_rows(rows: list[dict], pairs: list[dict], labels: list[str]) -> list[dict]:
    """The table rows of one matrix: per consecutive pair, the deltas, the pair metrics and the verdict change."""
    out = []
    for i, metrics in enumerate(pairs):
        a, b = rows[i], rows[i + 1]
        row = {k: a[k] for k in ("name", "layer", "module", "rows", "cols", "expert", "stack")}
        row |= {"from": labels[i], "to": labels[i + 1], "alpha_from": a["alpha"], "alpha_to": b["alpha"]}
        row |= {f"delta_{m}": b[m] - a[m] for m in DELTA_METRICS} | metrics
        row |= {"warning_from": a["warning"], "warning_to": b["warning"],
                "verdict_change": _verdict_change(a["warning"], b["warning"])}
        out.append(row)
    return out


def _per_source_and_pairs(rows: list[list[dict]], metrics: list[list[dict]], labels: list[str]
                          ) -> tuple[list[list[dict]], list[dict]]:
    """One tensor's rows regrouped per checkpoint (with the verdicts, as analyze gives them), and its pair rows."""
    per_source, pairs = [[] for _ in labels], []
    for found_rows, found_metrics in zip(rows, metrics, strict=True):
        for i, (row, warning) in enumerate(zip(found_rows, verdicts(pd.DataFrame(found_rows)), strict=True)):
            row["warning"] = warning
            per_source[i].append(row)
        pairs.extend(pair_rows(found_rows, found_metrics, labels))
    return per_source, pairs


def _check_comparable(first: Checkpoint, other: Checkpoint, by_tensor: dict, include, exclude,
                      split_fused: bool) -> None:
    """`other` holds the first checkpoint's matrices, in the same shapes, and no matrix the first lacks (the
    comparison goes by the first's matrices: one it lacks would be dropped silently)."""
    _check_matched(first, other, by_tensor)
    extra = sorted({m.tensor for m in plan_checkpoint(other, include, exclude, split_fused).matrices} - set(by_tensor))
    if extra:
        raise SourceError(f"{other.source}: has {extra[0]}, which {first.source} lacks ({len(extra)} such "
                          "matrices; leave them out with --exclude)")


def diff_checkpoints(sources: Iterable, estimator: str = "median", device: str | torch.device = "auto", *,
                     include: Iterable[str] = (), exclude: Iterable[str] = (), split_fused: bool = True,
                     top_k: int = TOP_K, workers: int = 1, progress: Callable[[int, int], None] | None = None,
                     checkpoints: list[tuple[str, Checkpoint]] | None = None, cache: bool = True) -> DiffResult:
    """Compare two or more checkpoints matrix by matrix (module docstring); sources as `analyze` takes them,
    or `checkpoints` opened already as (label, checkpoint), such as a training run's
    (`alphaspec.train.weights.run_checkpoints`). cache: use and fill the eigenvalue store (analysis/store.py)."""
    found = checkpoints or [(str(s), open_source(s)) for s in sources]
    if len(found) < 2:
        raise UsageError("diff needs two or more checkpoints (or a run directory that kept two or more)")
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    labels, ckpts = [label for label, _ in found], [c for _, c in found]
    dev = resolve_device(device)
    todo = plan_checkpoint(ckpts[0], include, exclude, split_fused)
    by_tensor, reads = reading_order(ckpts[0], todo.matrices)
    for other in ckpts[1:]:
        _check_comparable(ckpts[0], other, by_tensor, include, exclude, split_fused)
    hows = [solve_options(c, AnalysisOptions(estimator, cache=cache)) for c in ckpts]
    files = [{t.name: t.file for t in c.tensors} for c in ckpts]
    lock, done, total = threading.Lock(), [0], len(todo.matrices)

    def job(name: str) -> tuple[list[list[dict]], list[dict]]:
        specs = by_tensor[name]
        rows: list[list[dict]] = [[] for _ in specs]  # per matrix of the tensor, a row per checkpoint
        metrics: list[list[dict]] = [[] for _ in specs]  # per matrix, the pair metrics of consecutive checkpoints
        before: list[torch.Tensor] = []
        bases: list = []  # the previous checkpoint's top-k subspaces, each solved once for both of its pairs
        with torch.no_grad():
            for i, (ckpt, file, how) in enumerate(zip(ckpts, files, hows, strict=True)):  # two copies at most
                tensor = dict(ckpt.read(file[name], [name], dev))[name]
                read = [spec.extract(tensor) for spec in specs]
                keys = [matrix_key(m) if how.store is not None else None for m in read]  # before the copy to a GPU
                mats = [m.to(dev) for m in read]
                now = [right_basis(m, min(top_k, *m.shape)) for m in mats]
                for j, (spec, m) in enumerate(zip(specs, mats, strict=True)):
                    rows[j].append(solve_batch([(spec, m)], dev, how, [keys[j]])[0][0])
                    if i:
                        metrics[j].append(pair_metrics(before[j], m, top_k, bases[j], now[j]))
                before, bases = mats, now
                del tensor
        per_source, pairs = _per_source_and_pairs(rows, metrics, labels)
        with lock:
            done[0] += len(specs)
            if progress:
                progress(done[0], total)
        return per_source, pairs

    if progress:
        progress(0, total)
    results = list(bounded_map(job, [n for _, names in reads for n in names], workers, "alphaspec-diff"))
    if hows[0].store is not None:
        hows[0].store.trim()
    analyses = [ordered_table([r for per_source, _ in results for r in per_source[i]]) for i in range(len(ckpts))]
    pair_table = pd.DataFrame([p for _, pairs in results for p in pairs])
    position = {name: i for i, name in enumerate(analyses[0]["name"])}  # analyze's order: by layer, module type
    pair_table = pair_table.sort_values("name", key=lambda names: names.map(position), kind="stable", ignore_index=True)
    pair_table["layer"] = pair_table["layer"].astype("Int64")
    return DiffResult(pair_table, analyses, labels)
