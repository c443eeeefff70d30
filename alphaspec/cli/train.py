"""`alphaspec train`: pretrain a small LLaMA with a chosen weight-decay strategy into a run directory."""

from __future__ import annotations

import os
import time
import typing
from dataclasses import MISSING
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from alphaspec.cli.common import app, decay_policy, err, finite, out, quiet_param, ratio_pair
from alphaspec.cli.help import PATH, Option, metavar
from alphaspec.cli.progress import clock
from alphaspec.errors import UsageError

EPILOG = """
Examples:

    # a tiny LLaMA on the bundled text
    alphaspec train --out runs/uniform

    # AlphaDecay refreshed from the live weights every 50 steps
    alphaspec train --out runs/ad --strategy alphadecay --gap 50

    # a static map from another run's weights
    alphaspec decay-map runs/uniform -o wd.json
    alphaspec train --out runs/static --decay-map wd.json

    torchrun --nproc-per-node 8 -m alphaspec train --out runs/60m \\
        --model llama-60m --data corpus/ --seq-len 256 --batch-size 512 \\
        --steps 10000 --strategy alphadecay

    # continue from the last checkpoint
    alphaspec train --out runs/uniform --resume --steps 600

    # learnable multipliers under Muon
    alphaspec train --out runs/muon-lrm --optimizer muon --strategy lrm

Writes RUN/run.json, config.json + model.safetensors (a Hugging Face LlamaForCausalLM), checkpoints/,
metrics.csv, decay.csv and alphas.csv; `alphaspec analyze RUN`, `plot RUN` and `compare RUN...` read it.
"""


def options() -> list[Option]:
    """One click option per field of TrainConfig's sections, listed under the section's title: default, help, bounds,
    choices and flags come from the field."""
    from alphaspec.train.config import SECTION_TYPES, option_fields

    hints = {name: typing.get_type_hints(cls) for name, cls in SECTION_TYPES.items()}
    made = []
    for section, f, key in option_fields():
        meta = f.metadata
        if not meta["cli"]:
            continue
        hint = hints[section][f.name]
        kind, extra = _click_type(hint, meta)
        required = key == "out"
        made.append(Option([*(meta["flags"] or ["--" + key.replace("_", "-")]), key], type=kind,
                           section=SECTION_TYPES[section].TITLE, help=meta["help"], required=required,
                           default=None if required or f.default is MISSING else f.default, show_default=not required,
                           callback={"finite": finite, "ratio": ratio_pair, "policy": decay_policy}.get(meta["kind"]),
                           metavar=meta["metavar"] or metavar(kind), **extra))
    return made


def _click_type(hint, meta) -> tuple[object, dict]:
    """The click type of a field with type hint `hint`, and what else its option needs (nargs, multiple, a flag)."""
    if hint is bool:
        return None, {"is_flag": True}
    if meta["choices"]:
        return click.Choice(meta["choices"]), {}
    if typing.get_origin(hint) is list:
        return (PATH if meta["kind"] == "path" else str), {"multiple": True}
    if meta["kind"] == "path":
        return PATH, {}
    if meta["kind"] == "ratio":
        return float, {"nargs": 2}
    base = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
    if base in (int, float) and (meta["min"] is not None or meta["max"] is not None):
        return (click.IntRange if base is int else click.FloatRange)(meta["min"], meta["max"]), {}
    return base, {}


@app.command("train", epilog=EPILOG, params=[*options(), quiet_param()])
@click.pass_context
def train(ctx: click.Context, quiet: bool, **settings) -> None:
    """Pretrain a LLaMA with uniform, AlphaDecay, AWD, AdaDecay, cautious or muP weight decay, or learnable
    multipliers, under AdamW, Adam or Muon."""
    from alphaspec.devices import resolve_device
    from alphaspec.train import TrainConfig
    from alphaspec.train import train as run_training
    from alphaspec.train.config import ConfigError, option_fields

    given = tuple(p.name for p in ctx.command.params if p.name in settings
                  and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE)
    lists = {key for _, f, key in option_fields() if f.default is MISSING}  # the repeatable options (tuples)
    values = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k in lists else v)
              for k, v in settings.items()}
    cfg = TrainConfig.of(given=given, **values)
    quiet = quiet or int(os.environ.get("RANK", 0)) != 0
    try:
        cfg.validate()  # bad options fail before anything is printed
    except ConfigError as e:  # options that contradict each other: a usage error, as the parser's own
        raise UsageError(str(e)) from e
    resolve_device(cfg.hardware.device)
    try:
        with Report(quiet, plain=not err.is_terminal) as report:
            last = run_training(cfg, on_log=report.log, on_start=report.start, on_status=report.status,
                                on_warning=report.warning)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the line that reports it says whether a checkpoint is left
        stop.run_dir = cfg.run.out
        raise
    if not quiet and last:
        eval_part = f", eval loss {last['eval_loss']:.4f} (ppl {last['eval_ppl']:.1f})" if "eval_loss" in last else ""
        out.print(f"step {last['step']}: loss {last['loss']:.4f}{eval_part}; wrote {cfg.run.out}", highlight=False)


