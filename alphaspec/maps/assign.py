"""The assignment: metric values → per-module values (a decay here; the same shapes serve a learning rate).

linear/sqrt/log2 over all modules, sigmoid per block (docs/math.md §3), optionally rescaled so the plain
("modules") or size-weighted ("params") mean equals the base value. torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alphaspec.choices import ASSIGN, PRESERVE
from alphaspec.maps.spec import DecayMapError, DecaySpec, choice_problem, ratio_problem

DEFAULT_RATIO = DecaySpec.ratio


def assign_decays(metric: Sequence[float], weight_decay: float, *, ratio: Sequence[float] = DEFAULT_RATIO,
                  assign: str = "linear", blocks: Sequence | None = None, sizes: Sequence[float] | None = None,
                  preserve_mean: str = "none") -> np.ndarray:
    """Per-module decays from metric values a_i (docs/math.md §3).

    linear: w*(s1 + (s2-s1)*(a-a_min)/(a_max-a_min)), and w for every module when all a are equal;
    sqrt / log2: w*n*f(a_i)/sum_j f(a_j) (log2 needs every a > 1); sigmoid: per block (`blocks`),
    w*2/(1+exp(-4z)) with z the population z-score. preserve_mean rescales so that the plain
    ("modules") or `sizes`-weighted ("params") mean decay equals w.
    """
    a = np.asarray(metric, dtype=np.float64)
    w = float(weight_decay)
    if a.ndim != 1 or a.size == 0:
        raise DecayMapError("no modules to assign decays to")
    if not np.isfinite(a).all():
        raise DecayMapError(f"{int((~np.isfinite(a)).sum())} module(s) have no finite metric value")
    for problem in (choice_problem("assignment", assign, ASSIGN), choice_problem("preserve_mean", preserve_mean, PRESERVE)):
        if problem:
            raise DecayMapError(problem)
    if not math.isfinite(w) or w < 0:
        raise DecayMapError(f"weight decay must be a finite number >= 0, got {w}")
    if assign == "linear":
        if problem := ratio_problem(tuple(ratio)):
            raise DecayMapError(f"ratio {tuple(ratio)}: {problem}")
        s1, s2 = (float(r) for r in ratio)
        span = a.max() - a.min()
        wd = np.full_like(a, w) if span == 0 else w * (s1 + (s2 - s1) * (a - a.min()) / span)
    elif assign == "sqrt":
        if (a < 0).any() or a.sum() <= 0:
            raise DecayMapError("sqrt assignment needs non-negative metric values with a positive sum")
        wd = w * a.size * np.sqrt(a) / np.sqrt(a).sum()
    elif assign == "log2":
        if (a <= 1).any():
            raise DecayMapError(f"log2 assignment needs every metric value > 1; the smallest is {a.min():.4g}")
        wd = w * a.size * np.log2(a) / np.log2(a).sum()
    else:
        groups = np.asarray(list(blocks) if blocks is not None else [0] * a.size, dtype=object)
        if groups.size != a.size:
            raise DecayMapError("sigmoid assignment needs one block id per module")
        z = np.zeros_like(a)
        for g in dict.fromkeys(groups.tolist()):
            sel = groups == g
            z[sel] = (a[sel] - a[sel].mean()) / (a[sel].std() + 1e-8)
        wd = w * 2.0 / (1.0 + np.exp(-4.0 * z))
    return _preserve(wd, w, preserve_mean, sizes)


def _preserve(wd: np.ndarray, w: float, how: str, sizes: Sequence[float] | None) -> np.ndarray:
    if how == "none" or w == 0:
        return wd
    weights = np.ones_like(wd) if how == "modules" else np.asarray(sizes, dtype=np.float64)
    if weights.shape != wd.shape:
        raise DecayMapError("preserve_mean='params' needs the parameter count of every module")
    mean = float((wd * weights).sum() / weights.sum())
    if mean <= 0:
        raise DecayMapError("cannot preserve the mean: every assigned decay is 0")
    return wd * (w / mean)
