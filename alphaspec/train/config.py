"""Every setting of `alphaspec train`, each with its default and help written once (torch-free).

The CLI is generated from these fields (cli/train.py): a field's metadata gives its section of
`--help`, its help text, its flags and bounds. `validate()` only checks; `settled()` fills the defaults
that depend on other settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..choices import (
    ALPHADECAY_WARMUPS,
    ASSIGN,
    DECAY_METRICS,
    DEFAULT_POLICIES,
    ESTIMATORS,
    MODELS,
    MULTIPLIERS,
    OPTIMIZERS,
    PRECISIONS,
    PRESERVE,
    SHARDINGS,
    STRATEGIES,
)
from ..errors import AlphaspecError

SECTIONS = ("Model", "Data", "Optimizer", "Schedule", "Weight-decay strategy", "Run and checkpoints", "Hardware")


class ConfigError(AlphaspecError, ValueError):
    """Options that contradict each other or name something that does not exist."""


def option(default, section: str, help: str = "", *, flags: tuple[str, ...] = (), min: float | None = None,
           max: float | None = None, choices: tuple[str, ...] = (), kind: str = "", cli: bool = True):
    """A config field with what its CLI option needs. kind: "path" (a file or directory), "finite" (a float
    that must be finite), "ratio", "policy" (all, matrices or a number)."""
    meta = {"section": section, "help": help, "flags": flags, "min": min, "max": max, "choices": choices,
            "kind": kind, "cli": cli}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of `alphaspec train`, by section; the CLI is built from these fields."""

    # -- model ---------------------------------------------------------------------------------------------------
    model: str = option("tiny", "Model", "GaLore's LLaMA shapes.", choices=MODELS)
    multipliers: str = option("none", "Model", "Learnable multipliers (strategy lrm: vector).", choices=MULTIPLIERS)
    # -- data ----------------------------------------------------------------------------------------------------
    data: list[str] = option([], "Data", "Text files or directories of *.txt/*.md/*.rst (default: the bundled "
                             "Shakespeare).", kind="path")
    val_data: list[str] = option([], "Data", "Held-out text for evaluation (default: the last --val-fraction of "
                                 "the data).", kind="path")
    val_fraction: float = option(0.05, "Data", "Share of the text held out when there is no --val-data.", min=0.0,
                                 max=0.5, kind="finite", cli=False)
    tokenizer: str | None = option(None, "Data", "A tokenizers JSON file (default: train a byte-level BPE on the "
                                   "data).", kind="path")
    vocab_size: int = option(4096, "Data", "Vocabulary of the trained tokenizer.", min=256)
    seq_len: int = option(128, "Data", "Tokens per sequence.", min=2)
    # -- optimizer -----------------------------------------------------------------------------------------------
    optimizer: str = option("adamw", "Optimizer", "adamw (decoupled decay) or adam (L2 decay, the paper's table).",
                            choices=OPTIMIZERS)
    lr: float = option(1e-3, "Optimizer", "Peak learning rate.", min=0.0, kind="finite")
    betas: tuple[float, float] = option((0.9, 0.95), "Optimizer", cli=False)
    eps: float = option(1e-8, "Optimizer", cli=False)
    grad_clip: float = option(1.0, "Optimizer", "Global gradient-norm clip (0: off).", min=0.0, kind="finite")
    batch_size: int = option(16, "Optimizer", "Sequences per optimizer step, over all GPUs.", min=1)
    micro_batch: int | None = option(None, "Optimizer", "Sequences per forward pass per GPU (gradient accumulation "
                                     "makes up the rest; default: batch size / GPUs).", min=1)
    # -- schedule ------------------------------------------------------------------------------------------------
    steps: int = option(300, "Schedule", "Optimizer steps in total.", min=1)
    warmup_steps: int = option(30, "Schedule", "Linear warmup, then cosine decay.", min=0)
    min_lr_ratio: float = option(0.1, "Schedule", "Final learning rate / peak.", min=0.0, max=1.0, kind="finite")
    # -- weight-decay strategy -----------------------------------------------------------------------------------
    strategy: str | None = option(None, "Weight-decay strategy", "Default: alphadecay with --decay-map, else "
                                  "uniform.", choices=STRATEGIES)
    weight_decay: float = option(0.1, "Weight-decay strategy", "Base decay w.", min=0.0, kind="finite")
    default_decay: str = option("all", "Weight-decay strategy", "Untuned parameters: all (w), matrices (0 for 1-D "
                                "and embeddings) or a number.", kind="policy")
    decay_map: str | None = option(None, "Weight-decay strategy", "Static AlphaDecay decays from `alphaspec "
                                   "decay-map`.", kind="path")
    gap: int | None = option(None, "Weight-decay strategy", "Refresh alphadecay/adadecay decays every GAP steps "
                             "(default: 500, or a tenth of a run shorter than 5000 steps).", min=1)
    estimator: str = option("median", "Weight-decay strategy", "How xmin is chosen.", flags=("-e", "--estimator"),
                            choices=ESTIMATORS)
    metric: str = option("alpha", "Weight-decay strategy", "Metric behind alphadecay's decays.",
                         choices=DECAY_METRICS)
    assign: str | None = option(None, "Weight-decay strategy", "Default: linear; adadecay: sigmoid.", choices=ASSIGN)
    ratio: tuple[float, float] = option((0.67, 3.0), "Weight-decay strategy", "linear: decays span s1*w .. s2*w.",
                                        kind="ratio")
    preserve_mean: str = option("none", "Weight-decay strategy", "Rescale so the plain (modules) or "
                                "parameter-weighted (params) mean decay is w.", choices=PRESERVE)
    alphadecay_warmup: str = option("init", "Weight-decay strategy", "Decays before the first refresh: init (from "
                                    "the initial weights, the paper) or uniform.", choices=ALPHADECAY_WARMUPS)
    overlap: bool = option(True, "Weight-decay strategy", "Solve alphadecay refreshes alongside training or in "
                           "line (bit-reproducible).", flags=("--overlap/--no-overlap",))
    lrm_decay: float = option(2e-3, "Weight-decay strategy", "Weight decay of the multipliers.", min=0.0,
                              kind="finite")
    lrm_lr_mult: float = option(1.0, "Weight-decay strategy", "Multipliers' LR relative to --lr.", min=0.0,
                                kind="finite")
    # -- run and checkpoints -------------------------------------------------------------------------------------
    out: str = option("runs/default", "Run and checkpoints", "The run directory to create (or continue with "
                      "--resume).", kind="path")
    resume: bool = option(False, "Run and checkpoints", "Continue the run in --out from its last checkpoint.",
                          flags=("--resume",))
    seed: int = option(0, "Run and checkpoints", "Initialisation and data order.")
    log_every: int = option(10, "Run and checkpoints", "Steps per metrics row.", min=1)
    eval_every: int = option(100, "Run and checkpoints", "Steps per evaluation.", min=1)
    eval_windows: int = option(64, "Run and checkpoints", "Validation windows per evaluation.", min=1)
    analyze_every: int | None = option(None, "Run and checkpoints", "Fit the block matrices' spectra into "
                                       "alphas.csv every N steps (default: --eval-every; 0: never).", min=0)
    checkpoint_every: int = option(500, "Run and checkpoints", "Steps per checkpoint.", min=1)
    keep_checkpoints: int = option(2, "Run and checkpoints", "Newest checkpoints kept.", min=1)
    # -- hardware ------------------------------------------------------------------------------------------------
    device: str = option("auto", "Hardware", "auto, cpu, cuda or cuda:N.")
    precision: str = option("auto", "Hardware", "auto (bf16 autocast on CUDA), bf16 or fp32; weights stay fp32.",
                            choices=PRECISIONS)
    compile: bool = option(False, "Hardware", "torch.compile the model.", flags=("--compile/--no-compile",))
    sharding: str = option("ddp", "Hardware", "Under torchrun: ddp (replicated weights) or fsdp (FSDP2: weights, "
                           "gradients and optimizer state sharded).", choices=SHARDINGS)
    # the fields set on purpose (CLI: the options on the command line; None: those that differ from the defaults)
    given: tuple[str, ...] | None = option(None, "Run and checkpoints", cli=False)

    def validate(self) -> None:
        """Raise ConfigError naming the option of the first setting that cannot be used; changes nothing."""
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if meta["choices"] and value is not None and value not in meta["choices"]:
                raise ConfigError(f"--{_flag(f.name)} {value!r}: choose one of {', '.join(meta['choices'])}")
            if isinstance(value, int | float) and not isinstance(value, bool) and _out_of_range(value, meta):
                raise ConfigError(f"--{_flag(f.name)} {value!r}: must be a finite number "
                                  f"{_bounds(meta)}")
        if self.decay_map and self.strategy not in (None, "alphadecay"):
            raise ConfigError(f"--decay-map is AlphaDecay's static map; it cannot be used with strategy {self.strategy!r}")
        s1, s2 = self.ratio
        if not (math.isfinite(s1) and math.isfinite(s2) and 0 <= s1 < s2):
            raise ConfigError(f"--ratio {s1} {s2}: need finite numbers with 0 <= S1 < S2")
        if self.default_decay not in DEFAULT_POLICIES:
            try:
                number = float(self.default_decay)
            except ValueError:
                raise ConfigError(f"--default-decay {self.default_decay!r}: use all, matrices or a number") from None
            if not math.isfinite(number) or number < 0:
                raise ConfigError(f"--default-decay {self.default_decay!r}: a decay must be a finite number >= 0")

    def settled(self) -> TrainConfig:
        """A copy with the defaults that depend on other settings filled in (the strategy a decay map implies,
        the multipliers strategy lrm implies). The refresh gap waits for the run's own length (default_gap)."""
        strategy = self.strategy or ("alphadecay" if self.decay_map else "uniform")
        multipliers = "vector" if strategy == "lrm" and self.multipliers == "none" else self.multipliers
        return replace(self, strategy=strategy, multipliers=multipliers)


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
             "analyze_every", "eval_windows", "checkpoint_every", "keep_checkpoints")


