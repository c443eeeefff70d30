"""The map files: what a map holds, its JSON schema, reading it back checked (JSON only, no torch).

`MapFile` is what every map holds and how it is saved. A decay map (`DecayMap`, schema
alphaspec.decay-map/1) holds weight decays; a `ValueMap` (alphaspec.map/1) holds per-module values of
another kind: learning-rate multipliers, sparsities or LoRA ranks. Each is refused, in one line, where
the other kind is read. They apply to a model through maps/groups.py and maps/apply.py (imported when
called).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from alphaspec._version import __version__
from alphaspec.choices import ASSIGN, DECAY_METRICS, ESTIMATORS, MAP_KINDS, PRESERVE
from alphaspec.errors import AlphaspecError, check_input_file, os_reason, parse_json
from alphaspec.files import atomic_write
from alphaspec.maps.spec import DecayMapError, DecaySpec

if TYPE_CHECKING:
    import torch

SCHEMA = "alphaspec.decay-map/1"
MAP_SCHEMA = "alphaspec.map/1"  # maps of the other kinds
VALUE_KEYS = {"weight_decay": "weight_decay", "lr": "lr_scale", "sparsity": "sparsity", "lora_rank": "rank"}
POLICIES = ("all", "matrices", "value")
DEFAULT_RATIO = DecaySpec.ratio


@dataclass(kw_only=True)
class MapFile:
    """What every map file holds: per-module entries (each with its name, metric and value), the metric and
    estimator behind them, where they came from. Saved as JSON in the field order `FIELDS`."""

    modules: list[dict]
    kind: str
    metric: str = "alpha"
    estimator: str = "median"
    source: str = ""
    alphaspec: str = __version__
    schema: str = MAP_SCHEMA
    notes: list[str] = field(default_factory=list, compare=False)  # what building it found (not saved in the file)
    FIELDS: ClassVar[tuple[str, ...]] = ()

    @property
    def key(self) -> str:
        """The field holding each module's value: weight_decay, lr_scale, sparsity or rank."""
        return VALUE_KEYS[self.kind]

    def values(self) -> dict[str, float]:
        return {m["name"]: m[self.key] for m in self.modules}

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in self.FIELDS}

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


