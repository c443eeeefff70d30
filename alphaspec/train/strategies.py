"""Weight-decay and learning-rate strategies for the trainer, one class each (docs/math.md §3–5).

A strategy builds the optimizer's param groups, may change their `weight_decay` (or, tempbalance and
llr, their learning rate) around each optimizer step, and reports every decay it sets (the rows of
RUN/decay.csv) and every learning-rate multiplier (RUN/lr.csv).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from alphaspec.maps.assign import assign_decays
from alphaspec.maps.file import DecayMap
from alphaspec.maps.groups import (
    GROUP_NAMES,
    is_no_decay,
    is_tuned_candidate,
    match_names,
    one_group,
    own_groups,
    rest_groups,
    split_param_groups,
)
from alphaspec.maps.hook import AlphaDecay
from alphaspec.maps.lr_hook import AlphaLR
from alphaspec.maps.spec import DecayMapError
from alphaspec.sources.matrices import layer_index, module_type
from alphaspec.train.config import default_gap
from alphaspec.train.model import is_multiplier
from alphaspec.train.parallel import global_norm
from alphaspec.train.rundir import MAP_COPY


class Strategy:
    """Uniform decay: every tuned matrix gets `weight_decay`; the rest follow the default policy."""

    refreshes = False  # whether it recomputes its per-matrix decays now and then (the console says when)

    def __init__(self, cfg):
        self.cfg = cfg
        self.w = float(cfg.decay.weight_decay)
        self._rows: list[dict] = []

    # -- groups -------------------------------------------------------------------------------------------------
    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        params = dict(model.named_parameters())
        tuned = {n: p for n, p in params.items() if is_tuned_candidate(n, p)}
        self._log(0, {n: self.w for n in tuned}, dict.fromkeys(tuned, math.nan))
        return [one_group(list(tuned.values()), self.w, "matrices"), *self.other_groups(params, set(tuned))]

    def other_groups(self, params: dict[str, torch.nn.Parameter], taken: set[str], policy: str | None = None,
                     w_other: float | None = None) -> list[dict]:
        """Groups for the untuned parameters (policy `--default-decay`) and the learnable multipliers."""
        policy = policy or self.cfg.decay.default_decay
        if w_other is None:
            w_other = self.w if policy in ("all", "matrices") else float(policy)
        multipliers = {"weight_decay": self.cfg.decay.lrm_decay, "lr": self.cfg.optimizer.lr * self.cfg.decay.lrm_lr_mult}
        return rest_groups(params, taken, w_other, no_decay=is_no_decay if policy == "matrices" else None,
                           multiplier=is_multiplier, multiplier_settings=multipliers)

    # -- hooks around the optimizer step ------------------------------------------------------------------------
    def setup(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
        """Called once the optimizer and scheduler exist."""

    def before_step(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
        """Gradients are final (all-reduced, clipped); the optimizer has not stepped yet."""

    def after_step(self, step: int) -> None:
        """The optimizer has taken step `step` (1-based)."""

    def close(self) -> None:
        """Training ends: settle anything in flight."""

    def decay_rows(self) -> list[dict]:
        """Decays set since the last call: step, name, module, layer, metric, weight_decay."""
        rows, self._rows = self._rows, []
        return rows

    def lr_rows(self) -> list[dict]:
        """Learning-rate multipliers set since the last call: step, name, module, layer, metric, lr_scale."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _log(self, step: int, decays: dict[str, float], metric: dict[str, float]) -> None:
        self._rows += [{"step": step, "name": n, "module": module_type(n), "layer": layer_index(n),
                        "metric": metric.get(n, math.nan), "weight_decay": wd} for n, wd in decays.items()]


class StaticMap(Strategy):
    """AlphaDecay from a decay-map file (`alphaspec decay-map`): fixed decays, names checked against the model."""

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        copy = Path(self.cfg.run.out) / MAP_COPY  # the run's own copy (written when it started)
        dmap = DecayMap.load(copy if copy.is_file() else self.cfg.decay.decay_map)
        self.w = dmap.weight_decay
        matrices = {n: p for n, p in model.named_parameters() if not is_multiplier(n)}
        try:
            groups = dmap.param_groups(model, lambda params, taken: self.other_groups(
                params, taken, dmap.default_policy, dmap.default_weight_decay),
                candidates=lambda name: not is_multiplier(name))
            metric = match_names({m["name"]: m.get(dmap.metric, math.nan) for m in dmap.modules}, matrices, model)
        except DecayMapError as e:
            raise DecayMapError(f"{self.cfg.decay.decay_map}: {e}") from e
        resolved = {g["name"]: g["weight_decay"] for g in groups if g["name"] not in GROUP_NAMES}
        self._log(0, resolved, metric)
        return groups


