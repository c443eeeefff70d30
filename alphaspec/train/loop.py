"""The training loop: config, setup (single process or torchrun DDP), steps, evaluation, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .._version import __version__
from ..analysis import analyze_tensors, records
from ..compare import load_run_json
from ..decay import DecayMap, is_tuned_candidate
from ..errors import AlphaspecError
from ..esd import resolve_device
from ..hook import full_tensor
from . import data as datamod
from . import parallel
from .config import ConfigError, TrainConfig, default_gap, resumed_config
from .model import PRESETS, Llama, ModelConfig, count_params, hf_tensors
from .rundir import (
    ALPHAS,
    DECAYS,
    MAP_COPY,
    METRICS,
    CsvLog,
    RunDir,
    RunError,
    load_checkpoint,
    plan_start,
    save_checkpoint,
    save_weights,
    write_json,
)
from .strategies import clip_parameters, make_strategy

log = logging.getLogger("alphaspec")


def _distributed() -> tuple[int, int, int]:
    """rank, world size, local rank: from an initialised process group, else torchrun's environment."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup, then cosine from 1 down to min_lr_ratio at the last step."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def make_optimizer(cfg: TrainConfig, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW (decoupled decay: θ ← θ − lr·(u + λθ)) or Adam with L2 decay (λθ added to the gradient), docs/math.md §4."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = {"fused": True} if device.type == "cuda" else {}
    return opt_cls(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **fused)


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None,
          on_start: Callable[[dict], None] | None = None, on_status: Callable[[str], None] | None = None,
          on_warning: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) one training run into cfg.out; returns the last metrics row. Launch with torchrun for
    DDP or FSDP2. on_status gets a line about each preparation step (reading, tokenising, ...),
    on_start run.json's contents once the model is built, on_log every metrics row, on_warning what the
    user should know (a damaged checkpoint passed over, a restart from step 0); all on rank 0 only."""
    cfg.validate()
    cfg = cfg.settled()
    rank, world, local = _distributed()
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo")
    # under torchrun each rank takes the GPU of its local rank, unless a device index was given
    one_gpu_each = world > 1 and cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    device = resolve_device(f"cuda:{local}" if one_gpu_each else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run = Path(cfg.out)
    rd = RunDir(run) if rank == 0 else None  # the lock: one trainer per run directory
    marks: dict = {}
    try:
        return _train(cfg, run, rd, rank, world, device, on_log, on_start, on_status or (lambda _: None),
                      on_warning or log.warning, marks)
    except BaseException:
        # A run that fails while being set up (bad decay map, bad data, ...) removes what it created, so the
        # same --out works again once the cause is fixed; what was there before stays. Once training started,
        # files stay.
        if rd is not None and not marks.get("started"):
            rd.remove_created()
        raise
    finally:
        if rd is not None:
            rd.release()
        if owns_group:
            dist.destroy_process_group()


def _open(cfg: TrainConfig, run: Path, rd: RunDir | None, rank: int, world: int, on_status,
          on_warning) -> tuple[TrainConfig, dict | None]:
    """The run's config and checkpoint (None for a fresh run), with its tokenizer and token streams ready."""
    how, ckpt_path, state = (plan_start(rd, cfg.resume), None, None) if rank == 0 else (None, None, None)
    if how == "resume":
        ckpt_path, state = load_checkpoint(run, on_warning)
    how, ckpt_path = _from_rank0([how, ckpt_path], world)
    if rank and ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if state:
        cfg = resumed_config(state["config"], cfg, where=ckpt_path)
        if state["step"] >= cfg.steps:
            raise RunError(f"{run}: the run is already at step {state['step']}; pass a larger --steps to extend it")
        missing = [f for f in ("tokenizer.json", "data/tokens.npy") if not (run / f).is_file()]
        if missing:
            raise RunError(f"{run}: cannot resume without {' and '.join(missing)} (the run directory is incomplete)")
    elif how == "restart":
        if (run / "run.json").exists():
            cfg = resumed_config(load_run_json(run)["config"], cfg, where=run / "run.json", from_checkpoint=False)
        if rank == 0:
            on_warning(f"{run} has no checkpoint yet: starting it again from step 0")
    if rank == 0:
        if how != "resume":  # the settings are on record from the start, so a run killed early can be restarted
            write_json(run / "run.json", {"config": asdict(cfg), "alphaspec": __version__})
        if cfg.decay_map and not (run / MAP_COPY).exists():  # the run keeps its own copy: resumable without it
            DecayMap.load(cfg.decay_map).save(run / MAP_COPY)
        datamod.prepare(run, cfg.data, cfg.vocab_size, cfg.tokenizer, cfg.val_data, on_status)
        on_status("building the model")
    _barrier(world)
    return cfg, state


