"""Using a map with the ecosystem's own objects: learning-rate maps as optimizer param groups, sparsity maps
as `torch.nn.utils.prune` masks, LoRA-rank maps as a `peft.LoraConfig`.

    groups = lr_param_groups(model, ValueMap.load("lr.json"), lr=3e-4)   # torch.optim.AdamW(groups)
    report = prune_model(model, ValueMap.load("sparsity.json"))          # magnitude masks, per-matrix ratio
    config = lora_config(ValueMap.load("ranks.json"), lora_alpha=16)     # peft.get_peft_model(model, config)
"""

from __future__ import annotations

import math
import re
from collections import Counter

import pandas as pd
import torch

from alphaspec.maps.file import ValueMap
from alphaspec.maps.groups import map_param_groups, map_sizes, match_names, plain_group
from alphaspec.maps.spec import DecayMapError


def lr_param_groups(model: torch.nn.Module, lr_map: ValueMap, lr: float, **optimizer_kwargs) -> list[dict]:
    """Param groups with each mapped module's learning rate (lr x its lr_scale), its bias in its group (as the
    releases put a module's parameters together), then every other parameter at lr."""
    _expect(lr_map, "lr")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise DecayMapError(f"learning rate {lr!r}: give a finite number above 0")
    lrs = {n: lr * float(s) for n, s in lr_map.values().items()}

    def rest(params: dict, taken: set) -> list[dict]:
        return plain_group(params, taken, lr=lr, **optimizer_kwargs)

    return map_param_groups(model, lrs, rest, key="lr", sizes=map_sizes(lr_map.modules), riders=True,
                            what="learning-rate map", **optimizer_kwargs)


@torch.no_grad()
def prune_model(model: torch.nn.Module, sparsity_map: ValueMap, *, permanent: bool = False) -> pd.DataFrame:
    """Prune each mapped matrix by magnitude to its sparsity (torch.nn.utils.prune.l1_unstructured: the
    round(s·n) smallest |w| of that matrix); returns name, asked and realised sparsity per matrix.
    permanent: fold the masks into the weights (prune.remove) rather than keeping weight_orig and weight_mask."""
    from torch.nn.utils import prune

    _expect(sparsity_map, "sparsity")
    params = dict(model.named_parameters())
    asked = match_names(sparsity_map.values(), params, model, what="sparsity map")
    modules = dict(model.named_modules())
    rows = []
    for name, s in asked.items():
        owner, _, attr = name.rpartition(".")
        module = modules.get(owner)
        if module is None or attr != "weight" or params[name].ndim != 2:
            raise DecayMapError(f"{name}: a sparsity map prunes the weight matrices of modules, not this tensor")
        prune.l1_unstructured(module, "weight", amount=float(s))
        realised = float((module.weight == 0).float().mean())
        if permanent:
            prune.remove(module, "weight")
        rows.append({"name": name, "sparsity": float(s), "realised": realised, "params": module.weight.numel()})
    return pd.DataFrame(rows)


def lora_config(rank_map: ValueMap, **lora_kwargs):
    """A peft.LoraConfig with each mapped module's rank (rank_pattern), the most common rank as r, and the
    modules whose rank is 0 left out of target_modules. lora_kwargs go to LoraConfig (lora_alpha, ...)."""
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise DecayMapError("lora_config needs peft: pip install peft") from e
    _expect(rank_map, "lora_rank")
    ranks = {m["name"].removesuffix(".weight"): int(m["rank"]) for m in rank_map.modules}
    used = {n: r for n, r in ranks.items() if r > 0}
    sizes = {m["name"].removesuffix(".weight"): m.get("params") for m in rank_map.modules}
    over = [n for n, r in used.items() if isinstance(sizes[n], int) and r * r > sizes[n]]
    if over:  # rank r of an (out, in) matrix needs r <= min(out, in) <= sqrt(out * in)
        raise DecayMapError(f"rank {used[over[0]]} of {over[0]} is larger than its matrix ({sizes[over[0]]} "
                            "parameters) allows")
    if not used:
        raise DecayMapError("every rank in the map is 0: no module gets an adapter")
    r = Counter(used.values()).most_common(1)[0][0]
    return LoraConfig(r=r, target_modules=sorted(used), rank_pattern={re.escape(n): k for n, k in used.items()},
                      **lora_kwargs)


def _expect(vmap, kind: str) -> None:
    if not isinstance(vmap, ValueMap) or vmap.kind != kind:
        found = getattr(vmap, "kind", type(vmap).__name__)
        raise DecayMapError(f"a map of {found} was given where a map of {kind} is needed")
