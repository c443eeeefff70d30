"""Training runs side by side: final and best losses, the decay actually applied, throughput; seeds pooled.

`compare(paths)` reads run directories written by `alphaspec train`: one row per run, and a summary
that pools runs differing only in their seed (mean, std) and sets each against a baseline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .train.rundir import Run, RunDirError, load_run


def evaluations(run: Run) -> pd.DataFrame:
    """The metrics rows that carry an evaluation (eval_loss, eval_ppl)."""
    m = run.metrics
    return m.dropna(subset=["eval_loss"]) if "eval_loss" in m else m.iloc[0:0]


def decay_series(run: Run) -> pd.Series:
    """Parameter-weighted mean decay of the tuned matrices in force at each step 1..last.

    decay.csv holds each decay when it was set; it holds until the next row for that name. AWD's
    single `*` row stands for every decayed parameter.
    """
    d, last = run.decays, int(run.metrics["step"].max())
    if d.empty or last < 1:
        return pd.Series(dtype=float)
    grid = d.pivot_table(index="step", columns="name", values="weight_decay", aggfunc="last")
    grid = grid.reindex(range(0, last + 1)).ffill().iloc[1:]
    weights = np.array([run.sizes.get(n, 1) if n != "*" else 1 for n in grid.columns], dtype=float)
    mask = grid.notna().to_numpy()
    values = np.where(mask, grid.to_numpy(), 0.0)
    per_step = (values * weights).sum(1) / np.maximum((mask * weights).sum(1), 1e-300)
    return pd.Series(per_step, index=grid.index)[mask.any(1)]


def applied_decay(run: Run) -> float:
    """The decay the tuned matrices actually received, averaged over steps (parameter-weighted)."""
    series = decay_series(run)
    return float(series.mean()) if len(series) else math.nan


@dataclass
class Comparison:
    runs: list[Run]
    table: pd.DataFrame  # one row per run
    summary: pd.DataFrame  # one row per label (replicates pooled), best eval loss first
    differing: list[str]  # budget/data settings that differ between runs: the comparison is not like for like
    notes: list[str] = field(default_factory=list)  # runs that are unfinished or have no evaluation


def compare(paths: list[str | Path], baseline: str | None = None) -> Comparison:
    """Read the runs, tabulate them, pool seeds and set each label against the baseline label
    (default: the uniform label with the most runs; an error when that is ambiguous)."""
    if not paths:
        raise RunDirError("no runs to compare")
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise RunDirError(f"{p}: given twice (also as {seen[key]}); a run counts once")
        seen[key] = str(p)
    runs = [load_run(p) for p in paths]
    table = tabulate(runs)
    return Comparison(runs, table, summarise(table, baseline), unfair([r.config for r in runs]), incomplete(runs))


def incomplete(runs: list[Run]) -> list[str]:
    """Runs that stopped before their own length, or that have no evaluation: each one line."""
    notes = []
    for r in runs:
        last, planned = int(r.metrics["step"].max()), r.config.get("steps")
        if isinstance(planned, int) and last < planned:
            notes.append(f"{r.path} stopped at step {last} of {planned} (still running, or killed: "
                         "--resume it to finish)")
        if evaluations(r).empty:
            notes.append(f"{r.path} has no evaluation yet: its eval loss is empty")
    return notes


def tabulate(runs: list[Run]) -> pd.DataFrame:
    """One row per run: label, strategy, seed, steps, tokens, final loss, final/best eval loss and ppl,
    applied decay (and its ratio to the base w), median tokens/s."""
    from .train.config import TrainConfig

    varying, defaults = _varying([r.config for r in runs]), TrainConfig().flat()
    out = []
    for r in runs:
        m, ev = r.metrics, evaluations(r)
        last = m.iloc[-1]
        w = float(r.config.get("weight_decay", math.nan))
        applied = applied_decay(r)
        out.append({
            "run": str(r.path), "label": _label(r.config, varying, defaults), "strategy": r.config.get("strategy", "?"),
            "seed": r.config.get("seed"), "steps": int(last["step"]), "tokens": int(last["tokens"]),
            "loss": float(last["loss"]),
            "eval_loss": float(ev["eval_loss"].iloc[-1]) if len(ev) else math.nan,
            "eval_ppl": float(ev["eval_ppl"].iloc[-1]) if len(ev) else math.nan,
            "best_eval_loss": float(ev["eval_loss"].min()) if len(ev) else math.nan,
            "weight_decay": w, "applied_decay": applied, "applied_over_w": applied / w if w else math.nan,
            "tokens_per_s": float(m["tokens_per_s"].median()),
        })
    return pd.DataFrame(out)


def summarise(table: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Replicates (same label, different seeds) pooled: n, mean and std of the final eval loss, and its
    difference to the baseline label (default: the uniform label with the most runs) with a standard error.

    Seeds fix the initialisation and the data order, so a run and the baseline run of the same seed
    form a pair: when every seed of a label has a baseline twin, the difference is the mean of the
    paired differences (`paired` True; its se is their std / sqrt(n)), which removes the seed-to-seed
    variance the strategies share. Otherwise it is the difference of means with Welch's se.
    """
    g = table.groupby("label", sort=False)
    out = g.agg(strategy=("strategy", "first"), n=("run", "size"), steps=("steps", "max"),
                eval_loss=("eval_loss", "mean"), eval_loss_std=("eval_loss", "std"), eval_ppl=("eval_ppl", "mean"),
                loss=("loss", "mean"), applied_over_w=("applied_over_w", "mean"),
                tokens_per_s=("tokens_per_s", "mean")).reset_index()
    baseline = baseline if baseline is not None else default_baseline(out)
    if baseline not in set(out["label"]):
        raise RunDirError(f"baseline {baseline!r} is not one of the labels: {', '.join(out['label'])}")
    base_runs = table[table["label"] == baseline].set_index("seed")["eval_loss"]
    deltas = [_difference(table[table["label"] == label].set_index("seed")["eval_loss"], base_runs)
              for label in out["label"]]
    out["vs_baseline"], out["vs_baseline_se"], out["paired"] = zip(*deltas, strict=True)
    out.loc[out["label"] == baseline, ["vs_baseline", "vs_baseline_se", "paired"]] = (0.0, np.nan, False)
    out.attrs["baseline"] = baseline
    return out.sort_values("eval_loss", kind="stable").reset_index(drop=True)