class HookDriven(Strategy):
    """A strategy run by one of the library's hooks (AlphaDecay, AlphaLR): stepped after every optimizer step,
    its state the hook's, and the rows of each refresh handed over as they come (`_keep`)."""

    refreshes = True
    hook: AlphaDecay

    def after_step(self, step: int) -> None:
        self.hook.step()
        self._collect()

    def close(self) -> None:
        self.hook.close(apply=False)  # after the last step: a refresh still in flight would set values no step uses
        self._collect()

    def state_dict(self) -> dict:
        return self.hook.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.hook.load_state_dict(state)

    def _collect(self) -> None:
        self._keep(self.hook.drain_history())

    def _keep(self, rows: list[dict]) -> None:
        raise NotImplementedError


class Refreshed(HookDriven):
    """AlphaDecay recomputed from the live weights every `gap` steps (the library's AlphaDecay hook)."""

    def setup(self, model, optimizer, scheduler) -> None:
        c = self.cfg
        self.hook = AlphaDecay(model, optimizer, self.w, c.decay.spec(), gap=c.decay.gap,
                               warmup=c.decay.alphadecay_warmup, overlap=c.decay.overlap, scheduler=scheduler)
        if self.hook.history:  # warmup "init": the hook's own step-0 decays replace the uniform ones
            self._rows = [r for r in self._rows if r["name"] not in self.hook.tuned]
        self._collect()

    def _keep(self, rows: list[dict]) -> None:
        self._rows += rows


class RefreshedLR(HookDriven):
    """TempBalance or the layer-wise LR (--strategy tempbalance|llr): uniform decay, and learning rates per
    matrix recomputed from the live weights every `gap` steps (the library's AlphaLR hook)."""

    def setup(self, model, optimizer, scheduler) -> None:
        c = self.cfg
        self.hook = AlphaLR(model, optimizer, c.decay.lr_spec(), gap=c.decay.gap, warmup=c.decay.alphadecay_warmup,
                            overlap=c.decay.overlap, scheduler=scheduler, ease=c.decay.lr_ease)
        self._lrs: list[dict] = []
        self._collect()

    def lr_rows(self) -> list[dict]:
        rows, self._lrs = self._lrs, []
        return rows

    def _keep(self, rows: list[dict]) -> None:
        self._lrs += rows


class AWD(Strategy):
    """Adaptive weight decay (Ghiasi et al. 2023): λ_t = λ·‖∇θ‖/‖θ‖, smoothed λ̄ ← 0.1·λ̄ + 0.9·λ_t, for every decayed group."""

    def setup(self, model, optimizer, scheduler) -> None:
        self._rows = []  # one row per step, name "*": the decay every decayed group gets
        self.optimizer = optimizer  # its groups by index: a resumed run's optimizer.load_state_dict() replaces them
        self.indexes = [i for i, g in enumerate(optimizer.param_groups)
                        if g["weight_decay"] > 0 and g.get("name") != "multipliers"]
        self.params = clip_parameters(getattr(model, "module", model))  # the same set as the clipped grad norm
        self.smoothed = 0.0

    def before_step(self, step, model, optimizer, grad_norm) -> None:
        param_norm = global_norm(self.params)
        ratio = float(grad_norm) / max(float(param_norm), 1e-12)
        self.smoothed = 0.1 * self.smoothed + 0.9 * self.w * ratio
        for i in self.indexes:
            self.optimizer.param_groups[i]["weight_decay"] = self.smoothed
        self._rows.append({"step": step, "name": "*", "module": "*", "layer": None, "metric": ratio,
                               "weight_decay": self.smoothed})

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed}

    def load_state_dict(self, state: dict) -> None:
        self.smoothed = float(state.get("smoothed", 0.0))


