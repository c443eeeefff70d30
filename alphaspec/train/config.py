"""Every setting of `alphaspec train`, each with its default and help written once (torch-free).

`TrainConfig` holds one dataclass per section (model, data, optimizer, schedule, decay, run,
hardware), as torchtitan's JobConfig does. Each field is one command-line option, `--lr` for
`cfg.optimizer.lr`: option names are flat and unique, and `TrainConfig.of(lr=1e-3)` /
`cfg.flat()` speak them (run.json records `flat()`). The CLI is generated from these fields
(cli/train.py): a field's metadata gives its help, flags, bounds and choices. `validate()` only
checks; `settled()` fills the defaults that depend on other settings.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

from alphaspec.choices import (
    ALPHADECAY_WARMUPS,
    ASSIGN,
    DECAY_METRICS,
    ESTIMATORS,
    LR_ASSIGN,
    LR_STRATEGIES,
    MODELS,
    MULTIPLIERS,
    MUON_LR_ADJUSTMENTS,
    OPTIMIZERS,
    PACKINGS,
    PRECISIONS,
    PRESERVE,
    REPORT_TO,
    SHARDINGS,
    STRATEGIES,
)
from alphaspec.errors import AlphaspecError
from alphaspec.maps.spec import DecaySpec, policy_problem, ratio_problem


class ConfigError(AlphaspecError, ValueError):
    """Options that contradict each other or name something that does not exist."""


class MissingExtra(AlphaspecError):
    """An option needs a package this environment lacks (exit 1: the options are fine)."""


def option(default, help: str = "", *, key: str = "", flags: tuple[str, ...] = (), min: float | None = None,
           max: float | None = None, choices: tuple[str, ...] = (), kind: str = "", metavar: str = "",
           cli: bool = True, incidental: bool = False, applies: Callable[[dict], bool] | None = None,
           recorded: bool = False):
    """A config field with what its CLI option needs. key: the option's name when it is not the field's
    (`--model` for `model.name`). kind: "path" (a file or directory), "finite" (a float that must be
    finite), "ratio", "policy" (all, matrices or a number). incidental: the option cannot change what a
    run learns (where it runs, its seed, how often it logs): runs that differ only in incidental options
    are replicates of one setting (`compare`). applies: given the run's flat settings, whether the option
    takes effect on training at all (Muon's options only with --optimizer muon); None: always. recorded: the
    option also shapes what every run records (the estimator fits alphas.csv), so it is never without effect."""
    meta = {"help": help, "key": key, "flags": flags, "min": min, "max": max, "choices": choices, "kind": kind,
            "metavar": metavar, "cli": cli, "incidental": incidental, "applies": applies, "recorded": recorded}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


def _muon(c: dict) -> bool:
    return c["optimizer"] == "muon"


def _mup(c: dict) -> bool:
    return c["strategy"] == "mup"


def _own_bpe(c: dict) -> bool:
    """A BPE trained on the data (a given tokenizer fixes the vocabulary)."""
    return c["tokenizer"] is None


def _alphadecay(c: dict) -> bool:
    return c["strategy"] == "alphadecay"


def _refreshed(c: dict) -> bool:
    """Spectra of the live weights refreshed into settings: AlphaDecay (not from a static --decay-map),
    TempBalance or the layer-wise LR."""
    return (c["strategy"] == "alphadecay" and not c["decay_map"]) or c["strategy"] in LR_STRATEGIES


def _lr_map(c: dict) -> bool:
    return c["strategy"] in LR_STRATEGIES


def _assigned(c: dict) -> bool:
    """A strategy that maps a metric to decays (AlphaDecay refreshed, AdaDecay)."""
    return (c["strategy"] == "alphadecay" and not c["decay_map"]) or c["strategy"] == "adadecay"


def _refreshing(c: dict) -> bool:
    """A strategy that recomputes its decays (or learning rates) every --gap steps."""
    return _refreshed(c) or c["strategy"] == "adadecay"


def _multipliers(c: dict) -> bool:
    return c["multipliers"] != "none"


@dataclass
class ModelOptions:
    TITLE: ClassVar[str] = "Model"
    name: str = option("tiny", "GaLore's LLaMA shapes.", key="model", choices=MODELS)
    multipliers: str = option("none", "Learnable multipliers (strategy lrm: vector).", choices=MULTIPLIERS)
    mup_base_width: int = option(256, "Strategy mup: the width whose learning rate --lr is; wider models' hidden "
                                 "matrices learn at lr x base/width.", min=1, applies=_mup)


@dataclass
class DataOptions:
    TITLE: ClassVar[str] = "Data"
    sources: list[str] = option([], "Text files, .jsonl(.gz/.zst), .parquet, hf:NAME[:CONFIG[:SPLIT]], token files "
                                "(.bin, .npy), directories of them, or a token cache (default: the bundled "
                                "Shakespeare).", key="data", metavar="SOURCE")
    val_sources: list[str] = option([], "Held-out data for evaluation, as --data (default: --val-fraction of the "
                                    "documents).", key="val_data", metavar="SOURCE")
    val_fraction: float = option(0.05, "Share of the documents held out when there is no --val-data.", min=0.0,
                                 max=0.5, kind="finite")
    text_field: str = option("text", "The text field of JSON records, Parquet rows and datasets.", metavar="NAME")
    tokenizer: str | None = option(None, "A tokenizer.json, a directory with one, or a hub id such as gpt2 or "
                                   "t5-base (default: train a byte-level BPE on the data).", metavar="TOKENIZER")
    vocab_size: int = option(4096, "Vocabulary of the trained tokenizer (at most 1,048,576).", min=256, max=1 << 20,
                             applies=_own_bpe)
    seq_len: int = option(128, "Tokens per sequence.", min=2)
    packing: str = option("concat", "concat: windows of the EOS-separated document stream; docs: one document per "
                          "row, truncated or padded (padding out of the loss).", choices=PACKINGS)
    token_cache: str | None = option(None, "Where token caches of raw data go (default: $ALPHASPEC_CACHE or "
                                     "~/.cache/alphaspec/tokens).", kind="path", metavar="DIR", incidental=True)


@dataclass
class OptimizerOptions:
    TITLE: ClassVar[str] = "Optimizer"
    name: str = option("adamw", "adamw (decoupled decay), adam (L2 decay, the paper's table) or muon (Muon for the "
                       "blocks' matrices, AdamW for the rest).", key="optimizer", choices=OPTIMIZERS)
    lr: float = option(1e-3, "Peak learning rate.", min=0.0, kind="finite")
    betas: tuple[float, float] = option((0.9, 0.95), cli=False)
    eps: float = option(1e-8, cli=False)
    grad_clip: float = option(1.0, "Global gradient-norm clip (0: off).", min=0.0, kind="finite")
    batch_size: int = option(16, "Sequences per optimizer step, over all GPUs.", min=1)
    micro_batch: int | None = option(None, "Sequences per forward pass per GPU (gradient accumulation makes up the "
                                     "rest; default: batch size / GPUs).", min=1, incidental=True)
    muon_momentum: float = option(0.95, "Muon's momentum.", min=0.0, max=1.0, kind="finite", applies=_muon)
    muon_nesterov: bool = option(True, "Muon's Nesterov momentum.", flags=("--muon-nesterov/--no-muon-nesterov",), applies=_muon)
    muon_ns_steps: int = option(5, "Muon's Newton-Schulz iterations.", min=1, max=99, applies=_muon)
    muon_adjust_lr: str = option("match_rms_adamw", "match_rms_adamw: lr x 0.2 sqrt(max(A, B)), so Muon reuses "
                                 "AdamW's --lr (Moonlight); original: lr x sqrt(max(1, A/B)).",
                                 choices=MUON_LR_ADJUSTMENTS, applies=_muon)


@dataclass
class ScheduleOptions:
    TITLE: ClassVar[str] = "Schedule"
    steps: int = option(300, "Optimizer steps in total.", min=1)
    warmup_steps: int = option(30, "Linear warmup, then cosine decay.", min=0)
    min_lr_ratio: float = option(0.1, "Final learning rate / peak.", min=0.0, max=1.0, kind="finite")


@dataclass
class DecayOptions:
    """The strategy (weight decay, or per-matrix learning rates for tempbalance and llr); the AlphaDecay options
    take their defaults from DecaySpec, the learning-rate ones from the method (maps/methods.py)."""

    TITLE: ClassVar[str] = "Strategy: weight decay or learning rates"
    strategy: str | None = option(None, ", ".join(STRATEGIES) + " (default: alphadecay with --decay-map, else "
                                  "uniform).", choices=STRATEGIES, metavar="STRATEGY")
    weight_decay: float = option(0.1, "Base decay w.", min=0.0, kind="finite")
    default_decay: str = option("all", "Untuned parameters: all (w), matrices (0 for 1-D and embeddings) or a "
                                "number.", kind="policy", metavar="all|matrices|FLOAT")
    decay_map: str | None = option(None, "Static AlphaDecay decays from `alphaspec decay-map`.", kind="path", applies=_alphadecay)
    gap: int | None = option(None, "Refresh alphadecay/adadecay decays or tempbalance/llr learning rates every GAP "
                             "steps (default: 500, or a tenth of a run shorter than 5000 steps).", min=1,
                             applies=_refreshing)
    estimator: str = option(DecaySpec.estimator, "How xmin is chosen (for the refreshes and alphas.csv).",
                            flags=("-e", "--estimator"), choices=ESTIMATORS, applies=_refreshed, recorded=True)
    metric: str = option(DecaySpec.metric, "Metric behind alphadecay's decays or tempbalance/llr's learning rates: "
                         + ", ".join(DECAY_METRICS) + ".",
                         choices=DECAY_METRICS, metavar="METRIC", applies=_refreshed)
    assign: str | None = option(None, f"Default: {DecaySpec.assign}; adadecay: sigmoid.", choices=ASSIGN, applies=_assigned)
    ratio: tuple[float, float] = option(DecaySpec.ratio, "linear: decays span s1·w .. s2·w.", kind="ratio", applies=_assigned)
    preserve_mean: str = option(DecaySpec.preserve_mean, "Rescale so the plain (modules) or parameter-weighted "
                                "(params) mean decay is w.", choices=PRESERVE, applies=_assigned)
    lr_ratio: tuple[float, float] | None = option(None, "tempbalance/llr: learning rates span s1·lr .. s2·lr "
                                                  "(default: 0.5 1.5; llr: 1 3).", kind="ratio", applies=_lr_map)
    lr_assign: str | None = option(None, "tempbalance/llr: how the metric becomes learning-rate multipliers "
                                   "(default linear).", choices=LR_ASSIGN, applies=_lr_map)
    lr_ease: int | None = option(None, "tempbalance/llr: steps over which each refresh's learning rates are "
                                 "reached from those in force (default: llr 20, as released; tempbalance 0).", min=0,
                                 applies=_lr_map)
    alphadecay_warmup: str = option("init", "Decays before the first refresh: init (from the initial weights, the "
                                    "paper) or uniform.", choices=ALPHADECAY_WARMUPS, applies=_refreshed)
    overlap: bool = option(True, "Solve alphadecay refreshes alongside training or in line (bit-reproducible).",
                           flags=("--overlap/--no-overlap",), applies=_refreshed)
    lrm_decay: float = option(2e-3, "Weight decay of the multipliers.", min=0.0, kind="finite", applies=_multipliers)
    lrm_lr_mult: float = option(1.0, "Multipliers' LR relative to --lr.", min=0.0, kind="finite", applies=_multipliers)

    def lr_spec(self):
        """The MapSpec of a tempbalance or llr run (None fields: the method's published values)."""
        from alphaspec.maps.spec import MapSpec

        return MapSpec(method=self.strategy, metric=self.metric, estimator=self.estimator,
                       ratio=self.lr_ratio, assign=self.lr_assign)

    def spec(self, assign: str = DecaySpec.assign) -> DecaySpec:
        """The DecaySpec these options describe (`assign` when --assign is not given)."""
        return DecaySpec(ratio=self.ratio, assign=self.assign or assign, metric=self.metric,
                         preserve_mean=self.preserve_mean, estimator=self.estimator)


@dataclass
class RunOptions:
    TITLE: ClassVar[str] = "Run and checkpoints"
    out: str = option("runs/default", "The run directory to create (or continue with --resume).", kind="path", incidental=True)
    resume: bool = option(False, "Continue the run in --out from its last checkpoint.", flags=("--resume",), incidental=True)
    seed: int = option(0, "Initialisation and data order.", incidental=True)
    log_every: int = option(10, "Steps per metrics row.", min=1, incidental=True)
    eval_every: int = option(100, "Steps per evaluation.", min=1, incidental=True)
    eval_windows: int = option(64, "Validation windows per evaluation.", min=1)
    analyze_every: int | None = option(None, "Fit the block matrices' spectra into alphas.csv every N steps "
                                       "(default: --eval-every; 0: never).", min=0, incidental=True)
    checkpoint_every: int = option(500, "Steps per checkpoint.", min=1, incidental=True)
    keep_checkpoints: int = option(2, "Newest checkpoints kept.", min=1, incidental=True)
    report_to: str = option("none", "Also send losses, lr, throughput, decays and alphas to tensorboard (RUN/tensorboard) "
                            "or wandb (offline without an API key); needs its extra.", choices=REPORT_TO,
                            incidental=True)


@dataclass
class HardwareOptions:
    TITLE: ClassVar[str] = "Hardware"
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", metavar="DEVICE", incidental=True)
    precision: str = option("auto", "auto (bf16 autocast on CUDA), bf16 or fp32; weights stay fp32.",
                            choices=PRECISIONS)
    compile: bool = option(False, "torch.compile the model.", flags=("--compile/--no-compile",), incidental=True)
    sharding: str = option("ddp", "Under torchrun: ddp (replicated weights) or fsdp (FSDP2: weights, gradients "
                           "and optimizer state sharded).", choices=SHARDINGS, incidental=True)


SECTION_TYPES = {"model": ModelOptions, "data": DataOptions, "optimizer": OptimizerOptions,
                 "schedule": ScheduleOptions, "decay": DecayOptions, "run": RunOptions, "hardware": HardwareOptions}
SECTIONS = tuple(t.TITLE for t in SECTION_TYPES.values())  # the panels of `alphaspec train --help`


def _section(name: str):
    return field(default_factory=SECTION_TYPES[name])


@dataclass
class TrainConfig:
    """Every option of `alphaspec train`, one dataclass per section; the CLI is built from these fields."""

    model: ModelOptions = _section("model")
    data: DataOptions = _section("data")
    optimizer: OptimizerOptions = _section("optimizer")
    schedule: ScheduleOptions = _section("schedule")
    decay: DecayOptions = _section("decay")
    run: RunOptions = _section("run")
    hardware: HardwareOptions = _section("hardware")
    # the options set on purpose (CLI: those on the command line; None: those that differ from the defaults)
    given: tuple[str, ...] | None = None

    @classmethod
    def of(cls, given: tuple[str, ...] | None = None, **options) -> TrainConfig:
        """A config from option names, as on the command line: `TrainConfig.of(steps=50, lr=3e-4)`."""
        return cls().with_options(given=given, **options)

    def with_options(self, given: tuple[str, ...] | None = None, **options) -> TrainConfig:
        """A copy with options (by option name) changed."""
        where = {key: (section, f) for section, f, key in option_fields()}
        unknown = sorted(set(options) - set(where))
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
        parts = {name: getattr(self, name) for name in SECTION_TYPES}
        for key, value in options.items():
            section, f = where[key]
            if isinstance(f.default, tuple) and isinstance(value, list):  # from JSON
                value = tuple(value)
            parts[section] = replace(parts[section], **{f.name: value})
        return replace(self, **parts, given=self.given if given is None else tuple(given))

    def flat(self) -> dict:
        """Option name -> value, for every option (what run.json records and compare reads)."""
        return {key: _plain(getattr(getattr(self, section), f.name)) for section, f, key in option_fields()}

    def __getitem__(self, key: str):
        """The value of one option by its name (`cfg["lr"]`)."""
        for section, f, k in option_fields():
            if k == key:
                return getattr(getattr(self, section), f.name)
        raise KeyError(key)

    def validate(self) -> None:
        """Raise ConfigError naming the option of the first setting that cannot be used; changes nothing."""
        for section, f, key in option_fields():
            meta, value = f.metadata, getattr(getattr(self, section), f.name)
            if not _fits(value, _hints(section)[f.name]):
                hint = _hints(section)[f.name]
                raise ConfigError(f"--{_flag(key)} {value!r}: expected {getattr(hint, '__name__', hint)}")
            if meta["choices"] and value is not None and value not in meta["choices"]:
                raise ConfigError(f"--{_flag(key)} {value!r}: choose one of {', '.join(meta['choices'])}")
            if isinstance(value, int | float) and not isinstance(value, bool) and _out_of_range(value, meta):
                raise ConfigError(f"--{_flag(key)} {value!r}: must be a finite number {_bounds(meta)}")
        from alphaspec.train.reporting import missing_extra

        if missing := missing_extra(self.run.report_to):  # the environment lacks it: not a usage error
            raise MissingExtra(f"--report-to {self.run.report_to} {missing}")
        if self.optimizer.name == "muon" and self.hardware.sharding == "fsdp":
            raise ConfigError("--optimizer muon orthogonalises whole matrices, which --sharding fsdp splits over "
                              "ranks; use --sharding ddp")
        d = self.decay
        if d.strategy == "cautious" and self.optimizer.name == "adam":
            raise ConfigError("--strategy cautious masks a decoupled decay; use --optimizer adamw or muon, not adam "
                              "(L2 decay goes through the gradient)")
        if d.decay_map and d.strategy not in (None, "alphadecay"):
            raise ConfigError(f"--decay-map is AlphaDecay's static map; it cannot be used with strategy {d.strategy!r}")
        if problem := ratio_problem(tuple(d.ratio)):
            raise ConfigError(f"--ratio {d.ratio[0]} {d.ratio[1]}: {problem}")
        if problem := policy_problem(d.default_decay):
            raise ConfigError(f"--default-decay {d.default_decay!r}: {problem}")
        if d.strategy in LR_STRATEGIES and (problem := d.lr_spec().problem("lr")):
            raise ConfigError(problem.replace("ratio (", "--lr-ratio (", 1))

    def inert(self) -> list[str]:
        """The options set on purpose (`given`) that do nothing in this run: another strategy's or optimizer's
        (--lr-ratio under uniform, --muon-momentum under adamw). A resumed run is judged on its saved settings."""
        if not self.given or self.run.resume:
            return []
        full = self.settled().flat()
        applies = {key: f.metadata["applies"] for _, f, key in option_fields() if not f.metadata["recorded"]}
        return [f"--{_flag(k)}" for k in self.given if applies.get(k) is not None and not applies[k](full)]

    def settled(self) -> TrainConfig:
        """A copy with the defaults that depend on other settings filled in (the strategy a decay map implies,
        the multipliers strategy lrm implies). The refresh gap waits for the run's own length (default_gap)."""
        strategy = self.decay.strategy or ("alphadecay" if self.decay.decay_map else "uniform")
        multipliers = "vector" if strategy == "lrm" and self.model.multipliers == "none" else self.model.multipliers
        return self.with_options(strategy=strategy, multipliers=multipliers)


def settings_that_matter(config: dict) -> dict:
    """The options of a run's flat settings (run.json's `config`) that can change what it learns: every option
    but the incidental ones and those that do not apply to its strategy or optimizer. Options a run of an
    older alphaspec did not record take their defaults. Two runs are replicates when these are equal."""
    full = TrainConfig().flat() | {k: v for k, v in config.items()}
    out = {}
    for _, f, key in option_fields():
        applies = f.metadata["applies"]
        if not f.metadata["incidental"] and (applies is None or applies(full)):
            out[key] = full[key]
    return out


def option_fields() -> Iterator[tuple[str, Field, str]]:
    """(section attribute, field, option name) for every option, in --help order."""
    for section, cls in SECTION_TYPES.items():
        for f in fields(cls):
            yield section, f, f.metadata["key"] or f.name


@functools.cache
def _hints(section: str) -> dict:
    return typing.get_type_hints(SECTION_TYPES[section])


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _out_of_range(value: float, meta) -> bool:
    return not math.isfinite(value) or (meta["min"] is not None and value < meta["min"]) or (
        meta["max"] is not None and value > meta["max"])


def _bounds(meta) -> str:
    lo, hi = meta["min"], meta["max"]
    return f"in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else f">= {lo:g}" if lo is not None else ""


def default_gap(steps: int) -> int:
    """The paper refreshes every 500 steps of 10k-20k; a shorter run refreshes ten times instead of never."""
    return min(500, max(1, steps // 10))


# What a resumed run may change; everything else comes from the run's checkpoint.
RESUMABLE = ("out", "resume", "steps", "device", "compile", "sharding", "overlap", "log_every", "eval_every",
             "analyze_every", "eval_windows", "checkpoint_every", "keep_checkpoints", "report_to")


def resumed_config(saved: dict, cfg: TrainConfig, where: str | Path = "the checkpoint",
                   from_checkpoint: bool = True) -> TrainConfig:
    """The run's own config (from its checkpoint, or run.json for a run restarted at step 0), with the
    RESUMABLE options `cfg` sets on purpose (cfg.given; else those that differ from the defaults). Any
    other option set on purpose must equal the run's own value. From a checkpoint, decays come from it,
    not a fresh solve. A settings record that cannot be read is `damaged` (AlphaspecError)."""
    own = _recorded_config(saved, where)
    current, defaults = cfg.flat(), TrainConfig().flat()
    recorded = own.flat()
    given = cfg.given if cfg.given is not None else [k for k in current if current[k] != defaults[k]]
    different = [k for k in given if k not in RESUMABLE and k in saved
                 and json.dumps(current[k]) != json.dumps(recorded[k])]
    if different:
        raise ConfigError(
            "a resumed run keeps its own settings: " + ", ".join(f"--{_flag(k)} {current[k]!r} "
                                                                 f"(the run has {recorded[k]!r})" for k in different)
            + "; only " + ", ".join(f"--{_flag(k)}" for k in RESUMABLE if k not in ("out", "resume")) + " can change")
    changes = {k: current[k] for k in {*given, "out", "resume"} if k in RESUMABLE}
    out = own.with_options(**changes, **({"alphadecay_warmup": "uniform"} if from_checkpoint else {}))
    out.validate()
    return out


class DamagedSettings(AlphaspecError, ValueError):
    """A run's recorded settings (checkpoint or run.json) that do not make a TrainConfig."""


def _recorded_config(saved: dict, where: str | Path) -> TrainConfig:
    """The TrainConfig a run recorded (option name -> value; names this version does not know are ignored)."""
    try:
        if not isinstance(saved, dict):
            raise TypeError(f"a {type(saved).__name__}, not a mapping of options")
        known = TrainConfig().flat()
        cfg = TrainConfig.of(**{k: v for k, v in saved.items() if k in known})
        cfg.validate()
        return cfg
    except (ConfigError, TypeError, ValueError) as e:
        raise DamagedSettings(f"{where}: the run's settings are damaged ({type(e).__name__}: {e})") from e


def _fits(value, hint) -> bool:
    """Whether a value has the type of a field (JSON lists stand for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is tuple:
        return isinstance(value, list | tuple) and len(value) == len(args) and all(map(_fits, value, args))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
