"""Parameter groups: the one place where per-parameter settings become optimizer param groups.

Decay maps (`DecayMap.param_groups`), the trainer's strategies and the live hook all build their groups
here: one group per tuned parameter with its value (a decay now; a learning rate is the same shape),
the untuned parameters after them by policy, and, for a live optimizer, splitting its groups per tuned
parameter and merging them back (for a checkpoint an optimizer built the ordinary way can load).
"""

from __future__ import annotations

import torch

from ..errors import AlphaspecError

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


def split_param_groups(optimizer: torch.optim.Optimizer, tuned: dict[str, torch.nn.Parameter],
                       scheduler=None) -> dict[str, dict]:
    """Give every tuned parameter its own param group (same hyperparameters as the group it came from).

    Per-group lists of the scheduler (base_lrs, lr_lambdas, _last_lr, ...) are remapped to match.
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
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps schedulers
    if sched is not None:
        for key, value in vars(sched).items():
            if isinstance(value, list) and len(value) == old_count:
                setattr(sched, key, [value[i] for i in origin])
    return by_name


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
    sched = getattr(scheduler, "scheduler", scheduler)
    if sched is not None:
        for key, value in vars(sched).items():
            if isinstance(value, list) and len(value) == new_count:
                setattr(sched, key, [value[first[gi]] for gi in range(len(originals))])


