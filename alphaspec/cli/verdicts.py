"""The verdicts as the terminal shows them: a "needs attention" block, and --fail-on's exit status."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from rich.padding import Padding
from rich.text import Text

from alphaspec.cli.common import out
from alphaspec.errors import AlphaspecError
from alphaspec.spectra.verdicts import FAIL_ON_STATUS, WARNINGS, failing, health_line

if TYPE_CHECKING:
    import pandas as pd

LISTED = 8  # matrices named in the block; the table has them all


class VerdictFailure(AlphaspecError):
    """`analyze --fail-on` found a matrix with one of the named verdicts (exit status 3)."""

    exit_code = FAIL_ON_STATUS


def _alphas(row) -> str:
    """The alpha of the table's estimator and, when it is another, the goodness-of-fit alpha the verdicts read."""
    def fmt(v) -> str:
        return "-" if v is None or v != v else f"{v:.2f}"

    alpha = f"alpha {fmt(row.alpha)}"
    gof = getattr(row, "alpha_gof", None)
    return alpha if getattr(row, "estimator", "gof") == "gof" or gof is None else f"{alpha}, gof {fmt(gof)}"


def needs_attention(table: pd.DataFrame) -> None:
    """A line for a model that looks healthy, how many matrices carry each verdict, and the first few of them."""
    healthy = health_line(table)
    if healthy:
        out.print(Text(healthy), style="green")
    flagged = table[table["warning"].fillna("") != ""]
    if flagged.empty:
        out.print("needs attention: none (no verdict for any matrix)", highlight=False)
        return
    counts = Counter(w for ws in flagged["warning"] for w in ws.split(","))
    out.print(f"needs attention ({len(flagged)} of {len(table)} matrices): "
              + ", ".join(f"{counts[w]} {w}" for w in WARNINGS if counts[w]), style="bold", highlight=False)
    for r in flagged.head(LISTED).itertuples():
        name, verdict = f"  {r.name}:", f"{r.warning} ({_alphas(r)})"
        if len(name) + 1 + len(verdict) <= out.width:
            out.print(Text(f"{name} {verdict}"))
        else:  # the name whole on its line (to copy), the verdict indented under it
            out.print(Text(name))
            out.print(Padding(Text(verdict), (0, 0, 0, 6), expand=False))
    if len(flagged) > LISTED:
        out.print(f"  ... and {len(flagged) - LISTED} more (see the warning column)", highlight=False)


def check_verdicts(table: pd.DataFrame, fail_on: tuple[str, ...]) -> None:
    """Raise VerdictFailure (exit 3) when a matrix has one of the --fail-on verdicts; the outputs are written."""
    found = failing(table, fail_on)
    if found.empty:
        return
    counts = Counter(w for ws in found["warning"] for w in ws.split(",") if w in fail_on)
    raise VerdictFailure(f"{len(found)} of {len(table)} matrices have a --fail-on verdict ("
                         + ", ".join(f"{counts[w]} {w}" for w in fail_on if counts[w])
                         + f"), e.g. {found['name'].iloc[0]}")
