"""From an analysis table to a map of any kind: `build_map(table, "lr", method="tempbalance")`.

Weight decay goes to `decay.build_decay_map` (AlphaDecay); the other kinds to the released methods in
maps/methods.py, each with its published settings unless given. torch-free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaspec.analysis.table import other_dtypes
from alphaspec.maps.file import ValueMap
from alphaspec.maps.methods import (
    RANKS_PER_BLOCK,
    block_means,
    block_rows,
    llr_rows,
    lora_ranks,
    lr_scales,
    sparsities,
    tempbalance_rows,
)
from alphaspec.maps.paper import PAPER_EIGS_THRESH
from alphaspec.maps.spec import METHODS, DecayMapError, MapSpec

NEEDED = ("name", "module", "layer", "rows", "cols", "n_eigs")  # the columns of an analysis table a map reads


def build_map(table: pd.DataFrame, kind: str, spec: MapSpec | None = None, *, source: str = "", **options) -> ValueMap:
    """A map of `kind` (lr, sparsity, lora_rank) from an analysis table (one row per whole matrix, in module
    order: analyse with split_fused=False, as the releases see each nn.Linear whole)."""
    from alphaspec.maps.alphadecay import estimator_note, shape_note, with_derived_metrics  # alpha_excess = alpha - alpha_random

    spec = (spec or MapSpec(**options)).settled(kind)
    table = with_derived_metrics(table)
    if spec.metric not in table.columns:
        raise DecayMapError(f"the table has no {spec.metric!r} column"
                            + (" (analyse with --farms)" if spec.metric == "alpha_farms" else ""))
    missing = [c for c in NEEDED if c not in table.columns]
    if missing:
        raise DecayMapError(f"the table has no {', '.join(missing)} column{'s' * (len(missing) > 1)}: not a table "
                            "that analyze wrote")
    if "status" not in table:
        table = table.assign(status="no fit")
    if "tensor" in table and (table["name"] != table["tensor"]).any():
        raise DecayMapError("the released methods analyse each nn.Linear whole: analyse with --no-split-fused")
    build = {"lr": _lr_modules, "sparsity": _sparsity_modules, "lora_rank": _rank_modules}[kind]
    modules, settings = build(table, spec)
    vmap = ValueMap(kind=kind, method=spec.method, modules=modules, metric=spec.metric,
                    estimator=str(table["estimator"].iloc[0]) if "estimator" in table else spec.estimator,
                    settings=settings, source=source)
    _release_dtype(vmap, table, spec)
    valued = table[table["name"].isin([m["name"] for m in modules if "note" not in m])]
    if note := shape_note(valued, spec.metric, "these matrices", "the map mostly sorts"):
        vmap.notes.append(note)
    if note := estimator_note(table, spec.estimator, spec.method):
        vmap.notes.append(note)
    return vmap


def _release_dtype(vmap: ValueMap, table: pd.DataFrame, spec: MapSpec) -> None:
    """--paper-compat for a release that loads the weights in another dtype (AlphaPruning, AlphaLoRA: float16):
    recorded in the settings, and a note when the table's spectra are of weights stored otherwise."""
    dtype = METHODS[spec.method].release_dtype
    if not (spec.paper_compat and dtype):
        return
    vmap.settings["weights_dtype"] = dtype
    if stored := other_dtypes(table, dtype):
        vmap.notes.append(f"--paper-compat: the {spec.method} release rounds the weights to {dtype} before their "
                          f"spectra; this table holds {', '.join(stored)} weights (`alphaspec map` on the checkpoint "
                          "rounds them; in Python, analyse deltas.RoundedCheckpoint(open_source(source)))")


def _entry(row, metric: str, value, key: str, **extra) -> dict:
    m = getattr(row, metric)
    return {"name": row.name, "module": row.module, "layer": None if pd.isna(row.layer) else int(row.layer),
            metric: None if pd.isna(m) else float(m), key: value, "params": int(row.rows * row.cols), **extra}


