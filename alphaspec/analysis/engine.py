"""analyze(): a weights source -> one results row per matrix, in this process (analysis/solve.py) or split
over the ranks of a torchrun job (analysis/sharded.py)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from alphaspec.analysis.options import AnalysisOptions
from alphaspec.analysis.sharded import analyze_sharded
from alphaspec.analysis.solve import (
    Analysis,
    assemble,
    plan_checkpoint,
    solve_batch,
    solve_matrices,
    solve_options,
)
from alphaspec.devices import resolve_device
from alphaspec.distributed import process_group
from alphaspec.errors import UsageError
from alphaspec.sources.checkpoint import Checkpoint
from alphaspec.sources.deltas import open_source
from alphaspec.sources.in_memory import is_in_memory, memory_checkpoint
from alphaspec.sources.matrices import plan


def analyze_checkpoint(source, estimator: str = "median", device: str | torch.device = "auto", *,
                       options: AnalysisOptions | None = None, progress: Callable[[int, int], None] | None = None,
                       checkpoint: Checkpoint | None = None, config: dict | None = None, **settings) -> Analysis:
    """Analyse every weight matrix of `source` (see `analyze`), by `options` or by the AnalysisOptions fields
    given as keywords (`settings`, with `estimator`).

    progress(done, total): called as matrices are solved. checkpoint: `source` opened already. config: a
    config.json's dict for an in-memory state dict. Inside an initialised torch.distributed job (torchrun) the
    matrices are split over the ranks (analysis/sharded.py): every rank returns the whole table, rank 0 the
    spectra."""
    opts = options or AnalysisOptions.of(estimator=estimator, **settings)
    if is_in_memory(source) and checkpoint is None:  # a live model or state dict: solved where its weights are
        checkpoint = memory_checkpoint(source, config, opts.updates)
        if device == "auto" and checkpoint.device is not None:
            device = checkpoint.device
    elif config is not None:
        raise UsageError("config= is for an in-memory model or state dict; a checkpoint's config comes from its files")
    elif opts.updates:
        raise UsageError("updates=True is for a live PEFT model; an adapter directory is analysed as its updates "
                         "already (and with base= and merge=True as the merged model)")
    elif process_group()[1] > 1:
        return analyze_sharded(source, opts, device, progress=progress, checkpoint=checkpoint)
    dev = resolve_device(device)
    ckpt = checkpoint or open_source(source, opts.base, opts.merge)
    todo = plan_checkpoint(ckpt, opts.include, opts.exclude, opts.split_fused)
    total, done = len(todo.matrices), [0]
    if progress:
        progress(0, total)

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    how = solve_options(ckpt, opts)
    rows, spectra = solve_matrices(ckpt, todo.matrices, dev, how, workers=opts.workers,
                                   keep_spectra=opts.keep_spectra, on_solved=advance)
    return assemble(rows, spectra, ckpt, todo, ckpt.source if is_in_memory(source) else str(source), how, str(dev))


def analyze(source, estimator: str = "median", device: str | torch.device = "auto", *,
            progress: Callable[[int, int], None] | None = None, config: dict | None = None,
            **settings) -> pd.DataFrame:
    """Spectral analysis of a checkpoint or a model in memory: one row per weight matrix (docs/analyze.md).

    source: a .safetensors/.bin/.pt/.gguf file, a HF model or alphaspec run directory, a hub id
    `org/name[@rev]`, `example:minilm`, a live `nn.Module` (its `config` splits fused matrices; a PEFT LoRA
    model as it computes, W + s·B·A, or with updates=True its updates s·B·A alone) or a state dict (with
    `config=`, a config.json's dict, for fused splits). estimator: median | gof |
    fix-finger. device: auto (for a model in memory: where its weights are) | cpu | cuda | cuda:N.
    settings: the fields of AnalysisOptions by name (analysis/options.py): include/exclude (regexes on
    tensor names), split_fused, workers (concurrent solves), precision (fp64 | fp32: opt-in, faster on GPUs;
    its alpha error is measured in docs/analyze.md), farms (an `alpha_farms` column), randomize with seed
    (the correlation-trap columns), base (analyse W − W_base; a PEFT LoRA adapter directory as `source` is
    analysed as its updates ΔW, or with `base` and merge=True as the merged model). Skipped tensors and
    their reasons are in `table.attrs["skipped"]`; the `warning` column holds the verdicts (spectra/verdicts.py).
    """
    return analyze_checkpoint(source, estimator, device, progress=progress, config=config, **settings).table


def analyze_tensors(tensors: dict[str, torch.Tensor], estimator: str = "median", *, config: dict | None = None,
                    split_fused: bool = True, farms: bool = False) -> pd.DataFrame:
    """`analyze` of in-memory tensors (a live model's parameters) solved in the calling thread, each matrix on
    its own device and the current CUDA stream: the training hooks solve on a stream of their own, which
    `analyze`'s reader and solver threads would not see. The same source (`memory_checkpoint`), module map,
    solve options and table as `analyze`; no progress, no spectra, no threads."""
    opts = AnalysisOptions.of(estimator=estimator, split_fused=split_fused, farms=farms, cache=False)  # live weights
    ckpt = memory_checkpoint(tensors, config)
    todo = plan(ckpt.tensors, ckpt.config, split_fused=split_fused)
    how = solve_options(ckpt, opts)
    rows = []
    with torch.no_grad():
        for spec in todo.matrices:
            w = spec.extract(ckpt.live[spec.tensor])
            rows.extend(row for row, _ in solve_batch([(spec, w)], w.device, how))
    return assemble(rows, {}, ckpt, todo, ckpt.source, how, "per tensor").table
