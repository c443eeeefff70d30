"""`alphaspec train`: pretrain a small LLaMA with a chosen weight-decay strategy into a run directory."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .common import Estimator, app, decay_policy, err, finite, out, ratio_pair

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
    gap: Annotated[int, typer.Option(min=1, help="Refresh alphadecay/adadecay decays every GAP steps.",
                                     rich_help_panel=DECAY)] = 500,
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
    quiet: Annotated[bool, typer.Option("-q", "--quiet", rich_help_panel=RUN)] = False,
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
    columns = [TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    cfg.validate()  # bad options fail before the progress bar appears
    resolve_device(cfg.device)
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("train", total=steps, status="starting")

        def on_log(row: dict) -> None:
            status = f"loss {row['loss']:.3f}  {row['tokens_per_s']:,.0f} tok/s"
            if row.get("eval_loss") is not None:
                status += f"  eval {row['eval_loss']:.3f}"
            bar.update(task, completed=row["step"], status=status)

        def on_start(info: dict) -> None:
            c = info["config"]
            where = f"from step {info['start_step']} " if info["start_step"] else ""
            bar.update(task, status="first steps")
            bar.console.print(
                f"alphaspec {info['alphaspec']} · {c['model']} ({info['parameters'] / 1e6:.1f} M parameters) · "
                f"{c['strategy']} · {c['batch_size']} x {c['seq_len']} tokens/step · {c['steps']} steps {where}· "
                f"{info['device']}" + (f" x {info['world_size']}" if info["world_size"] > 1 else "")
                + f" · {info['precision']} → {c['out']}", highlight=False)

        last = run_training(cfg, on_log=on_log, on_start=on_start,
                            on_status=lambda line: bar.update(task, status=line),
                            on_warning=lambda line: bar.console.print(Text(f"warning: {line}"), style="yellow",
                                                                      highlight=False, soft_wrap=True))
    if not quiet and last:
        eval_part = f", eval loss {last['eval_loss']:.4f} (ppl {last['eval_ppl']:.1f})" if "eval_loss" in last else ""
        out.print(f"step {last['step']}: loss {last['loss']:.4f}{eval_part}; wrote {out_dir}", highlight=False)