def _lr_modules(table: pd.DataFrame, spec: MapSpec) -> tuple[list[dict], dict]:
    settings = {"ratio": list(spec.ratio), "assign": spec.assign, "paper_compat": spec.paper_compat}
    if spec.method == "tempbalance":
        eigs_thresh = PAPER_EIGS_THRESH if spec.paper_compat else 0  # its release's filter; alphaspec tunes them all
        rows, left = tempbalance_rows(table, eigs_thresh)
        values = rows[spec.metric].to_numpy(dtype=float)
        settings["eigs_thresh"] = eigs_thresh
    else:
        rows, values, names = llr_rows(table, spec.metric)
        left = dict.fromkeys(names, "left at the base LR by the layer-wise LR release (fewer than 50 eigenvalues)")
    fitted = np.isfinite(values)
    if not fitted.any():
        raise DecayMapError(f"none of the {len(rows)} tuned matrices has a {spec.metric}")
    scales = lr_scales(values[fitted], spec.ratio, spec.assign, eps=1e-8 if spec.method == "llr" else 0.0)
    by_name = table.set_index("name", drop=False)
    modules = [_entry(by_name.loc[n], spec.metric, 1.0, "lr_scale", note=why) for n, why in left.items()]
    modules += [_entry(r, spec.metric, 1.0, "lr_scale", note=f"base LR kept: no fit ({r.status})")
                for r in rows[~fitted].itertuples(index=False)]
    modules += [_entry(r, spec.metric, float(s), "lr_scale") for r, s in zip(rows[fitted].itertuples(index=False),
                                                                               scales, strict=True)]
    order = {n: i for i, n in enumerate(table["name"])}
    return sorted(modules, key=lambda m: order[m["name"]]), settings


def _block_metric(rows: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(each row's metric, its block's mean over the matrices with a fit, notes): a matrix without a fit takes
    its block's mean (the releases have no such case: their estimators return a number for anything)."""
    values = rows[metric].to_numpy(dtype=float)
    fitted = np.isfinite(values)
    means = block_means(rows, np.where(fitted, values, np.nan))
    if not np.isfinite(means).all():
        bad = rows["name"].iloc[int(np.argmin(np.isfinite(means)))]
        raise DecayMapError(f"no matrix of the block of {bad} has a {metric} (e.g. {rows['status'].iloc[0]})")
    notes = ["" if ok else f"no fit ({status}): takes its block's mean {metric}"
             for ok, status in zip(fitted, rows["status"], strict=True)]
    return np.where(fitted, values, means), means, notes


def _sparsity_modules(table: pd.DataFrame, spec: MapSpec) -> tuple[list[dict], dict]:
    rows = block_rows(table)
    values, means, notes = _block_metric(rows, spec.metric)
    r = sparsities(means if spec.block_wise else values, (rows["rows"] * rows["cols"]).to_numpy(dtype=float),
                   spec.target, spec.epsilon)
    modules = [_entry(row, spec.metric, float(s), "sparsity", **({"block_metric": float(m)} if spec.block_wise else {}),
                      **({"note": note} if note else {}))
               for row, s, m, note in zip(rows.itertuples(index=False), r, means, notes, strict=True)]
    return modules, {"target": spec.target, "epsilon": spec.epsilon, "block_wise": spec.block_wise,
                     "paper_compat": spec.paper_compat}


def _rank_modules(table: pd.DataFrame, spec: MapSpec) -> tuple[list[dict], dict]:
    rows = block_rows(table)
    _, means, notes = _block_metric(rows, spec.metric)
    layer_key = rows["layer"].astype(str) if "stack" not in rows else \
        rows["stack"].fillna("").astype(str) + ":" + rows["layer"].astype(str)
    first = ~layer_key.duplicated()
    budget = spec.budget if spec.budget is not None else RANKS_PER_BLOCK * int(first.sum())
    ranks = lora_ranks(means[first.to_numpy()], budget, spec.beta)
    per_layer = dict(zip(layer_key[first], ranks.tolist(), strict=True))
    sides = np.minimum(rows["rows"], rows["cols"]).groupby(layer_key).min()
    over = [(k, r) for k, r in per_layer.items() if r > sides[k]]
    if over:
        raise DecayMapError(f"budget {budget}: block {over[0][0]} gets rank {over[0][1]}, above the smaller side "
                            f"({int(sides[over[0][0]])}) of its matrices; give a smaller --budget")
    modules = [_entry(row, spec.metric, int(per_layer[key]), "rank", block_metric=float(m),
                      **({"note": note} if note else {}))
               for row, key, m, note in zip(rows.itertuples(index=False), layer_key, means, notes, strict=True)]
    return modules, {"budget": budget, "beta": spec.beta, "per": "block", "paper_compat": spec.paper_compat}