class AdaDecay(Strategy):
    """AdaDecay (Nakamura & Hong 2019) as the paper's baseline: per-module decays from gradient norms
    ‖∇W_i‖_F at every `gap`-th step, assigned with the per-block sigmoid (docs/math.md §3, §5)."""

    refreshes = True

    def setup(self, model, optimizer, scheduler) -> None:
        model = getattr(model, "module", model)
        self.tuned = {n: p for n, p in model.named_parameters() if is_tuned_candidate(n, p)}
        self.optimizer = optimizer
        split_param_groups(optimizer, self.tuned, scheduler)

    def before_step(self, step, model, optimizer, grad_norm) -> None:
        if (step - 1) % self.cfg.decay.gap:
            return
        names = sorted(self.tuned)
        norms = torch.stack([global_norm([self.tuned[n].grad]) for n in names]).cpu().numpy()
        blocks = [layer_index(n) for n in names]
        spec = self.cfg.decay.spec(assign="sigmoid")
        wd = assign_decays(norms, self.w, ratio=spec.ratio, assign=spec.assign, blocks=blocks,
                           preserve_mean=spec.preserve_mean, sizes=[self.tuned[n].numel() for n in names])
        groups = own_groups(self.optimizer, self.tuned)  # looked up now: a resume replaces the group dicts
        for n, d in zip(names, wd, strict=True):
            groups[n]["weight_decay"] = float(d)
        self._log(step, dict(zip(names, map(float, wd), strict=True)), dict(zip(names, map(float, norms), strict=True)))


class Cautious(Strategy):
    """Cautious weight decay (Chen et al. 2025): decay only the coordinates where the optimizer's update and
    the weight agree in sign, θ ← θ − lr·λ·𝟙[sign(u) = sign(θ)]⊙θ (docs/math.md §5). The optimizer's own
    decay is set to 0 and the masked one applied after its step; u's sign is that of θ_before − θ_after."""

    def setup(self, model, optimizer, scheduler) -> None:
        self.optimizer = optimizer  # its groups by index: a resumed run's optimizer.load_state_dict() replaces them
        self.indexes = [i for i, g in enumerate(optimizer.param_groups)
                        if g["weight_decay"] > 0 and g.get("name") != "multipliers"]
        self.decays = [optimizer.param_groups[i]["weight_decay"] for i in self.indexes]
        for i in self.indexes:
            optimizer.param_groups[i]["weight_decay"] = 0.0
        self.before: list[list[torch.Tensor]] = []

    def before_step(self, step, model, optimizer, grad_norm) -> None:
        self.before = [[p.detach().clone() for p in self.optimizer.param_groups[i]["params"]] for i in self.indexes]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        kept = total = 0
        for i, wd, olds in zip(self.indexes, self.decays, self.before, strict=True):
            g = self.optimizer.param_groups[i]
            for p, old in zip(g["params"], olds, strict=True):
                agree = torch.sign(old - p) == torch.sign(old)  # the update -lr·u moved θ by old - p = lr·u
                p.sub_(g["lr"] * wd * agree * old)
                kept, total = kept + int(agree.sum()), total + agree.numel()
        self.before = []
        self._rows.append({"step": step, "name": "*", "module": "*", "layer": None, "metric": kept / max(total, 1),
                           "weight_decay": self.w})  # metric: the share of coordinates decayed


class MuP(Strategy):
    """muP (Yang et al. 2022) for this LLaMA under Adam-type optimizers: uniform decay, the hidden matrices
    learning at lr / m with m = width / --mup-base-width; the model carries muP's fixed multipliers
    (attention logits over d_head, output logits over m; docs/math.md §5)."""

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        groups = super().param_groups(model)  # the block matrices first, then the rest
        groups[0]["lr"] = self.cfg.optimizer.lr / mup_width_mult(self.cfg, model.config.hidden_size)
        return groups


def mup_width_mult(cfg, hidden_size: int) -> float:
    return hidden_size / cfg.model.mup_base_width


def make_strategy(cfg) -> Strategy:
    """The strategy object a TrainConfig asks for (its implied defaults filled in)."""
    cfg = cfg.settled()
    cfg = cfg.with_options(gap=cfg.decay.gap or default_gap(cfg.schedule.steps))
    if cfg.decay.strategy == "alphadecay":
        return StaticMap(cfg) if cfg.decay.decay_map else Refreshed(cfg)
    return {"uniform": Strategy, "lrm": Strategy, "awd": AWD, "adadecay": AdaDecay, "cautious": Cautious,
            "mup": MuP, "tempbalance": RefreshedLR, "llr": RefreshedLR}[cfg.decay.strategy](cfg)


def clip_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the global gradient-norm clipping sees: everything but the learnable multipliers (docs/math.md §5)."""
    return [p for n, p in model.named_parameters() if not is_multiplier(n) and p.requires_grad]

