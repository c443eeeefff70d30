"""How spectra become module-wise decays: the AlphaDecay options, declared once (torch- and pandas-free).

`alphaspec decay-map`, `build_decay_map`, the `AlphaDecay` hook, `alphaspec train` and `compare` all
take their defaults and their checks from `DecaySpec`. The base decay w is not part of it: it comes
from the optimizer (the hook) or from --weight-decay.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

from .choices import ASSIGN, DECAY_METRICS, ESTIMATORS, PRESERVE
from .errors import AlphaspecError


class DecayMapError(AlphaspecError, ValueError):
    """A decay map that cannot be made, read or applied; the message says why in one line."""


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
            if getattr(self, name) not in allowed:
                raise DecayMapError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if len(self.ratio) != 2 or not all(isinstance(r, int | float) and math.isfinite(r) for r in self.ratio) \
                or not 0 <= self.ratio[0] < self.ratio[1]:
            raise DecayMapError(f"ratio {self.ratio!r}: need two finite numbers with 0 <= s1 < s2")
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
