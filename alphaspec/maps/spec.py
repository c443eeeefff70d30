"""How spectra become module-wise settings: the specs, declared once, and their only validators
(torch- and pandas-free).

`Spec` holds what every alpha-guided map is made with (the metric, the estimator, the span and
assignment, the release's own way); `DecaySpec` adds AlphaDecay's settings with its defaults, `MapSpec`
those of the learning-rate, sparsity and LoRA-rank methods, None standing for the method's published
value. `alphaspec map` and `decay-map`, the builders, the hooks, the Trainer callbacks and `alphaspec
train` take their defaults and checks from here; the CLI's callbacks and `TrainConfig.validate` ask
`ratio_problem`, `policy_problem` and `choice_problem` rather than checking again. The base decay w is
not part of a spec: it comes from the optimizer (the hooks) or from --weight-decay.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, fields, replace

from alphaspec.choices import (
    ALPHADECAY_WARMUPS,
    ASSIGN,
    DECAY_METRICS,
    DEFAULT_POLICIES,
    ESTIMATORS,
    LR_ASSIGN,
    MAP_KINDS,
    PRESERVE,
)
from alphaspec.errors import AlphaspecError


class DecayMapError(AlphaspecError, ValueError):
    """A decay map that cannot be made, read or applied; the message says why in one line."""


def ratio_problem(ratio) -> str | None:
    """What is wrong with a (s1, s2) span, or None: two finite numbers with 0 <= s1 < s2."""
    ok = (isinstance(ratio, tuple | list) and len(ratio) == 2
          and all(isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) for r in ratio)
          and 0 <= ratio[0] < ratio[1])
    return None if ok else "need two finite numbers with 0 <= S1 < S2"


def policy_problem(value: str) -> str | None:
    """What is wrong with a default-decay policy (all, matrices, or a finite number >= 0), or None."""
    if value in DEFAULT_POLICIES:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "use all, matrices or a number"
    return None if math.isfinite(number) and number >= 0 else "a decay must be a finite number >= 0"


def _whole(value, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def hook_settings_problem(gap=500, warmup="init", keep_history=100, ease=None) -> str | None:
    """What is wrong with a hook's schedule settings (None when nothing): the one check the hooks and their
    Trainer callbacks share, so a callback refuses them where it is made."""
    checks = [not _whole(gap, 1) and f"gap must be a whole number of steps >= 1, got {gap!r}",
              keep_history is not None and not _whole(keep_history, 1)
              and f"keep_history must be a whole number of refreshes >= 1 (or None: all), got {keep_history!r}",
              warmup not in ALPHADECAY_WARMUPS and f"warmup must be 'init' or 'uniform', got {warmup!r}",
              ease is not None and not _whole(ease, 0) and f"ease must be a whole number of steps >= 0, got {ease!r}"]
    return next((c for c in checks if c), None)


def choice_problem(name: str, value: str, allowed: tuple[str, ...]) -> str | None:
    """What is wrong with a choice (not one of `allowed`), or None."""
    return None if value in allowed else f"unknown {name} {value!r}; choose one of {', '.join(allowed)}"


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What every alpha-guided map is made with. metric: the spectral metric behind the values. estimator:
    how xmin is chosen. ratio: a linear assignment spans s1..s2 (x w or x lr). assign: how metric values
    become values. paper_compat: as the method's release makes them (docs/decay.md, docs/maps.md)."""

    metric: str = "alpha"
    estimator: str | None = None
    ratio: tuple[float, float] | None = None
    assign: str | None = None
    paper_compat: bool = False

    def shared_problem(self, assignments: tuple[str, ...], what: str) -> str | None:
        """What is wrong with the settings every spec has (None when nothing): one check for both kinds."""
        checks = [choice_problem("metric", self.metric, DECAY_METRICS),
                  self.estimator is not None and choice_problem("estimator", self.estimator, ESTIMATORS),
                  self.assign is not None and choice_problem(what, self.assign, assignments),
                  self.ratio is not None and (p := ratio_problem(self.ratio)) and f"ratio {tuple(self.ratio)!r}: {p}"]
        return next((c for c in checks if c), None)


@dataclass(frozen=True, kw_only=True)
class DecaySpec(Spec):
    """AlphaDecay's spec, with its defaults. preserve_mean: rescale so that the plain ("modules") or
    parameter-weighted ("params") mean decay is w. include/exclude: regexes choosing the tuned tensors
    (default: every matrix inside a transformer block). paper_compat: the AlphaDecay release's module choice
    and formulas."""

    ratio: tuple[float, float] = (0.67, 3.0)
    assign: str = "linear"
    estimator: str = "median"
    preserve_mean: str = "none"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # lists become tuples, so that a spec can be built from JSON or CLI values and stays hashable
        for name in ("ratio", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        problem = (self.shared_problem(ASSIGN, "assign") or choice_problem("preserve_mean", self.preserve_mean, PRESERVE)
                   or (self.estimator is None and "estimator None; choose one of " + ", ".join(ESTIMATORS)))
        if problem:
            raise DecayMapError(problem)
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as e:
                raise DecayMapError(f"{pattern!r} is not a valid regular expression ({e})") from e

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def decay_spec(spec: DecaySpec | None = None, options: dict | None = None) -> DecaySpec:
    """`spec` with `options` (DecaySpec fields by name) set; a misspelt option is a TypeError, as in a call."""
    options = options or {}
    unknown = set(options) - set(DecaySpec.option_names())
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(sorted(unknown))}; a DecaySpec has "
                        f"{', '.join(DecaySpec.option_names())}")
    return replace(spec, **options) if spec is not None else DecaySpec(**options)