@dataclass(kw_only=True)
class DecayMap(MapFile):
    """Module-wise weight decays for named parameters, plus the decay of every other parameter."""

    weight_decay: float
    kind: str = "weight_decay"  # (a map without the field, written before it existed, is one)
    schema: str = SCHEMA
    ratio: tuple[float, float] = DecaySpec.ratio
    assign: str = DecaySpec.assign
    estimator: str = DecaySpec.estimator
    metric: str = DecaySpec.metric
    preserve_mean: str = DecaySpec.preserve_mean
    default_policy: str = "all"
    default_weight_decay: float = 0.0
    paper_compat: bool = False  # made as the AlphaDecay release does (maps/paper.py): biases follow their weights
    FIELDS: ClassVar[tuple[str, ...]] = (
        "schema", "kind", "alphaspec", "source", "estimator", "metric", "assign", "weight_decay", "ratio",
        "preserve_mean", "default_policy", "default_weight_decay", "paper_compat", "modules")

    def decays(self) -> dict[str, float]:
        return {m["name"]: float(m["weight_decay"]) for m in self.modules}

    @classmethod
    def load(cls, path: str | Path) -> DecayMap:
        """Read and validate a map file; anything wrong raises DecayMapError with one line."""
        return cls.from_json(_read_json(path, "decay map"), str(path))

    @classmethod
    def from_json(cls, doc: dict, where: str = "decay map") -> DecayMap:
        """Validate a parsed map: every decay a finite number >= 0, names unique, the ratio two numbers."""
        if not isinstance(doc, dict) or "schema" not in doc:
            raise DecayMapError(f"{where}: not an alphaspec decay map (no 'schema' field)")
        kind = doc.get("kind", "weight_decay")
        if doc["schema"] not in (SCHEMA, MAP_SCHEMA):
            raise DecayMapError(f"{where}: unsupported schema {doc['schema']!r}; this alphaspec reads {SCHEMA!r}")
        if kind != "weight_decay" or doc["schema"] != SCHEMA:
            raise DecayMapError(f"{where}: a map of {str(kind)[:40]!r}, not of weight decays; use it where "
                                f"{str(kind)[:40]!r} maps are read")

        def parse() -> DecayMap:
            mods = _modules(doc, lambda m: {"weight_decay": _decay(m["weight_decay"], m["name"])})
            ratio = doc.get("ratio", DEFAULT_RATIO)
            if not isinstance(ratio, list | tuple) or len(ratio) != 2:
                raise TypeError("'ratio' must be two numbers")
            return cls(modules=mods, weight_decay=_decay(doc["weight_decay"], "weight_decay"),
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

        dmap = _parsed(parse, where, "decay map")
        if dmap.default_policy not in POLICIES:
            raise DecayMapError(f"{where}: unknown default_policy {dmap.default_policy!r}")
        _choices(where, metric=(dmap.metric, DECAY_METRICS), estimator=(dmap.estimator, ESTIMATORS),
                 assign=(dmap.assign, ASSIGN), preserve_mean=(dmap.preserve_mean, PRESERVE))
        return dmap

    def param_groups(self, model: torch.nn.Module, rest: Callable[[dict, set], list[dict]] | None = None, *,
                     candidates: Callable[[str], bool] | None = None, **optimizer_kwargs) -> list[dict]:
        """Optimizer param groups (maps.groups.map_param_groups): one per mapped parameter with its decay (and
        with --paper-compat its bias, as the release decays it), then the other parameters: by default at the
        map's default decay under its policy, or as `rest(params, taken)` builds them (the trainer's
        multipliers). Missing or unexpected names raise, listed."""
        from alphaspec.maps.groups import is_no_decay, map_param_groups, map_sizes, rest_groups

        def default_rest(params: dict, taken: set) -> list[dict]:
            return rest_groups(params, taken, self.default_weight_decay,
                               no_decay=is_no_decay if self.default_policy == "matrices" else None, **optimizer_kwargs)

        return map_param_groups(model, self.decays(), rest or default_rest, sizes=map_sizes(self.modules),
                                riders=self.paper_compat, candidates=candidates, **optimizer_kwargs)


@dataclass(kw_only=True)
class ValueMap(MapFile):
    """Per-module values of one kind (lr: multipliers of the base LR, sparsity: fractions pruned, lora_rank:
    ranks) that a method made from a spectral metric. Modules a method leaves alone are listed with the
    neutral value (lr_scale 1) and a note."""

    method: str
    settings: dict = field(default_factory=dict)  # the method's settings: ratio and assign, target and epsilon, ...
    FIELDS: ClassVar[tuple[str, ...]] = (
        "schema", "kind", "method", "alphaspec", "source", "estimator", "metric", "settings", "modules")

    @classmethod
    def load(cls, path: str | Path, kind: str | None = None) -> ValueMap:
        """Read and check a map file (of `kind` when given); anything wrong raises DecayMapError with one line."""
        return cls.from_json(_read_json(path, "map"), str(path), kind)

    @classmethod
    def from_json(cls, doc, where: str = "map", kind: str | None = None) -> ValueMap:
        if not isinstance(doc, dict) or "schema" not in doc:
            raise DecayMapError(f"{where}: not an alphaspec map (no 'schema' field)")
        found = doc.get("kind", "weight_decay")
        if doc["schema"] not in (SCHEMA, MAP_SCHEMA) or found not in MAP_KINDS:
            raise DecayMapError(f"{where}: unsupported map (schema {str(doc['schema'])[:40]!r}, kind "
                                f"{str(found)[:40]!r}); this alphaspec reads {MAP_SCHEMA!r} of {', '.join(MAP_KINDS[1:])}")
        if found == "weight_decay" or doc["schema"] == SCHEMA:
            raise DecayMapError(f"{where}: a map of weight decays, where a map of {kind or 'lr, sparsity or lora_rank'} "
                                "is read (use it with --decay-map or DecayMap.load)")
        if kind is not None and found != kind:
            raise DecayMapError(f"{where}: a map of {found}, not of {kind}")
        key = VALUE_KEYS[found]

        def parse() -> ValueMap:
            mods = _modules(doc, lambda m: {key: _value(found, m[key], m["name"])})
            settings = doc.get("settings", {})
            if not isinstance(settings, dict):
                raise TypeError("'settings' must be an object")
            return cls(kind=found, method=_text(doc["method"], "method"), modules=mods,
                       metric=_text(doc.get("metric", "alpha"), "metric"),
                       estimator=_text(doc.get("estimator", "median"), "estimator"), settings=settings,
                       source=str(doc.get("source", "")), alphaspec=str(doc.get("alphaspec", "")))

        vmap = _parsed(parse, where, "map")
        _choices(where, metric=(vmap.metric, DECAY_METRICS), estimator=(vmap.estimator, ESTIMATORS))
        return vmap


def _choices(where: str, **fields: tuple[str, tuple[str, ...]]) -> None:
    """Each named field of a map holds one of its choices (a metric that names no column broke every figure)."""
    for name, (value, choices) in fields.items():
        if value not in choices:
            raise DecayMapError(f"{where}: {name} {value[:60]!r} is not one of {', '.join(choices)}")


def _modules(doc: dict, values) -> list[dict]:
    """A map's module entries, each with its name and the checked value(s) `values(entry)` returns."""
    if not isinstance(doc["modules"], list) or not all(isinstance(m, dict) for m in doc["modules"]):
        raise TypeError("'modules' must be a list of objects")
    if not doc["modules"]:
        raise ValueError("'modules' lists no matrices")
    return [{**m, "name": _text(m["name"], "name"), **values(m)} for m in doc["modules"]]


def _parsed(parse, where: str, what: str):
    """parse() with a missing field, a wrong type or a bad value as one line, and every name listed once."""
    try:
        parsed = parse()
    except KeyError as e:
        raise DecayMapError(f"{where}: malformed {what} (missing field {e})") from e
    except (TypeError, ValueError) as e:
        raise DecayMapError(f"{where}: malformed {what} ({e})") from e
    repeated = sorted(n for n, k in Counter(m["name"] for m in parsed.modules).items() if k > 1)
    if repeated:
        raise DecayMapError(f"{where}: names listed more than once: {', '.join(repeated[:5])}")
    return parsed


def load_any(path: str | Path):
    """A map file of any kind: a DecayMap for weight decays, else a ValueMap."""
    doc = _read_json(path, "map")
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA and doc.get("kind", "weight_decay") == "weight_decay":
        return DecayMap.from_json(doc, str(path))
    return ValueMap.from_json(doc, str(path))


def _read_json(path: str | Path, what: str):
    try:
        check_input_file(path, what)
        return parse_json(Path(path).read_text(encoding="utf-8"))
    except AlphaspecError as e:
        raise DecayMapError(str(e)) from e
    except OSError as e:
        raise DecayMapError(f"{path}: cannot read ({os_reason(e)})") from e
    except ValueError as e:  # bad JSON or bad UTF-8
        raise DecayMapError(f"{path}: not valid JSON ({e})") from e


def _value(kind: str, value, name) -> float | int:
    """A module's value read from a map: lr_scale finite >= 0, sparsity in [0, 1), rank an integer >= 0."""
    if kind == "lora_rank":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"rank of {name} is {json.dumps(value)}; it must be an integer >= 0")
        return value
    number = _number(value, f"{VALUE_KEYS[kind]} of {name}")
    ok = 0 <= number < 1 if kind == "sparsity" else math.isfinite(number) and number >= 0
    if not ok:
        bound = "in [0, 1)" if kind == "sparsity" else "a finite number >= 0"
        raise ValueError(f"{VALUE_KEYS[kind]} of {name} is {value!r}; it must be {bound}")
    return number


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
