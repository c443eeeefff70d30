"""AlphaDecay: a decay map from an analysis table (`build_decay_map`, docs/math.md §3).

The pieces live in `maps/`: the options and their validators (`maps.spec`), the assignment
(`maps.assign.assign_decays`), the map file (`maps.file.DecayMap`), parameter groups and name matching
(`maps.groups`); they are imported here too, under their old names. The live training hook is `maps/hook.py`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from alphaspec.choices import DEFAULT_POLICIES
from alphaspec.errors import UsageError
from alphaspec.maps.assign import assign_decays
from alphaspec.maps.file import DecayMap
from alphaspec.maps.paper import paper_assign, paper_candidates, paper_metric
from alphaspec.maps.spec import DecayMapError, DecaySpec, choice_problem, decay_spec
from alphaspec.sources.matrices import BLOCK_MODULES, FUSED_MODULES


def check_map_matches_table(dmap: DecayMap, table: pd.DataFrame, where: str) -> None:
    """Refuse a map made for another model than the analysed one (its names are not the table's tensors)."""
    tensors = set(table["tensor"] if "tensor" in table else table["name"])
    absent = [m["name"] for m in dmap.modules if m["name"] not in tensors
              and not any(t.endswith("." + m["name"]) or m["name"].endswith("." + t) for t in tensors)]
    if absent:
        what = "decay map" if isinstance(dmap, DecayMap) else "map"
        raise DecayMapError(f"the {what} was made for another model than {where}: {len(absent)} of its names "
                            f"are not in it, e.g. {absent[0]}")


def tuned_rows(table: pd.DataFrame, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The rows whose tensors get a tuned decay: block matrices by default, or those --include names."""
    inc, exc = list(include), list(exclude)
    names = table["tensor"] if "tensor" in table else table["name"]
    if inc:
        keep = names.str.contains("|".join(f"(?:{p})" for p in inc), regex=True)
    else:
        keep = table["layer"].notna() & table["module"].isin([*BLOCK_MODULES, *FUSED_MODULES])
    if exc:
        keep &= ~names.str.contains("|".join(f"(?:{p})" for p in exc), regex=True)
    return table[keep]


def estimator_note(table: pd.DataFrame, estimator: str, method: str) -> str | None:
    """A note when the table's alphas were fitted with another estimator than the method's (a results table
    without its spectra, which cannot be fitted again): the map then rests on those alphas."""
    from alphaspec.analysis.table import fitted_with

    fitted = fitted_with(table)
    if fitted in (None, estimator):
        return None
    return (f"the table was fitted with {fitted}; {method} fits with {estimator} (analyse the checkpoint, or keep "
            f"its spectra with --save-spectra so that the table can be fitted again)")


def build_decay_map(table: pd.DataFrame, weight_decay: float, spec: DecaySpec | None = None, *,
                    default: str | float = "all", source: str = "", all_rows: bool = False,
                    **options) -> DecayMap:
    """A DecayMap from an analysis table (one row per matrix, as `alphaspec.analyze` returns).

    spec: the DecaySpec (ratio, assign, metric, preserve_mean, include, exclude, paper_compat); keyword
    `options` set its fields one by one (`build_decay_map(t, 0.1, assign="sqrt")`). Decays are assigned
    per row; a tensor split into parts (fused q/k/v, gate/up, stacked experts) gets the parameter-weighted
    mean of its parts' decays, since the optimizer sees whole tensors. The tuned set is the block
    matrices, or the include names, minus exclude; all_rows tunes every row of the table as given.
    """
    spec = decay_spec(spec, options)
    metric = spec.metric
    table = with_derived_metrics(table)
    if metric not in table.columns:
        hint = " (analyse with --farms)" if metric == "alpha_farms" else ""
        raise DecayMapError(f"the table has no {metric!r} column{hint}")
    if spec.paper_compat:
        return _finish(table, _paper_modules(table, weight_decay, spec), weight_decay, spec, default, source)
    rows = table if all_rows else tuned_rows(table, spec.include, spec.exclude)
    if rows.empty:
        raise DecayMapError("no matrices to tune: the table has no transformer-block matrices (see --include)")
    values = rows[metric].to_numpy(dtype=float)
    fitted = np.isfinite(values)  # a matrix with no fit (no power-law tail, NaN weights) keeps the base decay
    if not fitted.any():
        raise DecayMapError(f"none of the {len(rows)} tuned matrices has a {metric} ({rows['status'].iloc[0]}), "
                            f"e.g. {rows['name'].iloc[0]}")
    sizes = (rows["rows"] * rows["cols"]).to_numpy(dtype=float)
    blocks = rows["layer"].astype(object).where(rows["layer"].notna(), -1).tolist()
    if "stack" in rows:  # encoder block 3 and decoder block 3 are different blocks
        blocks = [f"{st}:{b}" for st, b in zip(rows["stack"].fillna("").tolist(), blocks, strict=True)]
    wd = np.full(len(rows), float(weight_decay))
    wd[fitted] = assign_decays(values[fitted], weight_decay, ratio=spec.ratio, assign=spec.assign,
                               blocks=[b for b, f in zip(blocks, fitted, strict=True) if f], sizes=sizes[fitted],
                               preserve_mean=spec.preserve_mean)
    note = shape_note(rows[fitted], metric, "the tuned matrices", "these decays mostly sort")
    rows = rows.assign(decay_=wd, size_=sizes, fitted_=fitted)
    tensor_col = "tensor" if "tensor" in rows else "name"
    modules = [_map_entry(tensor, part, metric) for tensor, part in rows.groupby(tensor_col, sort=False)]
    dmap = _finish(table, modules, weight_decay, spec, default, source)
    dmap.notes += [note] if note else []
    dmap.notes += [other] if (other := estimator_note(table, spec.estimator, "AlphaDecay")) else []
    return dmap


SHAPE_NOTE_SHARE = 0.5  # a note when alpha_random explains at least this share of alpha's variance (R²)


def with_derived_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `alpha_excess` = alpha - alpha_random (what training added to the alpha that a random
    matrix of the same shape has), when both columns are there and it is not."""
    if "alpha_excess" in table or not {"alpha", "alpha_random"} <= set(table.columns):
        return table
    return table.assign(alpha_excess=table["alpha"] - table["alpha_random"])


def shape_note(rows: pd.DataFrame, metric: str, matrices: str, outcome: str) -> str | None:
    """A note when the matrices' shapes alone explain most of alpha's spread over them (then a map by alpha
    mostly sorts them by shape), naming the metric that removes the shape; None otherwise."""
    share = shape_share(rows, metric)
    if share is None or share < SHAPE_NOTE_SHARE:
        return None
    return (f"{share:.0%} of the spread of alpha over {matrices} follows their shapes alone (alpha_random, the "
            f"alpha of a Gaussian matrix of each shape), so {outcome} matrices by shape; --metric alpha_excess "
            "(alpha - alpha_random) assigns by what training added")


def shape_share(rows: pd.DataFrame, metric: str) -> float | None:
    """The share of alpha's variance over these matrices that their shapes explain: R² of a linear fit of alpha
    on alpha_random (a Gaussian matrix's alpha for each shape). None for another metric, or without spread."""
    if metric != "alpha" or "alpha_random" not in rows:
        return None
    both = rows[["alpha", "alpha_random"]].astype(float).dropna()
    if len(both) < 3 or both["alpha"].std() == 0 or both["alpha_random"].std() == 0:
        return None
    return float(np.corrcoef(both["alpha"], both["alpha_random"])[0, 1] ** 2)


def _finish(table, modules, weight_decay, spec: DecaySpec, default, source) -> DecayMap:
    if isinstance(default, str):
        if problem := choice_problem("default decay policy", default, DEFAULT_POLICIES):
            raise DecayMapError(f"{problem}, or a number")
        policy, default_wd = default, float(weight_decay)
    else:
        policy, default_wd = "value", float(default)
    return DecayMap(modules=modules, weight_decay=float(weight_decay), ratio=tuple(float(r) for r in spec.ratio),
                    assign=spec.assign, metric=spec.metric, preserve_mean=spec.preserve_mean,
                    estimator=str(table["estimator"].iloc[0]) if "estimator" in table else spec.estimator,
                    default_policy=policy, default_weight_decay=default_wd, paper_compat=spec.paper_compat,
                    source=source)


def _paper_modules(table: pd.DataFrame, weight_decay: float, spec: DecaySpec) -> list[dict]:
    """Map entries as the AlphaDecay release makes them; its dropped first Linear keeps the base decay."""
    metric = spec.metric
    if spec.preserve_mean != "none" or spec.include:
        raise UsageError("--paper-compat reproduces the release, which has no --preserve-mean and no --include")
    if "tensor" in table and (table["name"] != table["tensor"]).any():
        raise UsageError("--paper-compat needs whole tensors (the release analyses each nn.Linear whole): "
                         "analyse with --no-split-fused")
    rows, dropped = paper_candidates(table)
    values = paper_metric(rows, metric)
    if not np.isfinite(values).all():
        raise DecayMapError(f"{int((~np.isfinite(values)).sum())} matrices have no {metric}; the release cannot "
                            "assign decays to them")
    blocks = rows["layer"].astype(object).where(rows["layer"].notna(), -1).tolist()
    wd = paper_assign(values, float(weight_decay), spec.ratio, spec.assign, blocks)
    by_name = table.set_index("name")
    entries = [{"name": n, "module": by_name.loc[n, "module"], "layer": _int_or_none(by_name.loc[n, "layer"]),
                metric: None, "weight_decay": float(weight_decay), "params": int(by_name.loc[n, "rows"] *
                                                                                by_name.loc[n, "cols"]),
                "note": "left untuned by the release (the model's first Linear)" if i == 0 else
                "left untuned by the release (fewer than 50 eigenvalues)"} for i, n in enumerate(dropped)]
    return entries + [{"name": r.name, "module": r.module, "layer": _int_or_none(r.layer), metric: float(v),
                       "weight_decay": float(d), "params": int(r.rows * r.cols)}
                      for r, v, d in zip(rows.itertuples(), values, wd, strict=True)]


def _map_entry(tensor: str, part: pd.DataFrame, metric: str) -> dict:
    """One tensor of the map: its decay is the parameter-weighted mean of its parts' (the optimizer sees
    whole tensors); its metric that of the parts with a fit (None when none has one, with the reason)."""
    weights, ok = part["size_"].to_numpy(), part["fitted_"].to_numpy()
    values = part[metric].to_numpy(dtype=float)
    entry = {"name": tensor, "module": _whole_module(part), "layer": _int_or_none(part["layer"].iloc[0]),
             metric: float(np.average(values[ok], weights=weights[ok])) if ok.any() else None,
             "weight_decay": float(np.average(part["decay_"].to_numpy(), weights=weights)),
             "params": int(weights.sum())}
    if not ok.all():
        entry["note"] = "base decay kept for parts without a fit: " + "; ".join(
            sorted({str(st) for st in part.loc[~part["fitted_"], "status"]})) if "status" in part else "no fit"
    if len(part) > 1 or part["name"].iloc[0] != tensor:
        entry["parts"] = [{"name": r.name, "module": r.module, metric: float(getattr(r, metric))
                           if r.fitted_ else None, "weight_decay": float(r.decay_)} for r in part.itertuples()]
    return entry


def _whole_module(part: pd.DataFrame) -> str:
    kinds = set(part["module"])
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {"att.k", "att.v"} and part["name"].iloc[0].split("[")[0].endswith("kv_b_proj.weight"):
        return "att.kv_b"
    return "att.qkv" if kinds <= {"att.q", "att.k", "att.v"} else "mlp.gate_up" if kinds <= {"mlp.gate", "mlp.up"} \
        else "+".join(sorted(kinds))


def _int_or_none(v) -> int | None:
    return None if v is None or pd.isna(v) else int(v)
