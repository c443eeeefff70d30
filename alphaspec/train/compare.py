"""Training runs side by side: final and best losses, the decay actually applied, throughput; seeds pooled.

`compare(paths)` reads run directories written by `alphaspec train`: one row per run, and a summary
that pools runs differing only in their seed (mean, std) and sets each against a baseline.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from alphaspec.train.rundir import RunDirError, RunRecord, load_run


def evaluations(run: RunRecord) -> pd.DataFrame:
    """The metrics rows that carry an evaluation (eval_loss, eval_ppl)."""
    m = run.metrics
    return m.dropna(subset=["eval_loss"]) if "eval_loss" in m else m.iloc[0:0]


def held_mean(rows: pd.DataFrame, value: str, last: int, sizes: dict[str, int]) -> pd.Series:
    """Parameter-weighted mean of `value` over the names in force at each step 1..last: a log row holds for
    its name until the next one (`*`, AWD's one row for every decayed parameter, weighs 1)."""
    if rows.empty or last < 1:
        return pd.Series(dtype=float)
    grid = rows.pivot_table(index="step", columns="name", values=value, aggfunc="last")
    grid = grid.reindex(range(0, last + 1)).ffill().iloc[1:]
    weights = np.array([sizes.get(n, 1) if n != "*" else 1 for n in grid.columns], dtype=float)
    mask = grid.notna().to_numpy()
    values = np.where(mask, grid.to_numpy(), 0.0)
    per_step = (values * weights).sum(1) / np.maximum((mask * weights).sum(1), 1e-300)
    return pd.Series(per_step, index=grid.index)[mask.any(1)]


def decay_series(run: RunRecord) -> pd.Series:
    """Parameter-weighted mean decay of the tuned matrices in force at each step 1..last (decay.csv)."""
    return held_mean(run.decays, "weight_decay", int(run.metrics["step"].max()), run.sizes)


def applied_decay(run: RunRecord) -> float:
    """The decay the tuned matrices actually received, averaged over steps (parameter-weighted)."""
    series = decay_series(run)
    return float(series.mean()) if len(series) else math.nan


def lr_series(run: RunRecord) -> pd.Series:
    """A tempbalance/llr run's parameter-weighted learning-rate multiplier of the tuned matrices at each step:
    each refresh's multipliers (lr.csv) held until the next (easing in, under llr, is not counted)."""
    return held_mean(run.lrs, "lr_scale", int(run.metrics["step"].max()), run.sizes)


def applied_lr_scale(run: RunRecord) -> float:
    """lr_series averaged over the steps; NaN for a run without lr.csv rows."""
    series = lr_series(run)
    return float(series.mean()) if len(series) else math.nan


@dataclass
class Comparison:
    runs: list[RunRecord]
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
    summary = summarise(table, baseline)
    return Comparison(runs, table, summary, unfair([r.config for r in runs]),
                      incomplete(runs) + statistical_notes(summary))


def incomplete(runs: list[RunRecord]) -> list[str]:
    """Runs that stopped before their own length, or that have no evaluation: each one line."""
    notes = []
    for r in runs:
        last, planned = int(r.metrics["step"].max()), r.config.get("steps")
        if isinstance(planned, int) and last < planned:
            notes.append(f"{r.path} stopped at step {last} of {planned} (still running, or killed: "
                         "--resume it to finish)")
        if evaluations(r).empty:
            notes.append(f"{r.path} has no evaluation yet: its eval loss is empty")
        extended = [e for e in r.info.get("resumed", []) if isinstance(e, dict)
                    and isinstance(e.get("changed"), dict) and "steps" in e["changed"]]
        if extended:
            first = extended[0]["changed"]["steps"][0]
            notes.append(f"{r.path} was planned for {first} steps and extended on resume (at step "
                         f"{extended[0].get('step')}): its learning-rate schedule changed mid-run, so it is not a "
                         "like-for-like replicate of a run trained that long from the start")
    return notes


def tabulate(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run: label, strategy, seed, steps, tokens, final loss, final/best eval loss and ppl,
    applied decay (and its ratio to the base w), median tokens/s."""
    names = labels([r.config for r in runs])
    out = []
    for r in runs:
        m, ev = r.metrics, evaluations(r)
        last = m.iloc[-1]
        w = float(r.config.get("weight_decay", math.nan))
        applied = applied_decay(r)
        out.append({
            "run": str(r.path), "label": names[len(out)], "strategy": r.config.get("strategy", "?"),
            "seed": r.config.get("seed"), "steps": int(last["step"]), "tokens": int(last["tokens"]),
            "loss": float(last["loss"]),
            "eval_loss": float(ev["eval_loss"].iloc[-1]) if len(ev) else math.nan,
            "eval_ppl": float(ev["eval_ppl"].iloc[-1]) if len(ev) else math.nan,
            "best_eval_loss": float(ev["eval_loss"].min()) if len(ev) else math.nan,
            "weight_decay": w, "applied_decay": applied, "applied_over_w": applied / w if w else math.nan,
            "lr_scale": applied_lr_scale(r),
            "tokens_per_s": float(m["tokens_per_s"].median()),
        })
    return pd.DataFrame(out)


def summarise(table: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Replicates (same label, different seeds) pooled, each label set against the baseline label (default:
    the uniform label with the most runs): n, mean and std of the final and best eval loss, and the
    difference in final eval loss to the baseline with its 95 % confidence interval, two-sided p-value
    and Holm-adjusted p-value over the labels of this comparison (`statistics`)."""
    g = table.groupby("label", sort=False)
    out = g.agg(strategy=("strategy", "first"), n=("run", "size"), steps=("steps", "max"),
                eval_loss=("eval_loss", "mean"), eval_loss_std=("eval_loss", "std"), eval_ppl=("eval_ppl", "mean"),
                best_eval_loss=("best_eval_loss", "mean"), loss=("loss", "mean"),
                applied_over_w=("applied_over_w", "mean"), lr_scale=("lr_scale", "mean"),
                tokens_per_s=("tokens_per_s", "mean")).reset_index()
    baseline = baseline if baseline is not None else default_baseline(out)
    if baseline not in set(out["label"]):
        raise RunDirError(f"baseline {baseline!r} is not one of the labels: {', '.join(out['label'])}")
    base = table[table["label"] == baseline].set_index("seed")["eval_loss"]
    rows = [difference(table[table["label"] == label].set_index("seed")["eval_loss"], base)
            if label != baseline else Difference.none() for label in out["label"]]
    for name in Difference.COLUMNS:
        out[name] = [getattr(r, name) for r in rows]
    out["p_holm"] = holm(out["p_value"].to_numpy())
    out.attrs["baseline"] = baseline
    return out.sort_values("eval_loss", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Difference:
    """A label's final eval loss against the baseline's: mean difference, 95 % CI, two-sided p, df, pairing."""

    COLUMNS: ClassVar[tuple[str, ...]] = ("vs_baseline", "ci_low", "ci_high", "p_value", "df", "paired")
    vs_baseline: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    paired: bool

    @classmethod
    def none(cls) -> Difference:
        return cls(0.0, math.nan, math.nan, math.nan, math.nan, False)


def difference(runs: pd.Series, base: pd.Series, level: float = 0.95) -> Difference:
    """Final eval losses indexed by seed against the baseline's. Seeds fix the initialisation and the data
    order, so when every seed of `runs` has a baseline twin the runs are paired (a paired t-test, which
    removes the seed-to-seed variance the two share); otherwise Welch's unequal-variance t-test. With
    fewer than two pairs (or runs on a side) there is no interval: NaN."""
    runs, base = runs.dropna(), base.dropna()
    with warnings.catch_warnings():  # scipy warns of precision loss when the differences are (nearly) equal
        warnings.simplefilter("ignore", RuntimeWarning)
        return _t_test(runs, base, level)


def _t_test(runs: pd.Series, base: pd.Series, level: float) -> Difference:
    from scipy import stats

    if runs.index.is_unique and base.index.is_unique and len(runs) and set(runs.index) <= set(base.index):
        d = (runs - base.loc[runs.index]).to_numpy(dtype=float)
        n, mean = len(d), float(d.mean())
        if n < 2:
            return Difference(mean, math.nan, math.nan, math.nan, math.nan, True)
        se, df = float(d.std(ddof=1)) / math.sqrt(n), n - 1
        p = float(stats.ttest_rel(runs.to_numpy(float), base.loc[runs.index].to_numpy(float)).pvalue)
        half = float(stats.t.ppf(0.5 + level / 2, df)) * se
        return Difference(mean, mean - half, mean + half, p, float(df), True)
    x, y = runs.to_numpy(float), base.to_numpy(float)
    mean = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if min(len(x), len(y)) < 2:
        return Difference(mean, math.nan, math.nan, math.nan, math.nan, False)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if se > 0 else math.nan  # Welch-Satterthwaite
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    return Difference(mean, mean - half, mean + half, p, float(df), False)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of the p-values (NaN ignored): the i-th smallest of m is multiplied by
    m - i + 1, the results made non-decreasing and capped at 1; it controls the family-wise error."""
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


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


def statistical_notes(summary: pd.DataFrame) -> list[str]:
    """What a reader must know before reading the differences: too few runs, no pairing, learning rates that
    are not the baseline's."""
    notes = []
    scaled = summary[summary["lr_scale"].notna()]
    if len(scaled):
        notes.append("learning rates of the tuned matrices, parameter-weighted over the run, times the schedule: "
                     + ", ".join(f"{r.label} {r.lr_scale:.2f}x" for r in scaled.itertuples())
                     + " (a difference in loss may come from the mean learning rate as much as from its spread)")
    few = summary[summary["n"] < 3]
    if len(few):
        notes.append(f"fewer than 3 runs for {', '.join(few['label'])}: with 2 runs the 95 % interval is 12.7 "
                     "standard errors wide either side (t at 1 degree of freedom), with 1 there is none; run more "
                     "seeds before drawing a conclusion")
    unpaired = summary[(summary["label"] != summary.attrs["baseline"]) & ~summary["paired"].astype(bool)
                       & summary["vs_baseline"].notna()]
    if len(unpaired):
        notes.append(f"not paired by seed (some seed has no baseline run): {', '.join(unpaired['label'])}; "
                     "Welch's test instead, which keeps the seed-to-seed variance in the error")
    return notes


def unfair(configs: list[dict]) -> list[str]:
    """Settings that differ between runs although they change the budget or the data, not the method."""
    budget = ("model", "steps", "batch_size", "seq_len", "data", "val_data", "tokenizer", "vocab_size", "lr", "optimizer")
    return [k for k in budget if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def labels(configs: list[dict]) -> list[str]:
    """Each run's label: its strategy and the options that set it apart. Runs share a label exactly when
    they are replicates: equal in every option that matters (all but the incidental ones, as TrainConfig's
    metadata marks them, and those that do not apply to the run's strategy or optimizer)."""
    from alphaspec.train.config import TrainConfig

    varying, defaults = _varying(configs), TrainConfig().flat()
    return [_label(c, varying, defaults) for c in configs]


def _varying(configs: list[dict]) -> list[str]:
    """The options that matter (train.config.settings_that_matter) and differ among the runs they apply to."""
    from alphaspec.train.config import settings_that_matter

    rel = [settings_that_matter(c) for c in configs]
    keys = sorted({k for r in rel for k in r})
    return [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in rel if k in r}) > 1]


def _label(config: dict, varying: list[str], defaults: dict) -> str:
    """The strategy, plus the options that matter, vary between the compared runs and are not the default.

    Two runs get one label exactly when the options that matter are equal: they are replicates."""
    from alphaspec.train.config import settings_that_matter

    rel = settings_that_matter(config)
    extra = [f"{k}={_short(rel[k])}" for k in varying
             if k in rel and k != "strategy" and _short(rel[k]) != _short(defaults.get(k))]
    return " ".join([str(config.get("strategy", "?")), *extra])


def _short(v) -> str:
    if isinstance(v, list | tuple):
        return ",".join(map(_short, v))
    return f"{v:g}" if isinstance(v, float) else str(v)
