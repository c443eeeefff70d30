"""How spectra become module-wise settings: the options, declared once, and their only validators
(torch- and pandas-free).

`alphaspec decay-map`, `build_decay_map`, the `AlphaDecay` hook, `alphaspec train` and `compare` all
take their defaults and their checks from `DecaySpec`; the CLI's callbacks and `TrainConfig.validate`
ask `ratio_problem`, `policy_problem` and `choice_problem` rather than checking again. The base decay
w is not part of the spec: it comes from the optimizer (the hook) or from --weight-decay.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field, fields, replace

from alphaspec.choices import ALPHADECAY_WARMUPS, ASSIGN, DECAY_METRICS, DEFAULT_POLICIES, ESTIMATORS, PRESERVE
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


@dataclass(frozen=True)
class DecaySpec:
    """ratio: linear assignment spans s1·w .. s2·w. assign: how metric values become decays. metric: the
    spectral metric behind the decays (alpha by default). preserve_mean: rescale so that the plain
    ("modules") or parameter-weighted ("params") mean decay is w. estimator: how xmin is chosen.
    include/exclude: regexes choosing the tuned tensors (default: every matrix inside a transformer
    block). paper_compat: the AlphaDecay release's module choice and formulas (docs/decay.md)."""

    ratio: tuple[float, float] = (0.67, 3.0)
    assign: str = "linear"
    metric: str = "alpha"
    preserve_mean: str = "none"
    estimator: str = "median"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    paper_compat: bool = False

    def __post_init__(self) -> None:
        # lists become tuples, so that a spec can be built from JSON or CLI values and stays hashable
        for name in ("ratio", "include", "exclude"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        for name, allowed in (("assign", ASSIGN), ("metric", DECAY_METRICS), ("preserve_mean", PRESERVE),
                              ("estimator", ESTIMATORS)):
            if problem := choice_problem(name, getattr(self, name), allowed):
                raise DecayMapError(problem)
        if problem := ratio_problem(self.ratio):
            raise DecayMapError(f"ratio {self.ratio!r}: {problem}")
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
