"""`alphaspec train`: pretrain a small LLaMA with a chosen weight-decay strategy into a run directory."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .common import Estimator, Quiet, app, decay_policy, err, finite, out, ratio_pair

MODEL = "Model and data"
OPTIM = "Optimisation"
DECAY = "Weight-decay strategy"
RUN = "Run"


class Strategy(str, Enum):
    uniform = "uniform"
    alphadecay = "alphadecay"
    awd = "awd"
    adadecay = "adadecay"
    lrm = "lrm"


class Multipliers(str, Enum):
    none = "none"
    vector = "vector"
    full = "full"
    scalar = "scalar"


@app.command(epilog="""
**Examples**

    alphaspec train --out runs/uniform                                  # tiny LLaMA on the bundled text

    alphaspec train --out runs/ad --strategy alphadecay --gap 50 --weight-decay 0.1

    alphaspec decay-map runs/uniform -o wd.json && alphaspec train --out runs/static --decay-map wd.json

    torchrun --nproc-per-node 8 -m alphaspec train --out runs/60m --model llama-60m --data corpus/ \\
        --seq-len 256 --batch-size 512 --steps 10000 --strategy alphadecay

    alphaspec train --out runs/uniform --resume --steps 600                # continue from the last checkpoint

Writes RUN/run.json, config.json + model.safetensors (a Hugging Face LlamaForCausalLM), checkpoints/,
metrics.csv and decay.csv; `alphaspec analyze RUN` and `alphaspec compare RUN...` read it.
""")
def train(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="The run directory to create (or continue with --resume).",
                                          rich_help_panel=RUN)],
    model: Annotated[str, typer.Option(help="tiny, llama-20m, llama-60m, llama-130m, llama-350m or llama-1b "
                                       "(GaLore's shapes).", rich_help_panel=MODEL)] = "tiny",
    data: Annotated[list[Path] | None, typer.Option("--data", help="Text files or directories of *.txt/*.md/*.rst "
                                                    "(default: the bundled Shakespeare).", rich_help_panel=MODEL)] = None,
    val_data: Annotated[list[Path] | None, typer.Option("--val-data", help="Held-out text for evaluation (default: "
                                                        "the last 5 % of the data).", rich_help_panel=MODEL)] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="A tokenizers JSON file (default: train a byte-level BPE "
                                                   "on the data).", rich_help_panel=MODEL)] = None,
    vocab_size: Annotated[int, typer.Option(min=256, help="Vocabulary of the trained tokenizer.",
                                            rich_help_panel=MODEL)] = 4096,
    seq_len: Annotated[int, typer.Option(min=2, rich_help_panel=MODEL)] = 128,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in total.", rich_help_panel=OPTIM)] = 300,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per optimizer step, over all GPUs.",
                                            rich_help_panel=OPTIM)] = 16,
    micro_batch: Annotated[int | None, typer.Option(min=1, help="Sequences per forward pass per GPU (gradient "
                                                    "accumulation makes up the rest).", rich_help_panel=OPTIM)] = None,
    lr: Annotated[float, typer.Option(callback=finite, min=0.0, help="Peak learning rate (linear warmup, cosine decay).",
                                      rich_help_panel=OPTIM)] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(min=0, rich_help_panel=OPTIM)] = 30,
    min_lr_ratio: Annotated[float, typer.Option(callback=finite, min=0.0, max=1.0, rich_help_panel=OPTIM)] = 0.1,
    optimizer: Annotated[str, typer.Option(help="adamw (decoupled decay) or adam (L2 decay, the paper's table).",
                                           rich_help_panel=OPTIM)] = "adamw",
    grad_clip: Annotated[float, typer.Option(callback=finite, min=0.0, help="Global gradient-norm clip (0: off).",
                                             rich_help_panel=OPTIM)] = 1.0,
    strategy: Annotated[Strategy | None, typer.Option(help="Default: alphadecay with --decay-map, else uniform.",
                                                      rich_help_panel=DECAY)] = None,
    weight_decay: Annotated[float, typer.Option(callback=finite, min=0.0, help="Base decay w.", rich_help_panel=DECAY)] = 0.1,
    decay_map: Annotated[Path | None, typer.Option(help="Static AlphaDecay decays from `alphaspec decay-map`.",
                                                   rich_help_panel=DECAY)] = None,
    gap: Annotated[int | None, typer.Option(min=1, help="Refresh alphadecay/adadecay decays every GAP steps "
                                            "(default: 500, or a tenth of a run shorter than 5000 steps).",
                                            rich_help_panel=DECAY)] = None,
    estimator: Annotated[Estimator, typer.Option("-e", "--estimator", rich_help_panel=DECAY)] = Estimator.median,
    metric: Annotated[str, typer.Option(help="Metric behind alphadecay's decays (alpha, spectral_norm, ...).",
                                        rich_help_panel=DECAY)] = "alpha",
    assign: Annotated[str | None, typer.Option(help="linear, sqrt, log2 or sigmoid (default: linear; adadecay: "
                                               "sigmoid).", rich_help_panel=DECAY)] = None,
    ratio: Annotated[tuple[float, float], typer.Option(callback=ratio_pair, help="linear: decays span s1*w .. s2*w.",
                                                       rich_help_panel=DECAY)] = (0.67, 3.0),
    preserve_mean: Annotated[str, typer.Option(help="none, modules or params.", rich_help_panel=DECAY)] = "none",
    default_decay: Annotated[str, typer.Option(callback=decay_policy, help="Untuned parameters: all (w), matrices (0 for 1-D and "
                                               "embeddings) or a number.", rich_help_panel=DECAY)] = "all",
    alphadecay_warmup: Annotated[str, typer.Option(help="Decays before the first refresh: init (from the initial "
                                                   "weights, the paper) or uniform.", rich_help_panel=DECAY)] = "init",
    overlap: Annotated[bool, typer.Option("--overlap/--no-overlap", help="Solve alphadecay refreshes alongside "
                                          "training (default) or in line (bit-reproducible).",
                                          rich_help_panel=DECAY)] = True,
    multipliers: Annotated[Multipliers, typer.Option(help="Learnable multipliers (strategy lrm: vector).",
                                                     rich_help_panel=DECAY)] = Multipliers.none,
    lrm_decay: Annotated[float, typer.Option(callback=finite, min=0.0, help="Weight decay of the multipliers.",
                                             rich_help_panel=DECAY)] = 2e-3,
    lrm_lr_mult: Annotated[float, typer.Option(callback=finite, min=0.0, help="Multipliers' LR relative to --lr.",
                                               rich_help_panel=DECAY)] = 1.0,
    eval_every: Annotated[int, typer.Option(min=1, rich_help_panel=RUN)] = 100,
    analyze_every: Annotated[int | None, typer.Option(min=0, help="Fit the block matrices' spectra into alphas.csv "
                                                      "every N steps (default: --eval-every; 0: never).",
                                                      rich_help_panel=RUN)] = None,
    eval_windows: Annotated[int, typer.Option(min=1, help="Validation windows per evaluation.",
                                              rich_help_panel=RUN)] = 64,
    log_every: Annotated[int, typer.Option(min=1, rich_help_panel=RUN)] = 10,
    checkpoint_every: Annotated[int, typer.Option(min=1, rich_help_panel=RUN)] = 500,
    keep_checkpoints: Annotated[int, typer.Option(min=1, rich_help_panel=RUN)] = 2,
    seed: Annotated[int, typer.Option(rich_help_panel=RUN)] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=RUN)] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA), bf16 or fp32; weights stay fp32.",
                                           rich_help_panel=RUN)] = "auto",
    sharding: Annotated[str, typer.Option(help="Under torchrun: ddp (replicated weights) or fsdp (FSDP2: weights, "
                                          "gradients and optimizer state sharded over the GPUs).",
                                          rich_help_panel=RUN)] = "ddp",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.",
                                          rich_help_panel=RUN)] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.",
                                         rich_help_panel=RUN)] = False,
    quiet: Quiet = False,
) -> None:
    """Pretrain a LLaMA with uniform, AlphaDecay, AWD, AdaDecay or learnable-multiplier weight decay."""
    from ..esd import resolve_device
    from ..train import TrainConfig
    from ..train import train as run_training
    # typer may vendor click: compare the parameter source by name
    given = tuple("out" if p.name == "out_dir" else p.name for p in ctx.command.params
                  if getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE")
    cfg = TrainConfig(
        out=str(out_dir), model=model, vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size,
        micro_batch=micro_batch, steps=steps, lr=lr, min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps,
        optimizer=optimizer, weight_decay=weight_decay, default_decay=default_decay, grad_clip=grad_clip,
        strategy=(strategy.value if strategy else ("alphadecay" if decay_map else "uniform")),
        decay_map=str(decay_map) if decay_map else None, gap=gap, estimator=estimator.value, metric=metric,
        assign=assign, ratio=ratio, preserve_mean=preserve_mean, alphadecay_warmup=alphadecay_warmup, overlap=overlap,
        multipliers=multipliers.value, lrm_decay=lrm_decay, lrm_lr_mult=lrm_lr_mult,
        data=[str(d) for d in data or []], val_data=[str(d) for d in val_data or []],
        tokenizer=str(tokenizer) if tokenizer else None, eval_every=eval_every,
        analyze_every=analyze_every, eval_windows=eval_windows, log_every=log_every, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, seed=seed, device=device, precision=precision, compile=compile,
        sharding=sharding, resume=resume,
        given=given)
    quiet = quiet or int(os.environ.get("RANK", 0)) != 0
    cfg.validate()  # bad options fail before anything is printed
    resolve_device(cfg.device)
    with Report(quiet, plain=not err.is_terminal) as report:
        last = run_training(cfg, on_log=report.log, on_start=report.start, on_status=report.status,
                            on_warning=report.warning)
    if not quiet and last:
        eval_part = f", eval loss {last['eval_loss']:.4f} (ppl {last['eval_ppl']:.1f})" if "eval_loss" in last else ""
        out.print(f"step {last['step']}: loss {last['loss']:.4f}{eval_part}; wrote {out_dir}", highlight=False)


class Report:
    """What `train` shows: a progress bar on a terminal; one plain line per logged step otherwise (nohup,
    SLURM, CI logs); with -q only warnings and errors."""

    def __init__(self, quiet: bool, plain: bool):
        self.quiet, self.plain, self.steps = quiet, plain, 0
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
        self.bar.update(self.task, total=self.steps, completed=info["start_step"], status="first steps")
        if self.quiet:
            return
        where = f"from step {info['start_step']} " if info["start_step"] else ""
        self.line(f"alphaspec {info['alphaspec']} · {c['model']} ({info['parameters'] / 1e6:.1f} M parameters) · "
                  f"{c['strategy']} · {c['batch_size']} x {c['seq_len']} tokens/step · {c['steps']} steps {where}· "
                  f"{info['device']}" + (f" x {info['world_size']}" if info["world_size"] > 1 else "")
                  + f" · {info['precision']} → {c['out']}")

    def log(self, row: dict) -> None:
        evaluated = row.get("eval_loss") is not None
        if self.plain and not self.quiet:
            text = (f"step {row['step']}/{self.steps} | loss {row['loss']:.4f} | lr {row['lr']:.3e} | "
                    f"{row['tokens_per_s']:,.0f} tok/s")
            self.line(text + (f" | eval {row['eval_loss']:.4f} (ppl {row['eval_ppl']:.2f})" if evaluated else ""))
        status = f"loss {row['loss']:.3f}  {row['tokens_per_s']:,.0f} tok/s" + (
            f"  eval {row['eval_loss']:.3f}" if evaluated else "")
        self.bar.update(self.task, completed=row["step"], status=status)

    def status(self, text: str) -> None:
        if self.plain and not self.quiet:
            self.line(text)
        self.bar.update(self.task, status=text)

    def warning(self, text: str) -> None:
        self.line(f"warning: {text}", style="yellow")
