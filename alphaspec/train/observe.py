"""What a run records about its weights while it trains: the spectra of the block matrices (alphas.csv)
and the learned multipliers with the norms of the matrices they scale (multipliers.csv)."""

from __future__ import annotations

import torch

from ..analysis import analyze_tensors, records
from ..decay import is_tuned_candidate
from ..hook import full_tensor
from ..modules import layer_index, module_type
from .model import MULTIPLIER_NAMES, Linear
from .rundir import ALPHA_COLUMNS


def spectra_rows(model: torch.nn.Module, step: int, estimator: str, rank: int = 0) -> list[dict]:
    """The fits and norms of the block matrices as they are now (the ESD engine of `analyze`), on rank 0.

    Every rank calls it: FSDP2 shards are gathered first.
    """
    tuned = {n: full_tensor(p.detach()) for n, p in model.named_parameters() if is_tuned_candidate(n, p)}
    if rank:
        return []
    table = analyze_tensors(tuned, estimator)
    table.insert(0, "step", step)
    return records(table[ALPHA_COLUMNS])


def multiplier_rows(model: torch.nn.Module, step: int, rank: int = 0) -> list[dict]:
    """Per reparametrised matrix and kind of multiplier (row_mult, col_mult, scale): mean, std, min and max of
    the learned values, and the Frobenius norms of W and of W_eff = s diag(r) W diag(c). Every rank calls it
    (FSDP2 shards are gathered first); rows on rank 0."""
    rows = []
    for name, module in getattr(model, "module", model).named_modules():
        kinds = {k: getattr(module, k) for k in MULTIPLIER_NAMES if isinstance(module, Linear)
                 and getattr(module, k, None) is not None}
        if not kinds:
            continue
        values = {k: full_tensor(v.detach()).float() for k, v in kinds.items()}
        w = full_tensor(module.weight.detach()).float()
        if rank:
            continue
        eff = w * values.get("row_mult", torch.ones(1))[:, None] * values.get("col_mult", torch.ones(1))[None, :]
        eff = eff * values.get("scale", torch.ones(1))
        where = {"step": step, "name": name, "module": module_type(f"{name}.weight"), "layer": layer_index(name),
                 "weight_norm": float(w.norm()), "effective_norm": float(eff.norm())}
        rows += [{**where, "kind": k, "mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0,
                  "min": float(v.min()), "max": float(v.max())} for k, v in values.items()]
    return rows