def _from_rank0(values: list, world: int) -> list:
    """Rank 0's values on every rank (plain Python objects)."""
    if world > 1:
        dist.broadcast_object_list(values, src=0)
    return values


def _build(cfg: TrainConfig, mcfg: ModelConfig, state: dict | None, device: torch.device, world: int):
    """Model (wrapped for DDP/FSDP2), strategy, optimizer and scheduler, restored from `state` if given."""
    torch.manual_seed(cfg.seed)
    model = Llama(mcfg, lrm=cfg.multipliers).to(device)
    if state:
        model.load_state_dict(state["model"])
    net = parallel.wrap(model, world, device, cfg.sharding, _bf16(cfg, device))  # FSDP2 shards in place
    strategy = make_strategy(cfg)
    optimizer = make_optimizer(cfg, strategy.param_groups(model), device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    strategy.setup(net, optimizer, scheduler)
    if state:
        parallel.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"]["torch"])
        strategy.decay_rows()  # already in decay.csv
    return model, net, strategy, optimizer, scheduler


def _bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def _split(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps) that make up the global batch."""
    micro = cfg.micro_batch or max(1, cfg.batch_size // world)
    if cfg.batch_size % (micro * world):
        raise ConfigError(f"batch size {cfg.batch_size} is not a multiple of micro batch {micro} x {world} rank(s)")
    return micro, cfg.batch_size // (micro * world)


def _train(cfg: TrainConfig, run: Path, rd: RunDir | None, rank: int, world: int, device: torch.device, on_log,
           on_start, on_status, on_warning, marks: dict) -> dict:
    _split(cfg, world)  # before anything is written
    cfg, state = _open(cfg, run, rd, rank, world, on_status, on_warning)
    if cfg.gap is None:  # resolved once the run's own settings are known, and recorded in run.json
        cfg.gap = default_gap(cfg.steps)
    micro, accum = _split(cfg, world)
    vocab = datamod.load_tokenizer(run / "tokenizer.json").get_vocab_size()
    tokens = datamod.load_tokens(run, cfg.val_fraction, cfg.seq_len, vocab)
    mcfg = ModelConfig(vocab_size=vocab, max_position_embeddings=cfg.seq_len, **PRESETS[cfg.model])
    model, net, strategy, optimizer, scheduler = _build(cfg, mcfg, state, device, world)
    start = state["step"] if state else 0
    resume_at = start if state else None  # CSV rows past it are dropped
    fwd = torch.compile(net) if cfg.compile else net
    bf16 = _bf16(cfg, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    analyze_every = cfg.eval_every if cfg.analyze_every is None else cfg.analyze_every
    weights = hf_tensors(parallel.model_state(model), mcfg.tie_word_embeddings)
    first_alphas = spectra_rows(model, 0, cfg.estimator, rank) if not state and analyze_every else []
    if rank == 0:
        info = _run_info(cfg, run, device, world, count_params(model), micro, accum, bf16, resume_at)
        write_json(run / "run.json", info)
        if on_start:
            on_start({**info, "config": asdict(cfg), "start_step": start})  # the settings in force now
        save_weights(run, weights, mcfg.hf_config())
        metrics = CsvLog(run / "metrics.csv", METRICS, resume_at, on_warning)
        decays = CsvLog(run / "decay.csv", DECAYS, resume_at, on_warning)
        decays.write(strategy.decay_rows())
        alphas = CsvLog(run / "alphas.csv", ALPHAS, resume_at, on_warning)
        alphas.write(first_alphas)
    clip = clip_parameters(model)
    loss_sum, n_loss, t_last, last = torch.zeros((), device=device), 0, time.perf_counter(), {}
    marks["started"] = True
    for step in range(start + 1, cfg.steps + 1):
        for m in range(accum):
            x, y = tokens.batch(step, cfg.batch_size, cfg.seq_len, cfg.seed, rank * accum + m, world * accum)
            with parallel.sync_gradients(net, m == accum - 1):  # reduce over ranks on the last micro-batch only
                with autocast():
                    loss = F.cross_entropy(fwd(x.to(device)).float().flatten(0, 1), y.to(device).flatten())
                (loss / accum).backward()
            loss_sum += loss.detach()
            n_loss += 1
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(clip, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        strategy.before_step(step, net, optimizer, grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        strategy.after_step(step)
        new_decays = strategy.decay_rows()
        new_alphas = spectra_rows(model, step, cfg.estimator, rank) \
            if analyze_every and (step % analyze_every == 0 or step == cfg.steps) else []
        if rank == 0:
            decays.write(new_decays)
            alphas.write(new_alphas)
        do_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every and not do_eval:
            continue
        if world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world
        now = time.perf_counter()
        row = {"step": step, "tokens": step * cfg.batch_size * cfg.seq_len, "loss": float(loss_sum) / n_loss,
               "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
               "tokens_per_s": n_loss / accum * cfg.batch_size * cfg.seq_len / (now - t_last)}
        if do_eval:
            row["eval_loss"] = evaluate(net, tokens, cfg, micro, device, autocast, rank, world)
            row["eval_ppl"] = math.exp(min(row["eval_loss"], 50.0))
        last = row
        if rank == 0:
            metrics.write([row])
            if on_log:
                on_log(row)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _checkpoint(run, step, model, optimizer, scheduler, strategy, mcfg, cfg, rank)
        loss_sum.zero_()
        n_loss, t_last = 0, time.perf_counter()
    strategy.close()
    if rank == 0:
        decays.write(strategy.decay_rows())
        for log in (metrics, decays, alphas):
            log.close()
    return last


def spectra_rows(model: torch.nn.Module, step: int, estimator: str, rank: int = 0) -> list[dict]:
    """The fits and norms of the block matrices as they are now (the ESD engine of `analyze`), on rank 0.

    Every rank calls it: FSDP2 shards are gathered first.
    """
    tuned = {n: full_tensor(p.detach()) for n, p in model.named_parameters() if is_tuned_candidate(n, p)}
    if rank:
        return []
    table = analyze_tensors(tuned, estimator)
    table.insert(0, "step", step)
    return records(table[ALPHAS])


def _run_info(cfg: TrainConfig, run: Path, device: torch.device, world: int, params: int, micro: int, accum: int,
              bf16: bool, resumed_at: int | None) -> dict:
    """run.json: every setting, versions, hardware; a resume appends to the original's `resumed` list."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if resumed_at is not None:
        try:
            prev = load_run_json(run)
        except AlphaspecError as e:  # the record is damaged; the checkpoint holds the settings
            log.warning(f"{e}; writing it again from the checkpoint's settings")
            prev = {**_run_info(cfg, run, device, world, params, micro, accum, bf16, None), "started": None}
        return {**prev, "resumed": [*prev.get("resumed", []), {"step": resumed_at, "at": now, "argv": sys.argv}]}
    return {"argv": sys.argv, "config": asdict(cfg), "alphaspec": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "world_size": world,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "parameters": params,
            "micro_batch": micro, "grad_accum": accum,
            "precision": "bf16 autocast, fp32 master weights" if bf16 else "fp32", "started": now}


def _checkpoint(run, step, model, optimizer, scheduler, strategy, mcfg, cfg, rank) -> None:
    """checkpoints/step_N.pt and model.safetensors (every rank calls: FSDP2 state is gathered to rank 0)."""
    model_state, optim_state = parallel.model_state(model), parallel.optimizer_state(model, optimizer)
    if rank == 0:
        state = {"step": step, "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                 "strategy": strategy.state_dict(), "rng": {"torch": torch.get_rng_state()}, "config": asdict(cfg)}
        save_checkpoint(run, step, state, cfg.keep_checkpoints)
        save_weights(run, hf_tensors(model_state, mcfg.tie_word_embeddings), mcfg.hf_config())
    _barrier(dist.get_world_size() if dist.is_initialized() else 1)


@torch.no_grad()
def evaluate(net, tokens: datamod.TokenData, cfg: TrainConfig, micro: int, device, autocast, rank: int, world: int) -> float:
    """Mean next-token loss over the fixed validation windows (shared out over ranks)."""
    net.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for x, y in tokens.eval_batches(cfg.eval_windows, micro, cfg.seq_len, rank, world):
        with autocast():
            logits = net(x.to(device))
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").double()
        total[1] += y.numel()
    if world > 1:
        dist.all_reduce(total)
    net.train()
    return float(total[0] / total[1])


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


__all__ = ["ConfigError", "TrainConfig", "train", "evaluate", "RunError"]