class Report:
    """What `train` shows: a progress bar on a terminal; one plain line per logged step otherwise (nohup,
    SLURM, CI logs); with -q only warnings and errors."""

    def __init__(self, quiet: bool, plain: bool):
        self.quiet, self.plain, self.steps = quiet, plain, 0
        self.clock: tuple[float, int] = (time.perf_counter(), 0)  # when, and at which step, training started
        self.last: tuple[float, int] = self.clock  # the previous log line's
        self.mfu_flops: float | None = None  # model FLOPs per token over the GPU's peak FLOP/s, when known
        columns = [TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        self.bar = Progress(*columns, console=err, disable=quiet or plain, transient=True)
        self.task = self.bar.add_task("train", total=None, status="starting")

    def __enter__(self) -> Report:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def line(self, text: str, style: str | None = None) -> None:
        self.bar.console.print(Text(text), style=style, highlight=False, soft_wrap=True)

    def start(self, info: dict) -> None:
        c = info["config"]
        self.steps = c["steps"]
        self.clock = self.last = (time.perf_counter(), info["start_step"])
        peak = info.get("peak_flops")
        self.mfu_flops = info["flops_per_token"] / peak if peak else None
        self.bar.update(self.task, total=self.steps, completed=info["start_step"], status="first steps")
        if self.quiet:
            return
        where = f"from step {info['start_step']} " if info["start_step"] else ""
        self.line(f"alphaspec {info['alphaspec']} · {c['model']} ({info['parameters'] / 1e6:.1f} M parameters) · "
                  f"{c['optimizer']} · {c['strategy']} · {c['batch_size']} x {c['seq_len']} tokens/step · "
                  f"{c['steps']} steps {where}· "
                  f"{info['device']}" + (f" x {info['world_size']}" if info["world_size"] > 1 else "")
                  + f" · {info['precision']} → {c['out']}")

    def log(self, row: dict) -> None:
        evaluated = row.get("eval_loss") is not None
        speed = self.pace(row)
        if self.plain and not self.quiet:
            text = (f"step {row['step']}/{self.steps} | loss {row['loss']:.4f} | lr {row['lr']:.3e} | "
                    f"{row['tokens_per_s']:,.0f} tok/s | {speed}")
            self.line(text + (f" | eval {row['eval_loss']:.4f} (ppl {row['eval_ppl']:.2f})" if evaluated else ""))
        status = f"loss {row['loss']:.3f}  {row['tokens_per_s']:,.0f} tok/s  {speed.split(' | ')[0]}" + (
            f"  eval {row['eval_loss']:.3f}" if evaluated else "")
        self.bar.update(self.task, completed=row["step"], status=status)

    def pace(self, row: dict) -> str:
        """ms per step since the last line (and MFU on a known GPU), then elapsed time and ETA."""
        now, step = time.perf_counter(), row["step"]
        (t0, s0), (t1, s1) = self.clock, self.last
        self.last = (now, step)
        ms = 1e3 * (now - t1) / max(step - s1, 1)
        mfu = f", MFU {row['tokens_per_s'] * self.mfu_flops:.0%}" if self.mfu_flops else ""
        remaining = (now - t0) / max(step - s0, 1) * (self.steps - step)
        return f"{ms:,.0f} ms/step{mfu} | {clock(now - t0)} elapsed, eta {clock(remaining)}"

    def status(self, text: str) -> None:
        """A line about what the run is doing (a preparation step, a refresh of the decays)."""
        if not self.quiet:
            self.line(text)
        self.bar.update(self.task, status=text)

    def warning(self, text: str) -> None:
        self.line(f"warning: {text}", style="yellow")
