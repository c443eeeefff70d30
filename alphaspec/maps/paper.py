"""The AlphaDecay release's own choices, to reproduce its published decays (`decay-map --paper-compat`).

The released code (TempBalance's assignment with "lr" renamed "weight_decay") differs from alphaspec's
defaults in ways that move decays by a few percent; docs/decay.md lists each one and why alphaspec
chooses otherwise. Here they are reproduced exactly:

- every `nn.Linear` is a candidate, in module order, and the first (LLaMA's `layers.0.q_proj`) and the
  last (the output head) are dropped, then every one with fewer than 50 eigenvalues (its `eigs_thresh`,
  a MoE router, say): they keep the base decay;
- `linear` is `np.interp(a, [a_min, a_max], [s1 w, s2 w])`, so equal metrics all get s2 w (not w);
  `sqrt`/`log2` divide by sum(f(a) + 1e-8); `sigmoid` groups by the block index;
- `spectral_norm` is lambda_max (sigma_max squared) and `frobenius_norm` the sum of eigenvalues (squared);
- a module's bias is decayed with its weight (param_groups puts it in the weight's group).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaspec.errors import UsageError
from alphaspec.sources.matrices import BLOCK_MODULES, FUSED_MODULES

PAPER_EIGS_THRESH = 50  # the release's eigs_thresh: Linears with fewer eigenvalues are left untuned
PAPER_METRICS = {"alpha": "alpha", "spectral_norm": "lambda_max", "stable_rank": "stable_rank",
                 "alpha_weighted": "alpha_weighted", "lambda_max": "lambda_max", "frobenius_norm": "frobenius_norm"}


def paper_candidates(table: pd.DataFrame, eigs_thresh: int = PAPER_EIGS_THRESH) -> tuple[pd.DataFrame, list[str]]:
    """The rows the release tunes and the names it drops: the first Linear and the head, then (in that
    order, as its build_optimizer_param_group does) every Linear with fewer than `eigs_thresh` eigenvalues
    (TempBalance, which AlphaDecay copied, has no such filter: 0).

    The table's row order is module order (blocks by layer, q k v o gate up down, then the head). With a
    tied head the checkpoint has no lm_head row, and the release drops that (virtual) head: nothing else.
    """
    if "n_eigs" not in table:
        raise UsageError("the table has no n_eigs column (the eigenvalue count the release filters on): analyse "
                         "the checkpoint again")
    linear = table[table["module"] != "embed"]
    if len(linear) < 3:
        raise UsageError("the release's module choice needs at least three linear layers")
    last = linear.iloc[-1]
    head = not (pd.notna(last["layer"]) and last["module"] in (*BLOCK_MODULES, *FUSED_MODULES))
    names = linear["tensor"] if "tensor" in linear else linear["name"]
    tuned = linear.iloc[1:-1] if head else linear.iloc[1:]
    small = tuned["n_eigs"] < eigs_thresh
    dropped = [names.iloc[0], *names.loc[small[small].index]]
    if small.all():
        raise UsageError(f"--paper-compat: no linear layer has the {eigs_thresh} eigenvalues the release needs "
                         "to tune it")
    return tuned[~small], dropped


def paper_metric(rows: pd.DataFrame, metric: str) -> np.ndarray:
    """The metric as the release computes it from the same eigenvalues."""
    if metric not in PAPER_METRICS:
        raise UsageError(f"--paper-compat reproduces the metrics {', '.join(PAPER_METRICS)}; not {metric!r}")
    values = rows[PAPER_METRICS[metric]].to_numpy(dtype=float)
    return values**2 if metric == "frobenius_norm" else values


def paper_assign(a: np.ndarray, w: float, ratio, assign: str, blocks: list) -> np.ndarray:
    """The release's get_layer_temps, written out."""
    if assign == "linear":
        return np.interp(a, [a.min(), a.max()], [ratio[0] * w, ratio[1] * w])
    if assign == "sqrt":
        return np.sqrt(a) / np.sum(np.sqrt(a) + 1e-8) * len(a) * w
    if assign == "log2":
        return np.log2(a) / np.sum(np.log2(a) + 1e-8) * len(a) * w
    out = np.empty_like(a)
    groups = np.asarray([str(b) for b in blocks])
    for g in dict.fromkeys(groups.tolist()):
        sel = groups == g
        z = (a[sel] - a[sel].mean()) / (a[sel].std() + 1e-8)
        out[sel] = w * 2.0 / (1.0 + np.exp(-4.0 * z))
    return out
