"""Verdicts: which matrices need attention, and why, from the columns an analysis already has.

Each verdict reads the quantity its threshold was calibrated on, whatever estimator the table shows.
Each row's `warning` lists, comma-separated (empty when none):
  over-trained   alpha_gof below `over_trained` (2.0): WeightWatcher's threshold on its goodness-of-fit
                 power-law alpha, applied to that fit (`alpha_gof`), so it means what it means there
  under-trained  alpha_gof above `under_trained` (6.0): WeightWatcher's other threshold, on the same fit
  random-like    no eigenvalue above the noise threshold of the matrix's own Marchenko–Pastur bulk
                 (num_spikes = 0, with a fitted tail): the spectrum is what a random matrix of that shape and
                 scale gives
  traps          the permuted matrix's largest eigenvalue stands, in the median permutation, at least
                 TRAP_Z Tracy–Widom units above its noise threshold, with 99 % confidence over the
                 permutations solved (`trap_z_low`, `analyze --randomize`): a few very large entries make
                 a spike that is not correlation between rows
  rank-collapse  more than `rank_loss` (1 %) of the eigenvalues are numerically zero: the matrix lost rank
  no-tail        no power-law tail could be fitted (too few eigenvalues, an all-zero or non-finite matrix)

Updates (`content` delta or adapter: W − W_base, s·B·A) are not weights: the alpha thresholds and the
rank and tail verdicts were calibrated on trained weight matrices, so only random-like and traps apply
to a full-rank update. A low-rank update (more than `rank_loss` of its eigenvalues zero: an adapter's
rank-r s·B·A) gets none: a tail fit or a noise bulk on a handful of eigenvalues says nothing, and its
rank, size and overlap columns describe it. An update that is all zero has the status `unchanged` and
no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from alphaspec.errors import UsageError

if TYPE_CHECKING:  # pandas loads with the tables, not with the CLI's option definitions
    import pandas as pd

WARNINGS = ("over-trained", "under-trained", "random-like", "traps", "rank-collapse", "no-tail")
WEIGHTS = "weights"  # the `content` of a row that is a weight matrix (not an update)
UNCHANGED = "unchanged"  # the status of an update that is all zero
TRAP_Z = 5.0  # traps: the median permutation's spike this many Tracy–Widom units above its threshold
PERMUTATIONS = 15  # the most permutations of a matrix near a spike (analyze --permutations)


def _threshold(default: float, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Thresholds:
    """Where each verdict starts; the CLI's --over-trained, --under-trained and --rank-loss."""

    over_trained: float = _threshold(2.0, "over-trained: the goodness-of-fit alpha (alpha_gof) below this.")
    under_trained: float = _threshold(6.0, "under-trained: the goodness-of-fit alpha (alpha_gof) above this.")
    rank_loss: float = _threshold(0.01, "rank-collapse: more than this share of the eigenvalues numerically zero.")

    def __post_init__(self):
        if not (0 < self.over_trained < self.under_trained) or not (0 <= self.rank_loss < 1):
            raise UsageError(f"thresholds: need 0 < --over-trained ({self.over_trained}) < --under-trained "
                             f"({self.under_trained}) and 0 <= --rank-loss ({self.rank_loss}) < 1")

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata["help"] for f in fields(Thresholds) if f.name == name)


def verdict_alpha(table: pd.DataFrame) -> pd.Series:
    """The alpha the over/under-trained thresholds read: alpha_gof, or alpha in a gof table without that column."""
    import pandas as pd

    if "alpha_gof" in table:
        return table["alpha_gof"].astype(float)
    gof = table["estimator"] == "gof" if "estimator" in table else pd.Series(False, index=table.index)
    return table["alpha"].astype(float).where(gof)


def _column(table: pd.DataFrame, name: str, default) -> pd.Series:
    import pandas as pd

    return table[name] if name in table else pd.Series(default, index=table.index)


