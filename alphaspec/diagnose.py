"""Verdicts: which matrices need attention, and why, from the columns an analysis already has.

Each row's `warning` lists, comma-separated (empty when none):
  over-trained   alpha below `over_trained` (2.0): a tail heavier than heavy-tailed self-regularisation
                 theory expects of a well-trained layer; often over-fitted or over-regularised
  under-trained  alpha above `under_trained` (6.0): close to the random-matrix regime, little learned
  traps          the randomised matrix still has eigenvalues above its MP edge (`analyze --randomize`):
                 a few very large entries make a spike that is not correlation between rows
  rank-collapse  more than `rank_loss` (1 %) of the eigenvalues are numerically zero: the matrix lost rank
  no-tail        no power-law tail could be fitted (too few eigenvalues, an all-zero or non-finite matrix)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:  # pandas loads with the tables, not with the CLI's option definitions
    import pandas as pd

WARNINGS = ("over-trained", "under-trained", "traps", "rank-collapse", "no-tail")


def _threshold(default: float, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Thresholds:
    """Where each verdict starts; the CLI's --over-trained, --under-trained and --rank-loss."""

    over_trained: float = _threshold(2.0, "over-trained: alpha below this.")
    under_trained: float = _threshold(6.0, "under-trained: alpha above this.")
    rank_loss: float = _threshold(0.01, "rank-collapse: more than this share of the eigenvalues numerically zero.")

    def __post_init__(self):
        if not (0 < self.over_trained < self.under_trained) or not (0 <= self.rank_loss < 1):
            raise UsageError(f"thresholds: need 0 < --over-trained ({self.over_trained}) < --under-trained "
                             f"({self.under_trained}) and 0 <= --rank-loss ({self.rank_loss}) < 1")

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata["help"] for f in fields(Thresholds) if f.name == name)


def verdicts(table: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.Series:
    """The `warning` column: the verdicts of each row, comma-separated in the order of WARNINGS."""
    import pandas as pd

    t = thresholds or Thresholds()
    alpha = table["alpha"].astype(float)
    zero_share = (table["n_zero"].astype(float) / table["n_eigs"].clip(lower=1).astype(float)
                  if {"n_zero", "n_eigs"} <= set(table.columns) else pd.Series(0.0, index=table.index))
    traps = table["traps"].fillna(0).astype(float) if "traps" in table else pd.Series(0.0, index=table.index)
    flags = {"over-trained": alpha < t.over_trained, "under-trained": alpha > t.under_trained, "traps": traps > 0,
             "rank-collapse": zero_share > t.rank_loss, "no-tail": alpha.isna()}
    joined = pd.Series("", index=table.index, dtype=object)
    for name in WARNINGS:  # a column at a time: "over-trained,traps," then the last comma off
        joined = joined + flags[name].map({True: name + ",", False: ""}).astype(object)
    return joined.str.removesuffix(",").astype(str)


def parse_fail_on(text: str | None) -> tuple[str, ...]:
    """--fail-on W[,W...]: the verdicts that make `analyze` exit with FAIL_ON_STATUS."""
    if not text:
        return ()
    names = tuple(w.strip() for w in text.split(",") if w.strip())
    unknown = [w for w in names if w not in WARNINGS]
    if unknown or not names:
        raise UsageError(f"--fail-on {text!r}: choose from {', '.join(WARNINGS)} (comma-separated)")
    return names


FAIL_ON_STATUS = 3  # analyze's exit status when a --fail-on verdict is found (0, 1 and 2 keep their meaning)


def failing(table: pd.DataFrame, fail_on: tuple[str, ...]) -> pd.DataFrame:
    """The rows with at least one of the `fail_on` verdicts."""
    if not fail_on or "warning" not in table:
        return table.iloc[:0]
    found = table["warning"].fillna("").str.split(",").apply(lambda ws: bool(set(ws) & set(fail_on)))
    return table[found]
