"""The alpha-guided methods besides AlphaDecay: which matrices each tunes, and how its metric becomes a value.

Each is written as its released code computes it, vectorised (the tests hold a copy of each release's
formula and compare to 1e-9):

- TempBalance (learning rate per Linear): every Linear in module order but the first and the last;
  `linear` puts the metric's range onto [s1, s2] x lr (larger alpha, larger LR), `sqrt`/`log2` scale
  f(alpha) to mean 1, `step` spreads s1..s2 by rank.
- layer-wise LR ("llr", the OLMo/LLaMA release): every Linear and embedding; embeddings and the head take
  the largest metric (so the largest LR), matrices with fewer than 50 eigenvalues are left at the base
  LR; `linear` onto [1, 3] x lr; `sqrt`/`log2` divide by sum(f + 1e-8); `sigmoid` 2/(1+exp(-4z)).
- AlphaPruning (sparsity per block Linear): the block's mean metric (block-wise, its default), mapped
  linearly onto [1-eps, 1+eps], then scaled so the parameter-weighted mean sparsity is the target.
- AlphaLoRA (LoRA experts or rank per block): the block's mean metric to the power beta, shared out
  in integers summing to the budget, with the release's correction loop.

Values are multipliers of the base learning rate ("lr_scale"), fractions of weights pruned
("sparsity") or integers ("rank"). torch-free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from alphaspec.choices import LR_ASSIGN
from alphaspec.maps.paper import paper_candidates
from alphaspec.maps.spec import DecayMapError
from alphaspec.sources.matrices import BLOCK_MODULES, FUSED_MODULES

LLR_EIGS_THRESH = 50  # the layer-wise LR release leaves matrices with fewer eigenvalues at the base LR
SIGMOID_SLOPE = 4.0  # the releases' sigmoid_alpha
RANKS_PER_BLOCK = 5  # AlphaLoRA: 160 experts over Mistral-7B's 32 blocks; the default budget is 5 per block


# -- learning rates ----------------------------------------------------------------------------------------------


def lr_scales(a: np.ndarray, ratio: tuple[float, float], assign: str, *, eps: float = 0.0) -> np.ndarray:
    """Learning-rate multipliers from metric values (larger metric, larger LR), as TempBalance's and the
    layer-wise LR release's get_layer_temps: eps is the 1e-8 the latter adds to each term of sqrt/log2 sums."""
    a = np.asarray(a, dtype=np.float64)
    n, (s1, s2) = a.size, ratio
    if assign == "linear":
        return np.interp(a, [a.min(), a.max()], [s1, s2])
    if assign == "sqrt":
        if (a < 0).any():
            raise DecayMapError(f"sqrt assignment needs metric values >= 0; the smallest is {a.min():.4g}")
        return np.sqrt(a) / np.sum(np.sqrt(a) + eps) * n
    if assign == "log2":
        if (a <= 1).any():
            raise DecayMapError(f"log2 assignment needs every metric value > 1; the smallest is {a.min():.4g}")
        return np.log2(a) / np.sum(np.log2(a) + eps) * n
    if assign == "step":  # rank r (0 = smallest metric) gets s1 + (s2 - s1) r / n
        ranks = np.empty(n, dtype=np.int64)
        ranks[np.argsort(a, kind="stable")] = np.arange(n)
        return s1 + (s2 - s1) * ranks / n
    if assign == "sigmoid":
        z = (a - a.mean()) / (a.std() + 1e-8)
        return 2.0 / (1.0 + np.exp(-SIGMOID_SLOPE * z))
    raise DecayMapError(f"unknown LR assignment {assign!r}; choose one of {', '.join(LR_ASSIGN)}")


def tempbalance_rows(table: pd.DataFrame, eigs_thresh: int = 0) -> tuple[pd.DataFrame, dict[str, str]]:
    """The Linears TempBalance tunes, and those it leaves at the base LR with why: the first and the last, then
    (its release's eigs_thresh, 50 under --paper-compat) those with fewer than `eigs_thresh` eigenvalues."""
    rows, dropped = paper_candidates(table, eigs_thresh=eigs_thresh)
    names = table["tensor"] if "tensor" in table else table["name"]
    tuned, small = set(names[rows.index]), set(dropped[1:])
    return rows, {n: (f"left at the base LR by TempBalance (fewer than {eigs_thresh} eigenvalues)" if n in small
                      else "left at the base LR by TempBalance (the first or the last Linear)")
                  for n in names[table["module"] != "embed"] if n not in tuned}