def default_baseline(summary: pd.DataFrame) -> str:
    """The uniform label with the most runs; an error when that does not pick one label."""
    uniform = summary[summary["strategy"] == "uniform"]
    if uniform.empty:
        if len(summary) == 1:
            return str(summary["label"].iloc[0])
        raise RunDirError("no uniform-decay runs to compare against; name the baseline with --baseline LABEL "
                          f"(labels: {', '.join(summary['label'])})")
    top = uniform[uniform["n"] == uniform["n"].max()]
    if len(top) > 1:
        raise RunDirError(f"{len(top)} uniform labels have {int(top['n'].iloc[0])} run(s) each "
                          f"({', '.join(top['label'])}); name the baseline with --baseline LABEL")
    return str(top["label"].iloc[0])


def _difference(runs: pd.Series, base: pd.Series) -> tuple[float, float, bool]:
    """(mean difference, its standard error, paired?) of final eval losses indexed by seed."""
    if runs.index.is_unique and base.index.is_unique and set(runs.index) <= set(base.index):
        d = runs - base.loc[runs.index]
        return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan, True
    se = math.sqrt(runs.var(ddof=1) / len(runs) + base.var(ddof=1) / len(base)) if min(len(runs), len(base)) > 1 \
        else math.nan
    return float(runs.mean() - base.mean()), se, False


def unfair(configs: list[dict]) -> list[str]:
    """Settings that differ between runs although they change the budget or the data, not the method."""
    budget = ("model", "steps", "batch_size", "seq_len", "data", "val_data", "tokenizer", "vocab_size", "lr", "optimizer")
    return [k for k in budget if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


# The settings that matter to each strategy (plus COMMON): labels name only these.
COMMON = ("model", "steps", "batch_size", "seq_len", "data", "val_data", "tokenizer", "vocab_size", "lr", "min_lr_ratio",
          "warmup_steps", "betas", "eps", "optimizer", "weight_decay", "default_decay", "grad_clip", "multipliers",
          "precision", "val_fraction")
SPECIFIC = {
    "alphadecay": ("decay_map", "gap", "estimator", "metric", "assign", "ratio", "preserve_mean", "alphadecay_warmup"),
    "adadecay": ("gap", "assign", "ratio", "preserve_mean"),
    "awd": (),
    "uniform": (),
    "lrm": (),
}
MULTIPLIER_KEYS = ("lrm_decay", "lrm_lr_mult")


def relevant(config: dict) -> dict:
    """The part of a run's config that can change what it learns."""
    keys = [*COMMON, *SPECIFIC.get(config.get("strategy"), ())]
    if config.get("multipliers", "none") != "none":
        keys += MULTIPLIER_KEYS
    if config.get("decay_map"):
        keys = [k for k in keys if k not in ("gap", "estimator", "metric", "assign", "ratio", "alphadecay_warmup")]
    return {k: config.get(k) for k in keys if k in config}


def _varying(configs: list[dict]) -> list[str]:
    rel = [relevant(c) for c in configs]
    keys = sorted({k for r in rel for k in r})
    return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in rel if k in r}) > 1]


def _label(config: dict, varying: list[str], defaults: dict) -> str:
    """The strategy, plus the settings that vary between the compared runs where they are not the default."""
    rel = relevant(config)
    extra = [f"{k}={_short(rel[k])}" for k in varying if k in rel and _short(rel[k]) != _short(defaults.get(k))]
    return " ".join([str(config.get("strategy", "?")), *extra])


def _short(v) -> str:
    if isinstance(v, list | tuple):
        return ",".join(map(_short, v))
    return f"{v:g}" if isinstance(v, float) else str(v)