def verdicts(table: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.Series:
    """The `warning` column: the verdicts of each row, comma-separated in the order of WARNINGS."""
    import pandas as pd

    t = thresholds or Thresholds()
    weights = _column(table, "content", WEIGHTS).fillna(WEIGHTS) == WEIGHTS
    unchanged = _column(table, "status", "").fillna("") == UNCHANGED
    alpha = verdict_alpha(table)
    zero_share = (_column(table, "n_zero", 0).astype(float)
                  / _column(table, "n_eigs", 1).clip(lower=1).astype(float))
    sigma = _column(table, "sigma_mp", float("nan")).astype(float)
    if "trap_z_low" in table:
        traps = table["trap_z_low"].astype(float) >= TRAP_Z
    elif "trap_z" in table:  # a table from before trap_z_low: its median
        traps = table["trap_z"].astype(float) >= TRAP_Z
    else:  # a table from before trap_z: its one permutation's count
        traps = _column(table, "traps", 0).fillna(0).astype(float) > 0
    judged = weights | ~(unchanged | (zero_share > t.rank_loss))  # weights, and full-rank updates
    flags = {"over-trained": weights & (alpha < t.over_trained), "under-trained": weights & (alpha > t.under_trained),
             "random-like": judged & (sigma > 0) & (_column(table, "num_spikes", 1).fillna(1) == 0)
             & table["alpha"].notna(),  # a constant spectrum (an orthogonal matrix) has no bulk to be noise
             "traps": judged & traps, "rank-collapse": weights & (zero_share > t.rank_loss),
             "no-tail": weights & table["alpha"].isna()}
    joined = pd.Series("", index=table.index, dtype=object)
    for name in WARNINGS:  # a column at a time: "over-trained,traps," then the last comma off
        joined = joined + flags[name].fillna(False).astype(bool).map({True: name + ",", False: ""}).astype(object)
    return joined.str.removesuffix(",").astype(str)


def parse_fail_on(text: str | None) -> tuple[str, ...]:
    """--fail-on W[,W...]: the verdicts that make `analyze` exit with FAIL_ON_STATUS (each named once)."""
    if text is None:
        return ()
    names = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    unknown = [w for w in names if w not in WARNINGS]
    if unknown or not names:
        raise UsageError(f"--fail-on {text!r}: choose from {', '.join(WARNINGS)} (comma-separated)")
    return names


DEFECTS = ("over-trained", "traps", "rank-collapse", "no-tail")  # the verdicts that say something went wrong
HEALTHY_SHARE = 0.10  # a model looks healthy while no defect verdict flags more than this share of its matrices


def _count(table: pd.DataFrame, verdict: str) -> int:
    return int(table["warning"].fillna("").str.split(",").apply(lambda ws: verdict in ws).sum())


def health_line(table: pd.DataFrame) -> str:
    """One sentence on a model whose weights look healthy, and why ("" when they do not, or for updates):
    no defect verdict on more than HEALTHY_SHARE of the matrices, most matrices with a heavier tail than a
    Gaussian matrix of their shape (learned correlations), and what the light-tail verdicts mean."""
    weights = table[_column(table, "content", WEIGHTS).fillna(WEIGHTS) == WEIGHTS]
    if weights.empty or "warning" not in weights:
        return ""
    n = len(weights)
    defects = {v: _count(weights, v) for v in DEFECTS}
    fitted = weights.dropna(subset=["alpha"])
    learned = int(((fitted["alpha"] < _column(fitted, "alpha_random", float("nan")))
                   & (_column(fitted, "num_spikes", 0) > 0)).sum())  # lighter than noise, and not noise itself
    if any(c > HEALTHY_SHARE * n for c in defects.values()) or not learned > len(fitted) / 2:
        return ""
    found = [f"{c} {v}" for v, c in defects.items() if c]
    light = [f"{c} {v}" for v in ("under-trained", "random-like") if (c := _count(weights, v))]
    return (f"Looks healthy: {learned} of {len(fitted)} fitted matrices have a heavier tail than a Gaussian matrix "
            f"of their shape and directions out of their noise bulk (learned correlations); "
            + (f"{', '.join(found)} (each at most {HEALTHY_SHARE:.0%} of the matrices)" if found
               else "none over-trained, with traps or lost rank")
            + (f"; {', '.join(light)}: light tails, close to noise" if light else "") + ".")


FAIL_ON_STATUS = 3  # analyze's exit status when a --fail-on verdict is found (0, 1 and 2 keep their meaning)


def failing(table: pd.DataFrame, fail_on: tuple[str, ...]) -> pd.DataFrame:
    """The rows with at least one of the `fail_on` verdicts."""
    if not fail_on or "warning" not in table:
        return table.iloc[:0]
    found = table["warning"].fillna("").str.split(",").apply(lambda ws: bool(set(ws) & set(fail_on)))
    return table[found]
