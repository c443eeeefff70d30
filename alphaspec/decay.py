"""AlphaDecay: module-wise weight decay from a spectral metric (docs/math.md §3), and the decay-map file.

`assign_decays` is the math; `build_decay_map` turns an analysis table into a `DecayMap`;
`DecayMap.param_groups` applies a map to a torch model. The live training hook is in `hook.py`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._version import __version__
from .choices import ASSIGN, DEFAULT_POLICIES, PRESERVE
from .errors import AlphaspecError, UsageError, check_input_file, os_reason, parse_json
from .maps.spec import DecayMapError, DecaySpec, choice_problem, decay_spec
from .modules import BLOCK_MODULES, FUSED_MODULES, block_place, layer_index, module_type
from .output import atomic_write
from .paper import paper_assign, paper_candidates, paper_metric

if TYPE_CHECKING:  # only for hints: a decay map is made and read without torch
    import torch

SCHEMA = "alphaspec.decay-map/1"
POLICIES = ("all", "matrices", "value")
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
    if assign not in ASSIGN:
        raise DecayMapError(f"unknown assignment {assign!r}; choose one of {', '.join(ASSIGN)}")
    if preserve_mean not in PRESERVE:
        raise DecayMapError(f"unknown preserve_mean {preserve_mean!r}; choose one of {', '.join(PRESERVE)}")
    if not math.isfinite(w) or w < 0:
        raise DecayMapError(f"weight decay must be a finite number >= 0, got {w}")
    if assign == "linear":
        s1, s2 = (float(r) for r in ratio)
        if not (math.isfinite(s1) and math.isfinite(s2) and 0 <= s1 < s2):
            raise DecayMapError(f"ratio must satisfy 0 <= s1 < s2, got ({s1}, {s2})")
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


@dataclass
class DecayMap:
    """Module-wise weight decays for named parameters, plus the decay of every other parameter."""

    modules: list[dict]
    weight_decay: float
    ratio: tuple[float, float] = DecaySpec.ratio
    assign: str = DecaySpec.assign
    estimator: str = DecaySpec.estimator
    metric: str = DecaySpec.metric
    preserve_mean: str = DecaySpec.preserve_mean
    default_policy: str = "all"
    default_weight_decay: float = 0.0
    paper_compat: bool = False  # made as the AlphaDecay release does (paper.py): biases follow their weights
    source: str = ""
    alphaspec: str = __version__
    schema: str = field(default=SCHEMA)
    notes: list[str] = field(default_factory=list, compare=False)  # what building it found (not saved in the file)

    def decays(self) -> dict[str, float]:
        return {m["name"]: float(m["weight_decay"]) for m in self.modules}

    def to_json(self) -> dict:
        d = asdict(self)
        order = ["schema", "alphaspec", "source", "estimator", "metric", "assign", "weight_decay", "ratio",
                 "preserve_mean", "default_policy", "default_weight_decay", "paper_compat", "modules"]
        return {k: (list(d[k]) if k == "ratio" else d[k]) for k in order}

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> DecayMap:
        """Read and validate a map file; anything wrong raises DecayMapError with one line."""
        try:
            check_input_file(path, "decay map")
            doc = parse_json(Path(path).read_text(encoding="utf-8"))
        except AlphaspecError as e:
            raise DecayMapError(str(e)) from e
        except OSError as e:
            raise DecayMapError(f"{path}: cannot read ({os_reason(e)})") from e
        except ValueError as e:  # bad JSON or bad UTF-8
            raise DecayMapError(f"{path}: not valid JSON ({e})") from e
        return cls.from_json(doc, str(path))

    @classmethod
    def from_json(cls, doc: dict, where: str = "decay map") -> DecayMap:
        """Validate a parsed map: every decay a finite number >= 0, names unique, the ratio two numbers."""
        if not isinstance(doc, dict) or "schema" not in doc:
            raise DecayMapError(f"{where}: not an alphaspec decay map (no 'schema' field)")
        if doc["schema"] != SCHEMA:
            raise DecayMapError(f"{where}: unsupported schema {doc['schema']!r}; this alphaspec reads {SCHEMA!r}")
        try:
            if not isinstance(doc["modules"], list) or not all(isinstance(m, dict) for m in doc["modules"]):
                raise TypeError("'modules' must be a list of objects")
            mods = [{**m, "name": _text(m["name"], "name"), "weight_decay": _decay(m["weight_decay"], m["name"])}
                    for m in doc["modules"]]
            ratio = doc.get("ratio", DEFAULT_RATIO)
            if not isinstance(ratio, list | tuple) or len(ratio) != 2:
                raise TypeError("'ratio' must be two numbers")
            dmap = cls(modules=mods, weight_decay=_decay(doc["weight_decay"], "weight_decay"),
                       ratio=(_number(ratio[0], "ratio"), _number(ratio[1], "ratio")),
                       assign=_text(doc.get("assign", "linear"), "assign"),
                       estimator=_text(doc.get("estimator", "median"), "estimator"),
                       metric=_text(doc.get("metric", "alpha"), "metric"),
                       preserve_mean=_text(doc.get("preserve_mean", "none"), "preserve_mean"),
                       default_policy=_text(doc.get("default_policy", "all"), "default_policy"),
                       default_weight_decay=_decay(doc.get("default_weight_decay", doc["weight_decay"]),
                                                   "default_weight_decay"),
                       paper_compat=doc.get("paper_compat", False) is True,
                       source=str(doc.get("source", "")), alphaspec=str(doc.get("alphaspec", "")))
        except KeyError as e:
            raise DecayMapError(f"{where}: malformed decay map (missing field {e})") from e
        except (TypeError, ValueError) as e:
            raise DecayMapError(f"{where}: malformed decay map ({e})") from e
        repeated = sorted(n for n, k in Counter(m["name"] for m in mods).items() if k > 1)
        if repeated:
            raise DecayMapError(f"{where}: names listed more than once: {', '.join(repeated[:5])}")
        if dmap.default_policy not in POLICIES:
            raise DecayMapError(f"{where}: unknown default_policy {dmap.default_policy!r}")
        return dmap

    def param_groups(self, model: torch.nn.Module, **optimizer_kwargs) -> list[dict]:
        """Optimizer param groups: one per mapped parameter with its decay, then the other parameters.

        Map names match parameter names exactly, or as a dotted suffix (a checkpoint without the
        model's `transformer.` / `model.` prefix). Missing or unexpected names raise, listed.
        """
        params = dict(model.named_parameters())
        sizes = {m["name"]: int(m["params"]) for m in self.modules if isinstance(m.get("params"), int)}
        resolved = match_names(self.decays(), params, model, sizes)
        biases = {p: p.removesuffix("weight") + "bias" for p in resolved if p.endswith(".weight")} \
            if self.paper_compat else {}
        biases = {w: b for w, b in biases.items() if b in params}  # the release decays a module's bias with it
        from .maps.groups import rest_groups, tuned_groups

        taken = set(resolved) | set(biases.values())
        return [*tuned_groups(params, resolved, riders=biases, **optimizer_kwargs),
                *rest_groups(params, taken, self.default_weight_decay,
                             no_decay=is_no_decay if self.default_policy == "matrices" else None, **optimizer_kwargs)]


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{field} must be a number, not {json.dumps(value)}")
    return float(value)


def _decay(value, field: str) -> float:
    """A weight decay read from a map: a finite number >= 0 (NaN, infinities and negatives are refused)."""
    number = _number(value, f"weight decay of {field}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"weight decay of {field} is {value!r}; it must be a finite number >= 0")
    return number


MAX_TEXT = 1000  # characters of a name or setting in a map: parameter names are far shorter


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        shown = json.dumps(value)
        raise TypeError(f"{field} must be a string, not {shown if len(shown) <= 60 else type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"a {field} of {len(value):,} characters (at most {MAX_TEXT})")
    return value


def is_no_decay(name: str, p: torch.Tensor) -> bool:
    """1-D parameters (norm gains, biases) and embeddings: the usual no-decay set."""
    return p.ndim < 2 or module_type(name) == "embed"


def is_tuned_candidate(name: str, p: torch.Tensor) -> bool:
    """A matrix inside a transformer block: what AlphaDecay tunes by default."""
    return p.ndim >= 2 and layer_index(name) is not None and module_type(name) in (*BLOCK_MODULES, *FUSED_MODULES)


_EXPERT_PART = re.compile(r"\.experts\.\d+\.(gate_proj|up_proj|w1|w3|down_proj|w2)\.weight$")
_FUSED_OF = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "w1": "gate_up_proj", "w3": "gate_up_proj",
             "down_proj": "down_proj", "w2": "down_proj"}


def fused_expert_param(name: str, params: dict[str, torch.Tensor]) -> str | None:
    """The fused parameter that holds a per-expert checkpoint tensor in a transformers-5 model: a map made
    from the checkpoint names `...experts.3.gate_proj.weight` (or Mixtral's `w1`), the model built from it
    holds `...experts.gate_up_proj` [experts, 2 x ff, hidden]; same for down_proj (`w2`). None if the
    model has no such parameter in that layer."""
    match = _EXPERT_PART.search(name)
    if not match:
        return None
    want, layer = f"experts.{_FUSED_OF[match.group(1)]}", layer_index(name)
    hits = [p for p, t in params.items() if p.endswith(want) and t.ndim == 3 and layer_index(p) == layer]
    return hits[0] if len(hits) == 1 else None


def match_names(decays: dict[str, float], params: dict[str, torch.Tensor], model=None,
                sizes: dict[str, int] | None = None) -> dict[str, float]:
    """Map decay-map names onto parameter names; raise listing missing and unexpected names.

    Per-expert names of a map made from a checkpoint apply to the fused expert tensors of a
    transformers-5 model (see fused_expert_param), weighted by `sizes` (parameters per map entry)."""
    by_suffix: dict[str, list[str]] = {}
    for pname in params:
        parts = pname.split(".")
        for i in range(len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(pname)
    by_place: dict[tuple, list[str]] = {}
    for pname in params:
        by_place.setdefault(block_place(pname), []).append(pname)
    resolved, missing, experts = {}, [], {}
    for name, wd in decays.items():
        hits = [name] if name in params else by_suffix.get(name, [])
        if not hits and block_place(name)[1] is not None:  # renamed prefix (transformers 5: language_model.model.
            hits = by_place.get(block_place(name), [])  # -> model.language_model.): the same block, same path
        if len(hits) == 1:
            resolved[hits[0]] = wd
        elif not hits and (fused := fused_expert_param(name, params)) is not None:
            experts.setdefault(fused, []).append((wd, (sizes or {}).get(name, 1)))
        else:
            missing.append(name if not hits else f"{name} (ambiguous: {', '.join(hits[:3])})")
    for fused, parts in experts.items():  # one decay per fused tensor: the parameter-weighted mean of its experts'
        weights = [size for _, size in parts]
        resolved[fused] = float(np.average([wd for wd, _ in parts], weights=weights))
    unexpected = [p for p, t in params.items() if p not in resolved and is_tuned_candidate(p, t)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} name(s) of the map not in the model: {', '.join(missing[:6])}"
                         + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append(f"{len(unexpected)} block matrice(s) of the model not in the map: {', '.join(unexpected[:6])}"
                         + (" ..." if len(unexpected) > 6 else ""))
        raise DecayMapError("the decay map does not match this model: " + "; ".join(parts))
    return resolved


def check_map_matches_table(dmap: DecayMap, table: pd.DataFrame, where: str) -> None:
    """Refuse a map made for another model than the analysed one (its names are not the table's tensors)."""
    tensors = set(table["tensor"] if "tensor" in table else table["name"])
    absent = [m["name"] for m in dmap.modules if m["name"] not in tensors
              and not any(t.endswith("." + m["name"]) or m["name"].endswith("." + t) for t in tensors)]
    if absent:
        raise DecayMapError(f"the decay map was made for another model than {where}: {len(absent)} of its names "
                            f"are not in it, e.g. {absent[0]}")


def tuned_rows(table: pd.DataFrame, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The rows whose tensors get a tuned decay: block matrices by default, or those --include names."""
    inc, exc = list(include), list(exclude)
    names = table["tensor"] if "tensor" in table else table["name"]
    if inc:
        keep = names.str.contains("|".join(f"(?:{p})" for p in inc), regex=True)
    else:
        keep = table["layer"].notna() & table["module"].isin([*BLOCK_MODULES, *FUSED_MODULES])
    if exc:
        keep &= ~names.str.contains("|".join(f"(?:{p})" for p in exc), regex=True)
    return table[keep]


def build_decay_map(table: pd.DataFrame, weight_decay: float, spec: DecaySpec | None = None, *,
                    default: str | float = "all", source: str = "", all_rows: bool = False,
                    **options) -> DecayMap:
    """A DecayMap from an analysis table (one row per matrix, as `alphaspec.analyze` returns).

    spec: the DecaySpec (ratio, assign, metric, preserve_mean, include, exclude, paper_compat); keyword
    `options` set its fields one by one (`build_decay_map(t, 0.1, assign="sqrt")`). Decays are assigned
    per row; a tensor split into parts (fused q/k/v, gate/up, stacked experts) gets the parameter-weighted
    mean of its parts' decays, since the optimizer sees whole tensors. The tuned set is the block
    matrices, or the include names, minus exclude; all_rows tunes every row of the table as given.
    """
    spec = decay_spec(spec, options)
    metric = spec.metric
    table = with_derived_metrics(table)
    if metric not in table.columns:
        hint = " (analyse with --farms)" if metric == "alpha_farms" else ""
        raise DecayMapError(f"the table has no {metric!r} column{hint}")
    if spec.paper_compat:
        return _finish(table, _paper_modules(table, weight_decay, spec), weight_decay, spec, default, source)
    rows = table if all_rows else tuned_rows(table, spec.include, spec.exclude)
    if rows.empty:
        raise DecayMapError("no matrices to tune: the table has no transformer-block matrices (see --include)")
    values = rows[metric].to_numpy(dtype=float)
    fitted = np.isfinite(values)  # a matrix with no fit (no power-law tail, NaN weights) keeps the base decay
    if not fitted.any():
        raise DecayMapError(f"none of the {len(rows)} tuned matrices has a {metric} ({rows['status'].iloc[0]}), "
                            f"e.g. {rows['name'].iloc[0]}")
    sizes = (rows["rows"] * rows["cols"]).to_numpy(dtype=float)
    blocks = rows["layer"].astype(object).where(rows["layer"].notna(), -1).tolist()
    if "stack" in rows:  # encoder block 3 and decoder block 3 are different blocks
        blocks = [f"{st}:{b}" for st, b in zip(rows["stack"].fillna("").tolist(), blocks, strict=True)]
    wd = np.full(len(rows), float(weight_decay))
    wd[fitted] = assign_decays(values[fitted], weight_decay, ratio=spec.ratio, assign=spec.assign,
                               blocks=[b for b, f in zip(blocks, fitted, strict=True) if f], sizes=sizes[fitted],
                               preserve_mean=spec.preserve_mean)
    share = shape_share(rows[fitted], metric)
    rows = rows.assign(decay_=wd, size_=sizes, fitted_=fitted)
    tensor_col = "tensor" if "tensor" in rows else "name"
    modules = [_map_entry(tensor, part, metric) for tensor, part in rows.groupby(tensor_col, sort=False)]
    dmap = _finish(table, modules, weight_decay, spec, default, source)
    if share is not None and share >= SHAPE_NOTE_SHARE:
        dmap.notes.append(f"{share:.0%} of the spread of alpha over the tuned matrices follows their shapes alone "
                          "(alpha_random, the alpha of a Gaussian matrix of each shape), so these decays mostly sort "
                          "matrices by shape; --metric alpha_excess (alpha - alpha_random) assigns by what training "
                          "added")
    return dmap


SHAPE_NOTE_SHARE = 0.5  # a note when alpha_random explains at least this share of alpha's variance (R²)


def with_derived_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `alpha_excess` = alpha - alpha_random (what training added to the alpha that a random
    matrix of the same shape has), when both columns are there and it is not."""
    if "alpha_excess" in table or not {"alpha", "alpha_random"} <= set(table.columns):
        return table
    return table.assign(alpha_excess=table["alpha"] - table["alpha_random"])


def shape_share(rows: pd.DataFrame, metric: str) -> float | None:
    """The share of alpha's variance over these matrices that their shapes explain: R² of a linear fit of alpha
    on alpha_random (a Gaussian matrix's alpha for each shape). None for another metric, or without spread."""
    if metric != "alpha" or "alpha_random" not in rows:
        return None
    both = rows[["alpha", "alpha_random"]].astype(float).dropna()
    if len(both) < 3 or both["alpha"].std() == 0 or both["alpha_random"].std() == 0:
        return None
    return float(np.corrcoef(both["alpha"], both["alpha_random"])[0, 1] ** 2)


def _finish(table, modules, weight_decay, spec: DecaySpec, default, source) -> DecayMap:
    if isinstance(default, str):
        if problem := choice_problem("default decay policy", default, DEFAULT_POLICIES):
            raise DecayMapError(f"{problem}, or a number")
        policy, default_wd = default, float(weight_decay)
    else:
        policy, default_wd = "value", float(default)
    return DecayMap(modules=modules, weight_decay=float(weight_decay), ratio=tuple(float(r) for r in spec.ratio),
                    assign=spec.assign, metric=spec.metric, preserve_mean=spec.preserve_mean,
                    estimator=str(table["estimator"].iloc[0]) if "estimator" in table else spec.estimator,
                    default_policy=policy, default_weight_decay=default_wd, paper_compat=spec.paper_compat,
                    source=source)


def _paper_modules(table: pd.DataFrame, weight_decay: float, spec: DecaySpec) -> list[dict]:
    """Map entries as the AlphaDecay release makes them; its dropped first Linear keeps the base decay."""
    metric = spec.metric
    if spec.preserve_mean != "none" or spec.include:
        raise UsageError("--paper-compat reproduces the release, which has no --preserve-mean and no --include")
    if "tensor" in table and (table["name"] != table["tensor"]).any():
        raise UsageError("--paper-compat needs whole tensors (the release analyses each nn.Linear whole): "
                         "analyse with --no-split-fused")
    rows, dropped = paper_candidates(table)
    values = paper_metric(rows, metric)
    if not np.isfinite(values).all():
        raise DecayMapError(f"{int((~np.isfinite(values)).sum())} matrices have no {metric}; the release cannot "
                            "assign decays to them")
    blocks = rows["layer"].astype(object).where(rows["layer"].notna(), -1).tolist()
    wd = paper_assign(values, float(weight_decay), spec.ratio, spec.assign, blocks)
    by_name = table.set_index("name")
    entries = [{"name": n, "module": by_name.loc[n, "module"], "layer": _int_or_none(by_name.loc[n, "layer"]),
                metric: None, "weight_decay": float(weight_decay), "params": int(by_name.loc[n, "rows"] *
                                                                                by_name.loc[n, "cols"]),
                "note": "left untuned by the release (the model's first Linear)" if i == 0 else
                "left untuned by the release (fewer than 50 eigenvalues)"} for i, n in enumerate(dropped)]
    return entries + [{"name": r.name, "module": r.module, "layer": _int_or_none(r.layer), metric: float(v),
                       "weight_decay": float(d), "params": int(r.rows * r.cols)}
                      for r, v, d in zip(rows.itertuples(), values, wd, strict=True)]


def _map_entry(tensor: str, part: pd.DataFrame, metric: str) -> dict:
    """One tensor of the map: its decay is the parameter-weighted mean of its parts' (the optimizer sees
    whole tensors); its metric that of the parts with a fit (None when none has one, with the reason)."""
    weights, ok = part["size_"].to_numpy(), part["fitted_"].to_numpy()
    values = part[metric].to_numpy(dtype=float)
    entry = {"name": tensor, "module": _whole_module(part), "layer": _int_or_none(part["layer"].iloc[0]),
             metric: float(np.average(values[ok], weights=weights[ok])) if ok.any() else None,
             "weight_decay": float(np.average(part["decay_"].to_numpy(), weights=weights)),
             "params": int(weights.sum())}
    if not ok.all():
        entry["note"] = "base decay kept for parts without a fit: " + "; ".join(
            sorted({str(st) for st in part.loc[~part["fitted_"], "status"]})) if "status" in part else "no fit"
    if len(part) > 1 or part["name"].iloc[0] != tensor:
        entry["parts"] = [{"name": r.name, "module": r.module, metric: float(getattr(r, metric))
                           if r.fitted_ else None, "weight_decay": float(r.decay_)} for r in part.itertuples()]
    return entry


def _whole_module(part: pd.DataFrame) -> str:
    kinds = set(part["module"])
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {"att.k", "att.v"} and part["name"].iloc[0].split("[")[0].endswith("kv_b_proj.weight"):
        return "att.kv_b"
    return "att.qkv" if kinds <= {"att.q", "att.k", "att.v"} else "mlp.gate_up" if kinds <= {"mlp.gate", "mlp.up"} \
        else "+".join(sorted(kinds))


def _int_or_none(v) -> int | None:
    return None if v is None or pd.isna(v) else int(v)
