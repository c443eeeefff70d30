"""Parameter groups: the one place where per-parameter settings become optimizer param groups.

Decay maps (`DecayMap.param_groups`), the trainer's strategies and the live hook all build their groups
here: one group per tuned parameter with its value (a decay now; a learning rate is the same shape),
the untuned parameters after them by policy, and, for a live optimizer, splitting its groups per tuned
parameter and merging them back (for a checkpoint an optimizer built the ordinary way can load).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch

from alphaspec.errors import AlphaspecError
from alphaspec.maps.spec import DecayMapError
from alphaspec.sources.matrices import BLOCK_MODULES, FUSED_MODULES, block_place, layer_index, module_type

GROUP_NAMES = ("untuned", "no_decay", "multipliers", "matrices")  # the groups that are not one tuned parameter


class GroupError(AlphaspecError, ValueError):
    """Parameters that cannot be put in groups as asked (a tuned parameter the optimizer does not hold)."""


def tuned_groups(params: dict[str, torch.nn.Parameter], values: dict[str, float], key: str = "weight_decay",
                 riders: dict[str, str] | None = None, **optimizer_kwargs) -> list[dict]:
    """One group per named parameter, with its value under `key`; `riders` puts another parameter in a
    parameter's group (the AlphaDecay release decays a module's bias with its weight)."""
    riders = riders or {}
    return [{"params": [params[n]] + ([params[riders[n]]] if n in riders else []), key: v, "name": n,
             **optimizer_kwargs} for n, v in values.items()]


def map_param_groups(model: torch.nn.Module, values: dict[str, float], rest: Callable[[dict, set], list[dict]], *,
                     key: str = "weight_decay", sizes: dict[str, int] | None = None, riders: bool = False,
                     candidates: Callable[[str], bool] | None = None, what: str = "decay map",
                     **optimizer_kwargs) -> list[dict]:
    """The one way a map becomes optimizer param groups: each mapped parameter (match_names: exact names, dotted
    suffixes, fused experts weighted by `sizes`) in a group of its own with its value under `key`, its bias in
    that group when `riders` (the releases put a module's bias with its weight), then `rest(params, taken)` for
    every other parameter. `candidates` limits the parameters a map name may match (not the multipliers)."""
    params = dict(model.named_parameters())
    pool = params if candidates is None else {n: p for n, p in params.items() if candidates(n)}
    resolved = match_names(values, pool, model, sizes, what=what)
    biases = {w: w.removesuffix("weight") + "bias" for w in resolved if w.endswith(".weight")} if riders else {}
    biases = {w: b for w, b in biases.items() if b in params}
    return [*tuned_groups(params, resolved, key=key, riders=biases, **optimizer_kwargs),
            *rest(params, set(resolved) | set(biases.values()))]


def map_sizes(modules: list[dict]) -> dict[str, int]:
    """Parameters per map entry (a map made from a checkpoint records them), for fused experts' shares."""
    return {m["name"]: int(m["params"]) for m in modules if isinstance(m.get("params"), int)}


def one_group(params: list[torch.nn.Parameter], weight_decay: float, name: str, **optimizer_kwargs) -> dict:
    """A group of several parameters sharing one decay (uniform decay's block matrices)."""
    return {"params": params, "weight_decay": weight_decay, "name": name, **optimizer_kwargs}


def rest_groups(params: dict[str, torch.nn.Parameter], taken: set[str], default_weight_decay: float, *,
                no_decay: callable | None = None, multiplier: callable | None = None,
                multiplier_settings: dict | None = None, **optimizer_kwargs) -> list[dict]:
    """The parameters not in `taken`: "untuned" at the default decay, "no_decay" (those `no_decay(name, p)`
    picks: 1-D parameters and embeddings under the `matrices` policy) at 0, and learnable multipliers (those
    `multiplier(name)` picks) with their own settings. Empty groups are left out."""
    decayed, undecayed, mults = [], [], []
    for name, p in params.items():
        if name in taken:
            continue
        if multiplier is not None and multiplier(name):
            mults.append(p)
        elif no_decay is not None and no_decay(name, p):
            undecayed.append(p)
        else:
            decayed.append(p)
    groups = [{"params": decayed, "weight_decay": default_weight_decay, "name": "untuned", **optimizer_kwargs},
              {"params": undecayed, "weight_decay": 0.0, "name": "no_decay", **optimizer_kwargs},
              {"params": mults, "name": "multipliers", **optimizer_kwargs, **(multiplier_settings or {})}]
    return [g for g in groups if g["params"]]


def plain_group(params: dict[str, torch.nn.Parameter], taken: set[str], name: str = "untuned",
                **optimizer_kwargs) -> list[dict]:
    """The parameters not in `taken`, in one group with the optimizer's own settings (none if empty)."""
    rest = [p for n, p in params.items() if n not in taken]
    return [{"params": rest, "name": name, **optimizer_kwargs}] if rest else []


def own_groups(optimizer: torch.optim.Optimizer, tuned: dict[str, torch.nn.Parameter]) -> dict[str, dict]:
    """Each tuned parameter's own group (one holding it alone) as the optimizer holds it now: look them up
    again after optimizer.load_state_dict(), which replaces every group dict (a resumed run)."""
    own = {id(g["params"][0]): g for g in optimizer.param_groups if len(g["params"]) == 1}
    return {n: own[id(p)] for n, p in tuned.items() if id(p) in own}


def split_param_groups(optimizer: torch.optim.Optimizer, tuned: dict[str, torch.nn.Parameter],
                       scheduler=None) -> dict[str, dict]:
    """Give every tuned parameter its own param group (same hyperparameters as the group it came from).

    The scheduler's public per-group lists (base_lrs, lr_lambdas, ...) are remapped to match; its private ones are
    left to it (its last LRs, get_last_lr(), have the new groups after its next step).
    """
    names = {id(p): n for n, p in tuned.items()}
    found = {id(p) for g in optimizer.param_groups for p in g["params"]}
    absent = [n for n, p in tuned.items() if id(p) not in found]
    if absent:
        raise GroupError(f"{len(absent)} tuned parameter(s) are not in the optimizer, e.g. {absent[0]}")
    new, origin, by_name = [], [], {}
    for gi, group in enumerate(optimizer.param_groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        rest = [p for p in group["params"] if id(p) not in names]
        if rest:
            new.append({**hyper, "params": rest})
            origin.append(gi)
        for p in group["params"]:
            if id(p) in names:
                g = {**hyper, "params": [p], "name": names[id(p)]}
                new.append(g)
                origin.append(gi)
                by_name[names[id(p)]] = g
    old_count = len(optimizer.param_groups)
    optimizer.param_groups[:] = new
    for sched in schedulers_of(scheduler):
        for key, value in vars(sched).items():
            if not key.startswith("_") and isinstance(value, list) and len(value) == old_count:
                setattr(sched, key, [value[i] for i in origin])
    return by_name


def schedulers_of(scheduler) -> list:
    """A scheduler and the ones it drives (SequentialLR's and ChainedScheduler's, read, never written), without
    accelerate's wrapper: each has per-group lists to keep in step with the groups."""
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps schedulers
    if sched is None:
        return []
    return [sched, *(s for sub in getattr(sched, "_schedulers", []) for s in schedulers_of(sub))]


def merge_param_groups(optimizer: torch.optim.Optimizer, originals: list[dict], scheduler=None) -> None:
    """Undo `split_param_groups`: the original groups again (their params in their order, their own
    weight decay, the current values of the other hyperparameters), and the scheduler's lists to match.

    An optimizer saved like this loads into one built the ordinary way (a Trainer resuming, say).
    """
    origin_of = {id(p): gi for gi, g in enumerate(originals) for p in g["params"]}
    first: dict[int, int] = {}
    for i, group in enumerate(optimizer.param_groups):
        first.setdefault(origin_of[id(group["params"][0])], i)
    merged = []
    for gi, original in enumerate(originals):
        now = {k: v for k, v in optimizer.param_groups[first[gi]].items() if k not in ("params", "name", "weight_decay")}
        merged.append({**original, **now, "params": original["params"]})
    new_count = len(optimizer.param_groups)
    optimizer.param_groups[:] = merged
    for sched in schedulers_of(scheduler):
        for key, value in vars(sched).items():
            if not key.startswith("_") and isinstance(value, list) and len(value) == new_count:
                setattr(sched, key, [value[first[gi]] for gi in range(len(originals))])


# -- which parameters a map's names are, and which parameters are tuned or left undecayed ---------------


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
                sizes: dict[str, int] | None = None, what: str = "decay map") -> dict[str, float]:
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
    resolved, missing, experts, spelled = {}, [], {}, {}
    for name, wd in decays.items():
        hits = [name] if name in params else by_suffix.get(name, [])
        if not hits and block_place(name)[1] is not None:  # renamed prefix (transformers 5: language_model.model.
            hits = by_place.get(block_place(name), [])  # -> model.language_model.): the same block, same path
        if len(hits) == 1:
            if hits[0] in spelled:  # two entries, one parameter: neither may silently win
                raise DecayMapError(f"the {what} names {hits[0]} twice: as {spelled[hits[0]]!r} and as {name!r}")
            spelled[hits[0]] = name
            resolved[hits[0]] = wd
        elif not hits and (fused := fused_expert_param(name, params)) is not None:
            experts.setdefault(fused, []).append((wd, (sizes or {}).get(name, 1)))
        else:
            missing.append(name if not hits else f"{name} (ambiguous: {', '.join(hits[:3])})")
    for fused, parts in experts.items():  # one decay per fused tensor: the parameter-weighted mean of its experts'
        weights = [size for _, size in parts]
        if fused in resolved or not all(isinstance(w, int) and w > 0 for w in weights):
            raise DecayMapError(f"the {what}'s expert entries for {fused} " + (
                "also name it whole" if fused in resolved else f"have parameter counts {weights[:4]}: each must be "
                "a whole number above 0"))
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
        raise DecayMapError(f"the {what} does not match this model: " + "; ".join(parts))
    return resolved