def llr_rows(table: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The rows the layer-wise LR release tunes with their metric values, and those it leaves at the base LR.

    Embeddings and the head (names holding "embed" or "head") take the largest metric of the model and
    count as large; the others with fewer than 50 eigenvalues are left out."""
    names = table["tensor"] if "tensor" in table else table["name"]
    outer = names.str.contains("embed") | names.str.contains("head")
    values = table[metric].to_numpy(dtype=float).copy()
    inner = values[~outer.to_numpy()]
    fitted = inner[np.isfinite(inner)]  # a matrix without a fit keeps the base LR (build_map says so)
    values[outer.to_numpy()] = max(fitted.max() if fitted.size else -1.0, -1.0)  # its -1 placeholders count too
    keep = outer | (table["n_eigs"] >= LLR_EIGS_THRESH)
    if not keep.any():
        raise DecayMapError("no matrix has the 50 eigenvalues the layer-wise LR release needs to tune it")
    return table[keep], values[keep.to_numpy()], list(names[~keep])


# -- sparsity ----------------------------------------------------------------------------------------------------


def block_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The Linears inside transformer blocks, in module order (what AlphaPruning and AlphaLoRA look at)."""
    rows = table[table["layer"].notna() & table["module"].isin([*BLOCK_MODULES, *FUSED_MODULES])]
    if rows.empty:
        raise DecayMapError("the model has no transformer-block matrices")
    return rows


def block_means(rows: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Each row's block mean of `values` (per layer index; encoder and decoder blocks apart)."""
    key = rows["layer"].astype(str)
    if "stack" in rows:
        key = rows["stack"].fillna("").astype(str) + ":" + key
    return pd.Series(values, index=rows.index).groupby(key.to_numpy()).transform("mean").to_numpy()


def sparsities(a: np.ndarray, sizes: np.ndarray, target: float, epsilon: float) -> np.ndarray:
    """AlphaPruning's ww_sparsity: metric linearly onto [1-eps, 1+eps], scaled so sum(p r) = target sum(p).
    All metrics equal (the release divides by zero there): every matrix gets the target."""
    a, sizes = np.asarray(a, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    span, s1, s2 = a.max() - a.min(), 1.0 - epsilon, 1.0 + epsilon
    r = np.ones_like(a) if span == 0 else (a - a.min()) / span * (s2 - s1) + s1
    r = r * (sizes.sum() * target / (sizes * r).sum())
    if (r >= 1).any():
        raise DecayMapError(f"target sparsity {target:g} with epsilon {epsilon:g} prunes {r.max():.3f} of one "
                            "matrix (every weight or more): lower the target or the epsilon")
    return r


# -- LoRA ranks ---------------------------------------------------------------------------------------------------


def lora_ranks(a: np.ndarray, budget: int, beta: float) -> np.ndarray:
    """AlphaLoRA's exponential_scaling: round(a^beta / sum a^beta * budget), then add 1 where a^beta minus the
    integers is smallest (or take 1 where it is largest) until the integers sum to the budget."""
    a = np.asarray(a, dtype=np.float64)
    if (a <= 0).any():
        raise DecayMapError(f"AlphaLoRA raises each block's mean metric to the power beta, which needs it above 0; the "
                            f"smallest is {a.min():.4g} (alpha_excess can be negative: use alpha)")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        scaled = np.power(a, beta)
        shares = scaled / scaled.sum() * budget
    if not (np.isfinite(shares).all() and scaled.sum() > 0):
        raise DecayMapError(f"beta {beta:g}: the block metrics ({a.min():.4g} to {a.max():.4g}) to that power leave "
                            "the range of floating point; give a beta nearer 0")
    ints = np.round(shares).astype(int)
    for _ in range(2 * len(ints) + abs(budget) + 1):  # each pass moves the sum one step towards the budget
        diff = budget - ints.sum()
        if diff == 0:
            return ints
        if diff > 0:
            ints[np.argmin(scaled - ints)] += 1
        else:
            ints[np.argmax(scaled - ints)] -= 1
    raise DecayMapError(f"could not share a budget of {budget} out in integers")  # pragma: no cover - bounded above
