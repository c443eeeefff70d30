"""A long table summarised per source (`analyze --summary`), and each summary metric's rank correlation with a
quality score per model (`--scores`): the "which model is better trained, without an evaluation" question.

The summary has one row per source and module type, and one with module `all`: the matrices, the mean and
median alpha, alpha above the Gaussian reference (`alpha_excess`), the means of the norm metrics
WeightWatcher summarises, and the count of each verdict. The correlations are Spearman's and Kendall's
between a metric (over the sources' `all` rows) and the score, each with a 95 % interval from a paired
bootstrap (scipy.stats.bootstrap) and its p-value; with fewer than MIN_MODELS scored sources none is computed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from alphaspec.errors import UsageError, check_input_file, first_line
from alphaspec.spectra.verdicts import WARNINGS

METRICS = ("alpha", "alpha_excess", "log_norm", "alpha_weighted", "log_alpha_norm", "log_spectral_norm",
           "stable_rank", "mp_softrank")
MIN_MODELS = 5  # below this a rank correlation says nothing (n = 4: |rho| = 1 by chance in 1 of 12 orders)
RESAMPLES = 999


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per source (in the table's order) and module type, then `all`: counts, alpha statistics, metric means and
    verdict counts."""
    if "source" not in table:
        raise UsageError("a summary needs a long table (the `source` column of analyze with several sources)")
    data = table.assign(alpha_excess=table["alpha"] - table["alpha_random"])
    for metric in METRICS:
        if metric not in data:
            data[metric] = math.nan
    rows = []
    for source, part in data.groupby("source", sort=False):
        for module, group in [*part.groupby("module", sort=False), ("all", part)]:
            warnings = group["warning"].fillna("").astype(str) if "warning" in group else pd.Series([""] * len(group))
            row = {"source": source, "step": part["step"].iloc[0] if "step" in part else pd.NA, "module": module,
                   "matrices": len(group), "alpha_median": group["alpha"].median()}
            row |= {f"{m}_mean": group[m].mean() for m in METRICS}
            row |= {w: int(warnings.str.split(",").apply(lambda ws, w=w: w in ws).sum()) for w in WARNINGS}
            rows.append(row)
    out = pd.DataFrame(rows)
    out["step"] = out["step"].astype("Int64")
    return out


def read_scores(path: str | Path, sources: list[str]) -> dict[str, float]:
    """{source: score} from a CSV with columns `source` and `score`; an unknown source, a repeated one or a
    score that is not a finite number is one error line naming it."""
    check_input_file(path, "scores file")
    try:
        frame = pd.read_csv(path, dtype={"source": str}, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is a property of the file
        raise UsageError(f"{path}: not a readable CSV ({first_line(err)})") from err
    if missing := [c for c in ("source", "score") if c not in frame.columns]:
        raise UsageError(f"{path}: no column {', '.join(missing)} (a scores file has the columns source and score)")
    scores: dict[str, float] = {}
    for source, score in zip(frame["source"].astype(str), frame["score"], strict=True):
        if source not in sources:
            raise UsageError(f"{path}: scores {source!r}, which is not among the sources ({', '.join(sources[:3])}"
                             + (", ..." if len(sources) > 3 else "") + ")")
        if source in scores:
            raise UsageError(f"{path}: scores {source!r} twice")
        try:
            value = float(score)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise UsageError(f"{path}: the score of {source!r} is {score!r}, not a finite number")
        scores[source] = value
    return scores


def correlate(summary: pd.DataFrame, scores: dict[str, float]) -> tuple[pd.DataFrame, list[str]]:
    """Each metric's Spearman and Kendall correlation with the score over the scored sources, with 95 %
    intervals and p-values; and notes (too few models, sources without a score)."""
    from scipy import stats

    overall = summary[summary["module"] == "all"].set_index("source")
    scored = [s for s in overall.index if s in scores]
    notes = [f"{len(overall) - len(scored)} source(s) have no score and are left out"] if len(scored) < len(overall) \
        else []
    if len(scored) < MIN_MODELS:
        notes.append(f"{len(scored)} scored model(s): too few to tell anything from a rank correlation (at least "
                     f"{MIN_MODELS}); none computed")
        return pd.DataFrame(columns=["metric", "models"]), notes
    y = np.array([scores[s] for s in scored])
    rows = []
    for metric in [m for m in ["alpha_median", *[f"{m}_mean" for m in METRICS]] if m in overall]:
        x = overall.loc[scored, metric].to_numpy(float)
        keep = np.isfinite(x)
        row = {"metric": metric, "models": int(keep.sum())}
        for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
            row |= _rank_correlation(name, fn, x[keep], y[keep])
        rows.append(row)
    return pd.DataFrame(rows), notes


def _rank_correlation(name: str, fn, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy import stats

    nan = {name: math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan, f"{name}_p": math.nan}
    if len(x) < MIN_MODELS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    result = fn(x, y)
    interval = stats.bootstrap((x, y), lambda a, b: fn(a, b).statistic, paired=True, vectorized=False,
                               n_resamples=RESAMPLES, method="percentile", random_state=0).confidence_interval
    return {name: float(result.statistic), f"{name}_low": float(interval.low), f"{name}_high": float(interval.high),
            f"{name}_p": float(result.pvalue)}