def resumed_config(saved: dict, cfg: TrainConfig, where: str | Path = "the checkpoint",
                   from_checkpoint: bool = True) -> TrainConfig:
    """The run's own config (from its checkpoint, or run.json for a run restarted at step 0), with the
    RESUMABLE fields `cfg` sets on purpose (cfg.given; else those that differ from the defaults). Any
    other field set on purpose must equal the run's own value. From a checkpoint, decays come from it,
    not a fresh solve. A settings record that cannot be read is `damaged` (AlphaspecError)."""
    try:
        return _merged_config(saved, cfg, from_checkpoint)
    except ConfigError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise DamagedSettings(f"{where}: the run's settings are damaged ({type(e).__name__}: {e})") from e


class DamagedSettings(AlphaspecError, ValueError):
    """A run's recorded settings (checkpoint or run.json) that do not make a TrainConfig."""


def _merged_config(saved: dict, cfg: TrainConfig, from_checkpoint: bool) -> TrainConfig:
    current, defaults = asdict(cfg), asdict(TrainConfig())
    given = cfg.given if cfg.given is not None else [k for k in current if current[k] != defaults[k]]
    different = [k for k in given if k not in RESUMABLE and k in saved and k != "given"
                 and json.dumps(current[k]) != json.dumps(saved[k])]
    if different:
        raise ConfigError(
            "a resumed run keeps its own settings: " + ", ".join(f"--{_flag(k)} {current[k]!r} "
                                                                 f"(the run has {saved[k]!r})" for k in different)
            + "; only " + ", ".join(f"--{_flag(k)}" for k in RESUMABLE if k not in ("out", "resume")) + " can change")
    changes = {k: current[k] for k in {*given, "out", "resume"} if k in RESUMABLE}
    merged = {**saved, **changes, "given": None}
    if from_checkpoint:
        merged["alphadecay_warmup"] = "uniform"
    merged["betas"], merged["ratio"] = tuple(merged["betas"]), tuple(merged["ratio"])
    out = TrainConfig(**{k: v for k, v in merged.items() if k in {f.name for f in fields(TrainConfig)}})
    out.validate()
    return out