# -- the alpha-guided methods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One released method: the kind of value it makes, alphaspec's estimator for it, its published settings,
    and the estimator its release fits with (--paper-compat)."""

    name: str
    kind: str
    estimator: str
    summary: str
    defaults: dict = field(default_factory=dict)
    release_estimator: str = "median"
    release_dtype: str | None = None  # the dtype the release loads the weights in before their spectra (--paper-compat)


METHODS = {
    "alphadecay": Method("alphadecay", "weight_decay", "median", "AlphaDecay: weight decay per block matrix, "
                         "s1..s2 x w (decay-map)"),
    "tempbalance": Method("tempbalance", "lr", "median", "TempBalance: LR per Linear, 0.5..1.5 x lr, first and last "
                          "Linear left at lr", {"ratio": (0.5, 1.5), "assign": "linear"}),
    "llr": Method("llr", "lr", "median", "layer-wise LR: LR per Linear and embedding, 1..3 x lr, embeddings and "
                  "head at the top", {"ratio": (1.0, 3.0), "assign": "linear"}),
    "alphapruning": Method("alphapruning", "sparsity", "fix-finger", "AlphaPruning: sparsity per block Linear in "
                           "[1-eps, 1+eps] x target, parameter-weighted mean = target",
                           {"target": 0.5, "epsilon": 0.3, "block_wise": True}, "fix-finger-legacy", "float16"),
    "alphalora": Method("alphalora", "lora_rank", "fix-finger", "AlphaLoRA: LoRA rank (or experts) per block "
                        "proportional to mean alpha^beta, integers summing to the budget",
                        {"beta": 2.5}, "fix-finger-legacy", "float16"),
}
KIND_METHODS = {kind: tuple(n for n, m in METHODS.items() if m.kind == kind)  # each kind's methods, first the default
                for kind in dict.fromkeys(m.kind for m in METHODS.values())}

SETTINGS_OF = {"ratio": ("lr", "weight_decay"), "assign": ("lr", "weight_decay"), "target": ("sparsity",),
               "epsilon": ("sparsity",), "block_wise": ("sparsity",), "budget": ("lora_rank",),
               "beta": ("lora_rank",)}  # the kinds each setting shapes; the others leave it None


@dataclass(frozen=True, kw_only=True)
class MapSpec(Spec):
    """How a map of learning rates, sparsities or LoRA ranks is made; None takes the method's published value.

    method: tempbalance or llr (lr), alphapruning (sparsity), alphalora (lora_rank). ratio/assign (lr):
    multipliers span s1..s2 x lr, by linear, sqrt, log2, step or sigmoid. target/epsilon/block_wise
    (sparsity): the parameter-weighted mean sparsity, the spread [1-eps, 1+eps] x target, block means
    first. budget/beta (lora_rank): the ranks' total (default 5 per block) and the exponent on alpha.
    paper_compat: fit with the release's own estimator (AlphaPruning's and AlphaLoRA's fix-finger window
    in mixed units, fix-finger-legacy); the formulas are the releases' either way."""

    method: str | None = None
    target: float | None = None
    epsilon: float | None = None
    block_wise: bool | None = None
    budget: int | None = None
    beta: float | None = None

    def problem(self, kind: str) -> str | None:
        """What is wrong with these settings for a map of `kind`, or None (the only place they are checked)."""
        if kind not in KIND_METHODS:
            return choice_problem("map kind", kind, MAP_KINDS)
        method = self.method or KIND_METHODS[kind][0]
        if method not in KIND_METHODS[kind]:
            return f"method {method!r} makes no {kind} map; for {kind} choose {', '.join(KIND_METHODS[kind])}"
        release = METHODS[method].release_estimator
        foreign = [name for name, owners in SETTINGS_OF.items() if kind not in owners and getattr(self, name) is not None]
        checks = [foreign and f"{foreign[0].replace('_', '-')} is a setting of {' and '.join(SETTINGS_OF[foreign[0]])} "
                  f"maps; {kind} maps have no use for it",
                  self.paper_compat and self.estimator not in (None, release)
                  and f"--paper-compat fits with the release's estimator ({release}), not {self.estimator}: leave out -e",
                  self.shared_problem(*((ASSIGN, "weight-decay assignment") if kind == "weight_decay"
                                        else (LR_ASSIGN, "LR assignment"))),
                  self.ratio is not None and kind == "lr" and not self.ratio[0] > 0
                  and f"ratio {tuple(self.ratio)}: a learning-rate multiplier of 0 freezes a matrix; give S1 > 0",
                  self.target is not None and not (isinstance(self.target, int | float) and 0 < self.target < 1)
                  and f"target sparsity {self.target!r}: give a number between 0 and 1",
                  self.epsilon is not None and not (isinstance(self.epsilon, int | float) and 0 <= self.epsilon < 1)
                  and f"epsilon {self.epsilon!r}: give a number in [0, 1)",
                  self.budget is not None and not (isinstance(self.budget, int) and self.budget > 0)
                  and f"budget {self.budget!r}: give a whole number above 0",
                  self.beta is not None and not (isinstance(self.beta, int | float) and math.isfinite(self.beta))
                  and f"beta {self.beta!r}: give a finite number"]
        return next((c for c in checks if c), None)

    def settled(self, kind: str) -> MapSpec:
        """These settings with the method's published values filled in (checked first)."""
        if problem := self.problem(kind):
            raise DecayMapError(problem)
        method = METHODS[self.method or KIND_METHODS[kind][0]]
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        estimator = method.release_estimator if self.paper_compat else method.estimator
        return MapSpec(**{**method.defaults, "estimator": estimator, **given, "method": method.name})
