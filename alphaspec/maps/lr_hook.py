"""AlphaLR: module-wise learning rates (TempBalance's or the layer-wise LR release's) recomputed from the live
weights every `gap` steps, on AlphaDecay's machinery (snapshot, overlapped solve, distributed share, groups).

    hook = AlphaLR(model, optimizer, method="tempbalance", gap=500, scheduler=scheduler)
    for batch in data:
        loss(model, batch).backward(); optimizer.step(); scheduler.step(); optimizer.zero_grad()
        hook.step()
"""

from __future__ import annotations

import re

import pandas as pd
import torch

from alphaspec.analysis.engine import analyze_tensors
from alphaspec.maps.build import build_map
from alphaspec.maps.groups import is_tuned_candidate, schedulers_of
from alphaspec.maps.hook import AlphaDecay, log
from alphaspec.maps.spec import DecaySpec, MapSpec, hook_settings_problem

LLR_EASE = 20  # the layer-wise LR release's linear_steps: each new LR is reached over this many steps


class AlphaLR(AlphaDecay):
    """Module-wise learning rates from the spectra of the live weights, refreshed every `gap` steps:
    TempBalance (method "tempbalance": every block matrix but the first, 0.5..1.5 x lr) or the layer-wise LR
    release ("llr": block matrices 1..3 x lr, embeddings and head at the top, matrices with fewer than 50
    eigenvalues at lr). spec: a MapSpec (method, ratio, assign, metric, estimator); keyword `options` set
    its fields. Each tuned matrix gets its own param group whose LR is its group's LR times its multiplier;
    with a scheduler (LambdaLR-style: lr = base_lr x factor, as the trainer's and transformers' are), the
    scheduler's base_lrs are scaled too, so the schedule goes on from the new LRs. ease: steps over which
    each refresh's multipliers are reached linearly from those in force (default: 20 for llr, as its release
    eases each new LR in; 0, at once, for tempbalance). gap, warmup, overlap, scheduler and config work as in
    AlphaDecay, and keep_history and drain_history() as there; `scales` holds the multipliers in force,
    `targets` those of the latest refresh.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: MapSpec | None = None, *,
                 gap: int = 500, warmup: str = "init", overlap: bool | str = "auto", scheduler=None,
                 config: dict | None = None, ease: int | None = None, keep_history: int | None = 100, **options):
        if problem := hook_settings_problem(gap=gap, warmup=warmup, keep_history=keep_history, ease=ease):
            raise ValueError(problem)
        self.lr_spec = (spec or MapSpec(**options)).settled("lr")
        self.ease = (LLR_EASE if self.lr_spec.method == "llr" else 0) if ease is None else ease
        self.targets: dict[str, float] = {}  # the latest refresh's multipliers (reached after `ease` steps)
        self._eased_from: dict[str, float] = {}
        self._ease_start = 0
        self._base: dict[str, float] = {}  # each tuned group's LR before any multiplier (its scheduler base)
        self._applied: dict[str, float] = {}  # the multiplier in each group now
        bare = getattr(model, "module", model)
        outer = [n for n, p in bare.named_parameters() if p.ndim == 2 and ("embed" in n or "head" in n)] \
            if self.lr_spec.method == "llr" else []  # the release tunes embeddings and head too (to the top LR)
        include = [f"^{re.escape(n)}$" for n, p in bare.named_parameters() if is_tuned_candidate(n, p)] + \
            [f"^{re.escape(n)}$" for n in outer]
        super().__init__(model, optimizer, 1.0, DecaySpec(metric=self.lr_spec.metric, estimator=self.lr_spec.estimator),
                         gap=gap, warmup=warmup, overlap=overlap, scheduler=scheduler, config=config, include=include,
                         keep_history=keep_history)

    @property
    def scales(self) -> dict[str, float]:
        """The learning-rate multiplier in force per tuned parameter."""
        return self.decays

    def step(self) -> None:
        """Call once after every optimizer.step() (and scheduler.step())."""
        super().step()
        if self.targets and self._eased_from:
            self._ease_towards()

    def _ease_towards(self) -> None:
        """The multipliers in force: from those of the last refresh's start to its targets, linearly in steps."""
        frac = 1.0 if self.ease == 0 else min(1.0, (self.step_count - self._ease_start) / self.ease)
        self.decays = {**self.decays, **{n: self._eased_from.get(n, 1.0) + (t - self._eased_from.get(n, 1.0)) * frac
                                         for n, t in self.targets.items()}}
        if frac >= 1.0:
            self._eased_from = {}
        self._set(self.decays)

    def _analyze(self, snapshot: dict[str, torch.Tensor]) -> pd.DataFrame:
        return analyze_tensors(snapshot, self.lr_spec.estimator, config=self.config, split_fused=False,
                               farms=self.lr_spec.metric == "alpha_farms")

    def _apply(self, table: pd.DataFrame | str, started: int) -> None:
        if isinstance(table, str):
            self.failed_refreshes += 1
            if self.failed_refreshes == 1:
                log.warning(f"AlphaLR: the refresh of step {started} failed ({table}); keeping the learning rates in "
                            "force (later failures are counted in failed_refreshes, not reported)")
            return
        vmap = build_map(table, "lr", self.lr_spec)
        metric = self.lr_spec.metric
        self.targets = vmap.values()
        self._eased_from, self._ease_start = dict(self.decays), self.step_count  # the first map eases in from 1
        self._ease_towards()
        self.metrics = {m["name"]: m[metric] for m in vmap.modules}
        self.modules = {m["name"]: m["module"] for m in vmap.modules}
        self.staleness = self.step_count - started
        self.refreshes += 1
        self._history.append([{"step": self.step_count, "name": m["name"], "module": m["module"], "layer": m["layer"],
                               "metric": m[metric], "lr_scale": m["lr_scale"]} for m in vmap.modules])

    def state_dict(self) -> dict:
        """AlphaDecay's state, with each group's LR before its multiplier and the multiplier it holds now."""
        return {**super().state_dict(), "base_lrs": dict(self._base), "applied": dict(self._applied),
                "targets": dict(self.targets), "eased_from": dict(self._eased_from), "ease_start": self._ease_start}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict() after the optimizer's and scheduler's own (their LRs already carry the multipliers)."""
        self._base, self._applied = dict(state["base_lrs"]), dict(state["applied"])
        self.targets, self._eased_from = dict(state.get("targets", {})), dict(state.get("eased_from", {}))
        self._ease_start = int(state.get("ease_start", 0))
        super().load_state_dict(state)

    def merge_groups(self) -> None:
        """The groups as they were given, at their LRs without the multipliers (and the scheduler's bases with
        them): a checkpoint an ordinary optimizer loads; `split_groups()` puts the multipliers back."""
        self._set(dict.fromkeys(self._applied, 1.0))
        self._applied = {}  # the groups hold no multiplier now: state_dict() says so, and split_groups() applies them
        super().merge_groups()

    def summary(self) -> dict[str, float]:
        """The latest refresh by module type: mean metric and mean multiplier (`alpha/att.q`, `lr_scale/mlp.up`)."""
        return {k.replace("weight_decay/", "lr_scale/"): v for k, v in super().summary().items()}

    def _set(self, scales: dict[str, float]) -> None:
        groups = self._live_groups()
        index = {id(g): i for i, g in enumerate(self.optimizer.param_groups)}
        for name, scale in scales.items():
            group = groups.get(name)
            if group is None:
                continue
            base = self._base.setdefault(name, float(group.get("initial_lr", group["lr"])))
            group["lr"] = group["lr"] * scale / self._applied.get(name, 1.0)
            self._applied[name] = scale
            if "initial_lr" in group:
                group["initial_lr"] = base * scale
            for each in schedulers_of(self.scheduler):  # the schedulers' bases, so the schedule goes on from them
                if isinstance(getattr(each, "base_lrs", None), list):
                    each.base_lrs[index[id(group)]] = base * scale
