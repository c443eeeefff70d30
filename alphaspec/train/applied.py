"""The maps a training run applied, read back from its logs (decay.csv, lr.csv) for the figures that draw
them against the metric they came from (`alphaspec plot RUN --kind decay|map`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alphaspec.maps.file import DecayMap, ValueMap
from alphaspec.train.rundir import RunError, load_run_json, read_log


def applied_decay_map(run: Path) -> DecayMap:
    """The decays a training run applied last (its decay.csv), as a map the decay figure draws against the
    metric they came from."""
    decays = read_log(run, "decays", "the decay figure")
    decays = decays[decays["name"] != "*"]  # AWD's one global row per step has no matrix to place
    if decays.empty:
        raise RunError(f"{run}: decay.csv has no per-matrix decays to draw (the run's strategy sets one global decay)")
    latest, config, metric = _last_refresh(run, decays)
    modules = [{"name": r.name, "module": r.module, "layer": r.layer, metric: r.metric,
                "weight_decay": r.weight_decay} for r in latest.itertuples()]
    return DecayMap(modules=modules, weight_decay=float(config.get("weight_decay", latest["weight_decay"].mean())),
                    ratio=tuple(config.get("ratio") or (0.67, 5.0)), assign=str(config.get("assign") or "linear"),
                    estimator=str(config.get("estimator") or "median"), metric=metric,
                    preserve_mean=str(config.get("preserve_mean") or "none"),
                    source=f"{run} (decay.csv, step {int(latest['step'].max())})")


def _last_refresh(run: Path, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict, str]:
    """Each matrix's latest row of a run's decay.csv or lr.csv, the run's settings and the metric behind them."""
    config = load_run_json(run).get("config", {})
    latest = rows.sort_values("step", kind="stable").groupby("name", sort=False).tail(1)
    return latest, config, str(config.get("metric") or "alpha")


def applied_lr_map(run: Path) -> ValueMap:
    """The learning-rate multipliers a tempbalance or llr run reached at its last refresh (its lr.csv), as a
    map the map figure draws against the metric they came from."""
    latest, config, metric = _last_refresh(run, read_log(run, "lrs", "the map figure"))  # no rows: one error line
    modules = [{"name": r.name, "module": r.module, "layer": r.layer, metric: r.metric, "lr_scale": r.lr_scale}
               for r in latest.itertuples()]
    return ValueMap(kind="lr", method=str(config.get("strategy") or "tempbalance"), modules=modules, metric=metric,
                    estimator=str(config.get("estimator") or "median"),
                    source=f"{run} (lr.csv, step {int(latest['step'].max())})")
