"""What a run records about its weights while it trains: the spectra of the block matrices (alphas.csv)
and the learned multipliers with the norms of the matrices they scale (multipliers.csv)."""

from __future__ import annotations

import torch

from alphaspec.analysis.engine import analyze_tensors
from alphaspec.analysis.rows import records
from alphaspec.distributed import full_tensor
from alphaspec.maps.groups import is_tuned_candidate
from alphaspec.sources.matrices import layer_index, module_type
from alphaspec.train.model import MULTIPLIER_NAMES, Linear
from alphaspec.train.rundir import ALPHA_COLUMNS


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
        values = {k: full_tensor(v.detach()) for k, v in kinds.items()}
        w = full_tensor(module.weight.detach())
        if rank:
            continue
        stats = multiplier_stats(w, values).tolist()  # one transfer from the GPU per matrix
        where = {"step": step, "name": name, "module": module_type(f"{name}.weight"), "layer": layer_index(name),
                 "weight_norm": stats[0][0], "effective_norm": stats[0][1]}
        rows += [{**where, "kind": k, "mean": mean, "std": std, "min": lo, "max": hi}
                 for k, (mean, std, lo, hi) in zip(values, stats[1:], strict=True)]
    return rows


def multiplier_stats(w: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """On w's device, a (1 + kinds, 4) float32 tensor: [‖W‖, ‖W_eff‖, 0, 0], then mean, std, min and max of
    each multiplier (std 0 for a single value), W_eff = scale · diag(row_mult) · W · diag(col_mult)."""
    w = w.float()
    eff = w
    if "row_mult" in values:
        eff = eff * values["row_mult"].float()[:, None]
    if "col_mult" in values:
        eff = eff * values["col_mult"].float()[None, :]
    if "scale" in values:
        eff = eff * values["scale"].float()
    zero = w.new_zeros(())
    out = [torch.stack([w.norm(), eff.norm(), zero, zero])]
    for v in values.values():
        v = v.float().flatten()
        std = v.std() if v.numel() > 1 else zero
        out.append(torch.stack([v.mean(), std, v.min(), v.max()]))
    return torch.stack(out)
