"""The training loop: config, setup (single process or torchrun DDP), steps, evaluation, checkpoints, resume."""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from alphaspec._version import __version__
from alphaspec.choices import LR_STRATEGIES
from alphaspec.distributed import full_tensor, launched, on_rank0, start_group
from alphaspec.errors import AlphaspecError
from alphaspec.maps.file import DecayMap
from alphaspec.maps.groups import is_tuned_candidate
from alphaspec.train import data as datamod
from alphaspec.train import parallel
from alphaspec.train.config import RESUMABLE, ConfigError, TrainConfig, default_gap, resumed_config
from alphaspec.train.model import PRESETS, Llama, ModelConfig, count_params, hf_tensors, is_multiplier, model_flops_per_token
from alphaspec.train.observe import multiplier_rows, spectra_rows
from alphaspec.train.optim import make_optimizer
from alphaspec.train.placement import check_fits, on_device, peak_flops, select_device
from alphaspec.train.reporting import Reporter, module_means, row_scalars
from alphaspec.train.rundir import (
    LOGS,
    MAP_COPY,
    RUN_JSON,
    CsvLog,
    RunDir,
    RunError,
    load_checkpoint,
    load_run_json,
    plan_start,
    save_checkpoint,
    save_weights,
    write_json,
)
from alphaspec.train.strategies import Strategy, clip_parameters, make_strategy, mup_width_mult

log = logging.getLogger("alphaspec")


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup, then cosine from 1 down to min_lr_ratio at the last step."""
    s = cfg.schedule

    def f(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None,
          on_start: Callable[[dict], None] | None = None, on_status: Callable[[str], None] | None = None,
          on_warning: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) one training run into cfg.run.out; returns the last metrics row. Launch with torchrun for
    DDP or FSDP2. on_status gets a line about each preparation step (reading, tokenising, ...),
    on_start run.json's contents once the model is built, on_log every metrics row, on_warning what the
    user should know (a damaged checkpoint passed over, a restart from step 0); all on rank 0 only."""
    cfg.validate()
    cfg = cfg.settled()
    rank, world, local = launched()
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        start_group("nccl" if torch.cuda.is_available() and cfg.hardware.device != "cpu" else "gloo")
    device = select_device(cfg.hardware.device, world, local)
    run = Path(cfg.run.out)
    rd = RunDir(run) if rank == 0 else None  # the lock: one trainer per run directory
    marks: dict = {}
    try:
        with on_device(device):
            return _train(cfg, run, rd, rank, world, device, on_log, on_start, on_status or (lambda _: None),
                          on_warning or log.warning, marks)
    except BaseException:
        # A run that fails while being set up (bad decay map, bad data, ...) removes what it created, so the
        # same --out works again once the cause is fixed; what was there before stays. Once training started,
        # files stay, unless the loss diverged before anything was saved.
        if rd is not None and (not marks.get("started") or (marks.get("diverged") and not marks.get("saved"))):
            rd.remove_created()
        raise
    finally:
        if rd is not None:
            rd.release()
        if owns_group:
            dist.destroy_process_group()


class Diverged(RunError):
    """The training loss became NaN or infinite: the run stops (with the loss it reached) rather than going on."""


def _open(cfg: TrainConfig, run: Path, rd: RunDir | None, rank: int, world: int, on_status,
          on_warning) -> tuple[TrainConfig, dict | None]:
    """The run's config and checkpoint (None for a fresh run), with its tokenizer and token streams ready."""
    kept: dict = {}  # rank 0's checkpoint, loaded once

    def plan() -> tuple[str, Path | None]:
        how = plan_start(rd, cfg.run.resume)
        if how == "resume":
            kept["path"], kept["state"] = load_checkpoint(run, on_warning)
        return how, kept.get("path")

    how, ckpt_path = on_rank0(plan, world)
    state = kept.get("state")
    if rank and ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if state:
        cfg = resumed_config(state["config"], cfg, where=ckpt_path)
        if state["step"] >= cfg.schedule.steps:
            raise RunError(f"{run}: the run is already at step {state['step']}; pass a larger --steps to extend it")
        data_record = "data/tokens.npy" if (run / "data" / "tokens.npy").is_file() else "data/cache.json"
        missing = [f for f in ("tokenizer.json", data_record) if not (run / f).is_file()]
        if missing:
            raise RunError(f"{run}: cannot resume without {' and '.join(missing)} (the run directory is incomplete)")
    elif how == "restart":
        if (run / RUN_JSON).exists():
            cfg = resumed_config(load_run_json(run)["config"], cfg, where=run / RUN_JSON, from_checkpoint=False)
        if rank == 0:
            on_warning(f"{run} has no checkpoint yet: starting it again from step 0")

    def record() -> None:
        if how != "resume":  # the settings are on record from the start, so a run killed early can be restarted
            write_json(run / RUN_JSON, {"config": cfg.flat(), "alphaspec": __version__})
        if cfg.decay.decay_map and not (run / MAP_COPY).exists():  # the run keeps its own copy: resumable without it
            DecayMap.load(cfg.decay.decay_map).save(run / MAP_COPY)
        datamod.prepare(run, cfg.data, on_status)
        on_status("building the model")

    on_rank0(record, world)  # the other ranks wait here, and stop with rank 0's error if it fails
    return cfg, state


def _build(cfg: TrainConfig, mcfg: ModelConfig, state: dict | None, device: torch.device, world: int):
    """Model (wrapped for DDP/FSDP2), strategy, optimizer and scheduler, restored from `state` if given."""
    torch.manual_seed(cfg.run.seed)
    mup = mup_width_mult(cfg, mcfg.hidden_size) if cfg.decay.strategy == "mup" else None
    model = Llama(mcfg, lrm=cfg.model.multipliers, mup_width_mult=mup).to(device)
    if state:
        model.load_state_dict(state["model"])
    net = parallel.wrap(model, world, device, cfg.hardware.sharding, _bf16(cfg, device))  # FSDP2 shards in place
    strategy = make_strategy(cfg)
    muon = {id(p) for n, p in model.named_parameters() if is_tuned_candidate(n, p) and not is_multiplier(n)}
    optimizer = make_optimizer(cfg, strategy.param_groups(model), device, muon)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    strategy.setup(net, optimizer, scheduler)
    if state:
        parallel.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"]["torch"])
        strategy.decay_rows(), strategy.lr_rows()  # already in decay.csv and lr.csv
    return model, net, strategy, optimizer, scheduler


def _bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.hardware.precision == "bf16" or (cfg.hardware.precision == "auto" and device.type == "cuda")


def _split(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps) that make up the global batch."""
    micro = cfg.optimizer.micro_batch or max(1, cfg.optimizer.batch_size // world)
    if cfg.optimizer.batch_size % (micro * world):
        raise ConfigError(f"batch size {cfg.optimizer.batch_size} is not a multiple of micro batch {micro} x {world} rank(s)")
    return micro, cfg.optimizer.batch_size // (micro * world)


@dataclass
class TrainingState:
    """Everything one training run holds, built once by `_prepare` and passed to each phase of the loop."""

    cfg: TrainConfig
    path: Path
    rank: int
    world: int
    device: torch.device
    micro: int  # sequences per forward pass on this rank
    accum: int  # micro-batches per optimizer step
    tokens: datamod.TokenData
    mcfg: ModelConfig
    model: torch.nn.Module  # the bare model (names, checkpoints, spectra)
    net: torch.nn.Module  # what trains: the model, DDP-wrapped or FSDP2-sharded
    forward: Callable  # net, compiled when asked
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: Callable
    analyze_every: int
    start: int  # the step the run starts after (0, or the checkpoint's)
    clip: list = field(default_factory=list)  # what gradient clipping sees (not the learnable multipliers)
    logs: dict = field(default_factory=dict)  # metrics, decays, alphas (CsvLog, rank 0 only)
    reporter: Reporter | None = None  # --report-to: TensorBoard or W&B (rank 0 only)
    notify: Callable[[str], None] = print  # a line for the console (on_status): a refresh of the decays


def _train(cfg: TrainConfig, path: Path, rd: RunDir | None, rank: int, world: int, device: torch.device, on_log,
           on_start, on_status, on_warning, marks: dict) -> dict:
    """Set up, then the step loop: batch, forward/backward, clip, step, strategy, log, evaluate, checkpoint."""
    r = _prepare(cfg, path, rd, rank, world, device, on_start, on_status, on_warning)
    try:
        return _steps(r, path, marks, on_log)
    finally:  # the logs are closed however the loop ends (a diverged loss, Ctrl-C, an error)
        for csv_log in r.logs.values():
            csv_log.close()
        if r.reporter is not None:
            r.reporter.close()


def _steps(r: TrainingState, path: Path, marks: dict, on_log) -> dict:
    """The step loop: batch, forward/backward, clip, step, strategy, log, evaluate, checkpoint."""
    cfg, rank, device, last = r.cfg, r.rank, r.device, {}
    loss_sum, n_loss, n_tokens, t_last = torch.zeros((), device=device), 0, 0, time.perf_counter()
    marks["started"] = True
    for step in range(r.start + 1, cfg.schedule.steps + 1):
        # forward and backward over the micro-batches; gradients are reduced over ranks on the last one only
        loss, tokens = _accumulate(r, step)
        loss_sum += loss
        n_loss, n_tokens = n_loss + r.accum, n_tokens + tokens
        # clip, step, and let the strategy set its decays around the optimizer step
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(r.clip, cfg.optimizer.grad_clip or math.inf))
        r.strategy.before_step(step, r.net, r.optimizer, grad_norm)
        r.optimizer.step()
        r.scheduler.step()
        r.optimizer.zero_grad(set_to_none=True)
        r.strategy.after_step(step)
        _record_decays_and_spectra(r, step)
        # log (every log_every steps, at each evaluation and at each checkpoint), evaluate, checkpoint
        do_eval = step % cfg.run.eval_every == 0 or step == cfg.schedule.steps
        do_save = step % cfg.run.checkpoint_every == 0 or step == cfg.schedule.steps
        if step % cfg.run.log_every and not do_eval and not do_save:
            continue  # a logged interval always ends at a checkpoint, so a resumed run logs what this one does
        last = _log(r, step, loss_sum, n_loss, n_tokens, grad_norm, time.perf_counter() - t_last, do_eval, on_log)
        if what := _not_finite(r, last, do_save):  # every rank sees the same reduced values, so every rank stops
            marks["diverged"] = True
            raise Diverged(f"{path}: {what} by step {step} (lr {last['lr']:.3g}); the run stopped"
                           + (", its last checkpoint kept" if marks.get("saved") else " and was removed, as nothing "
                              "was saved yet") + ". Lower --lr or the weight decay, or raise --warmup-steps")
        if do_save:
            _checkpoint(path, step, r.model, r.optimizer, r.scheduler, r.strategy, r.mcfg, cfg, rank)
            marks["saved"] = True
        loss_sum.zero_()
        n_loss, n_tokens, t_last = 0, 0, time.perf_counter()
    r.strategy.close()
    if rank == 0:
        _publish(r, cfg.schedule.steps, r.strategy.decay_rows(), [], [], r.strategy.lr_rows())
    return last


def _prepare(cfg: TrainConfig, path: Path, rd: RunDir | None, rank: int, world: int, device: torch.device, on_start,
             on_status, on_warning) -> TrainingState:
    """The run's settings, data, model, optimizer and strategy (from its checkpoint when resuming), and the
    files a run starts with: run.json, the weights, the logs (rows past the checkpoint dropped)."""
    _split(cfg, world)  # before anything is written
    cfg, state = _open(cfg, path, rd, rank, world, on_status, on_warning)
    if cfg.decay.gap is None:  # resolved once the run's own settings are known, and recorded in run.json
        cfg = cfg.with_options(gap=default_gap(cfg.schedule.steps))
    if rank == 0 and (inert := cfg.inert()):  # set on purpose, read by nothing: said, not dropped in silence
        on_warning(f"{', '.join(inert)} ha{'ve' if len(inert) > 1 else 's'} no effect on this run (strategy "
                   f"{cfg.decay.strategy}, optimizer {cfg.optimizer.name}); see alphaspec train --help")
    if rank == 0 and cfg.schedule.warmup_steps > cfg.schedule.steps:
        on_warning(f"--warmup-steps {cfg.schedule.warmup_steps} is longer than --steps {cfg.schedule.steps}: the "
                   f"learning rate stops at {cfg.schedule.steps / cfg.schedule.warmup_steps:.0%} of --lr and never "
                   "decays (lower --warmup-steps)")
    micro, accum = _split(cfg, world)
    vocab = datamod.load_tokenizer(path / "tokenizer.json").get_vocab_size()
    tokens = datamod.load_tokens(path, cfg.data.val_fraction, cfg.data.seq_len, vocab, cfg.data.packing)
    if on_status and rank == 0 and tokens.held_out:
        on_status(f"validation: {tokens.held_out}")
    mcfg = ModelConfig(vocab_size=vocab, max_position_embeddings=cfg.data.seq_len, **PRESETS[cfg.model.name])
    check_fits(mcfg, micro, cfg.data.seq_len, device)
    model, net, strategy, optimizer, scheduler = _build(cfg, mcfg, state, device, world)
    bf16 = _bf16(cfg, device)
    r = TrainingState(
        cfg=cfg, path=path, rank=rank, world=world, device=device, micro=micro, accum=accum, tokens=tokens, mcfg=mcfg,
        model=model, net=net, forward=torch.compile(net) if cfg.hardware.compile else net, strategy=strategy,
        optimizer=optimizer, scheduler=scheduler,
        autocast=(lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext,
        analyze_every=cfg.run.eval_every if cfg.run.analyze_every is None else cfg.run.analyze_every,
        start=state["step"] if state else 0, clip=clip_parameters(model))
    resume_at = r.start if state else None  # CSV rows past it are dropped
    weights = hf_tensors(parallel.model_state(model), mcfg.tie_word_embeddings)
    first = not state and r.analyze_every
    first_alphas = spectra_rows(model, 0, cfg.decay.estimator, rank) if first else []
    first_multipliers = multiplier_rows(model, 0, rank) if first else []
    if rank == 0:
        info = _run_info(cfg, path, device, world, count_params(model), micro, accum, bf16, resume_at)
        write_json(path / RUN_JSON, info)
        if on_start:  # the settings in force now, and what the console needs for MFU
            on_start({**info, "config": cfg.flat(), "start_step": r.start, "peak_flops": peak_flops(device),
                      "flops_per_token": model_flops_per_token(mcfg, cfg.data.seq_len)})
        save_weights(path, weights, mcfg.hf_config())
        kept = [name for name in LOGS if (name != "multipliers" or cfg.model.multipliers != "none")
                and (name != "lrs" or cfg.decay.strategy in LR_STRATEGIES)]
        r.logs = {name: CsvLog(path / LOGS[name][0], LOGS[name][1], resume_at, on_warning) for name in kept}
        r.notify = on_status
        if cfg.run.report_to != "none":
            r.reporter = Reporter(cfg.run.report_to, path, cfg.flat(), on_status)
        _publish(r, r.start, strategy.decay_rows(), first_alphas, first_multipliers, strategy.lr_rows())
    return r


def _accumulate(r: TrainingState, step: int) -> tuple[torch.Tensor, int]:
    """Forward and backward over this rank's micro-batches of `step`: the sum of their losses, and the
    tokens they were computed on (padding, target IGNORE, is in neither)."""
    total, tokens = torch.zeros((), device=r.device), 0
    cfg = r.cfg
    for m in range(r.accum):
        x, y = r.tokens.batch(step, cfg.optimizer.batch_size, cfg.data.seq_len, cfg.run.seed, r.rank * r.accum + m,
                              r.world * r.accum)
        with parallel.sync_gradients(r.net, m == r.accum - 1):
            with r.autocast():
                loss = F.cross_entropy(r.forward(x.to(r.device)).float().flatten(0, 1), y.to(r.device).flatten())
            (loss / r.accum).backward()
        total += loss.detach()
        tokens += int((y != datamod.IGNORE).sum())
    return total, tokens


def _record_decays_and_spectra(r: TrainingState, step: int) -> None:
    """The decays the strategy set at this step, and the block matrices' fits every analyze_every steps."""
    new_decays, new_lrs = r.strategy.decay_rows(), r.strategy.lr_rows()  # drained on every rank, written on 0
    due = r.analyze_every and (step % r.analyze_every == 0 or step == r.cfg.schedule.steps)
    new_alphas = spectra_rows(r.model, step, r.cfg.decay.estimator, r.rank) if due else []  # every rank (FSDP2 gathers)
    new_multipliers = multiplier_rows(r.model, step, r.rank) if due else []
    if r.rank == 0:
        _publish(r, step, new_decays, new_alphas, new_multipliers, new_lrs)


def _publish(r: TrainingState, step: int, decays: list[dict], alphas: list[dict], multipliers: list[dict],
             lrs: list[dict]) -> None:
    """Rank 0: new decay, alpha and multiplier rows into their CSV logs, their means per module type to the
    --report-to writer, and a console line when a strategy refreshed its decays."""
    r.logs["decays"].write(decays)
    r.logs["alphas"].write(alphas)
    for name, rows in (("multipliers", multipliers), ("lrs", lrs)):
        if name in r.logs:
            r.logs[name].write(rows)
    if r.reporter is not None:
        r.reporter.scalars(step, module_means(decays, "weight_decay", "weight_decay") | module_means(alphas, "alpha", "alpha")
                           | module_means(lrs, "lr_scale", "lr_scale"))
    for rows, key, what in ((decays, "weight_decay", "decays"), (lrs, "lr_scale", "learning-rate multipliers")):
        if rows and step > 0 and r.strategy.refreshes:
            v = [row[key] for row in rows]
            r.notify(f"step {step}: {r.cfg.decay.strategy} refreshed {len(v)} {what}: {min(v):.3g} to {max(v):.3g}, "
                     f"mean {sum(v) / len(v):.3g}")


def _not_finite(r: TrainingState, row: dict, saving: bool) -> str | None:
    """What of the training state is no longer a finite number (None when all is): the loss, the gradient norm,
    the evaluation loss, and before a save the weights (a decay of 1e30 makes NaN weights while the loss of the
    step before still reads finite)."""
    for key, what in (("loss", "the training loss"), ("grad_norm", "the gradient norm"),
                      ("eval_loss", "the evaluation loss")):
        if key in row and not math.isfinite(row[key]):
            return f"{what} became {row[key]}"
    if not saving:
        return None
    bad = torch.zeros((), device=r.device)
    for p in r.model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP shard: each rank checks its own
        bad = torch.maximum(bad, (~torch.isfinite(local.detach())).any().to(bad.dtype))
    if r.world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return "the weights hold NaN or infinite values" if bool(bad) else None


def _log(r: TrainingState, step: int, loss_sum: torch.Tensor, n_loss: int, n_tokens: int, grad_norm: torch.Tensor,
         seconds: float, do_eval: bool, on_log) -> dict:
    """One metrics row: mean loss over the interval (all ranks), lr, grad norm, tokens/s (this rank's
    tokens, padding left out, times the ranks), evaluation."""
    cfg = r.cfg
    if r.world > 1:
        dist.all_reduce(loss_sum)
        loss_sum /= r.world
    row = {"step": step, "tokens": step * cfg.optimizer.batch_size * cfg.data.seq_len, "loss": float(loss_sum) / n_loss,
           "lr": cfg.optimizer.lr * r.scheduler.lr_lambdas[0](r.scheduler.last_epoch),  # --lr on its schedule
           "grad_norm": float(grad_norm),
           "tokens_per_s": n_tokens * r.world / seconds}
    if do_eval:
        row["eval_loss"] = evaluate(r.net, r.tokens, cfg, r.micro, r.device, r.autocast, r.rank, r.world)
        row["eval_ppl"] = math.exp(min(row["eval_loss"], 50.0))
    if r.rank == 0:
        r.logs["metrics"].write([row])
        if r.reporter is not None:
            r.reporter.scalars(step, row_scalars(row))
        if on_log:
            on_log(row)
    return row


def _run_info(cfg: TrainConfig, run: Path, device: torch.device, world: int, params: int, micro: int, accum: int,
              bf16: bool, resumed_at: int | None) -> dict:
    """run.json: every setting (those in force: a resume that extends --steps updates them), versions,
    hardware; a resume appends to the `resumed` list when, how and what it changed ({option: [was, now]})."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if resumed_at is not None:
        try:
            prev = load_run_json(run)
        except AlphaspecError as e:  # the record is damaged; the checkpoint holds the settings
            log.warning(f"{e}; writing it again from the checkpoint's settings")
            prev = {**_run_info(cfg, run, device, world, params, micro, accum, bf16, None), "started": None}
        was, asked = prev.get("config", {}), cfg.flat()  # a resume changes only the RESUMABLE options
        changed = {k: [was[k], asked[k]] for k in RESUMABLE if k in was and k != "resume" and was[k] != asked[k]}
        config = {**was, **{k: new for k, (_, new) in changed.items()}}
        return {**prev, "config": config, "resumed": [*prev.get("resumed", []), {"step": resumed_at, "at": now,
                                                                                  "argv": sys.argv, "changed": changed}]}
    return {"argv": sys.argv, "config": cfg.flat(), "alphaspec": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "world_size": world,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "parameters": params,
            "micro_batch": micro, "grad_accum": accum,
            "precision": "bf16 autocast, fp32 master weights" if bf16 else "fp32", "started": now}


def _checkpoint(run, step, model, optimizer, scheduler, strategy, mcfg, cfg, rank) -> None:
    """checkpoints/step_N.pt and model.safetensors (every rank calls: FSDP2 state is gathered to rank 0)."""
    model_state, optim_state = parallel.model_state(model), parallel.optimizer_state(model, optimizer)

    def save() -> None:
        state = {"step": step, "model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
                 "strategy": strategy.state_dict(), "rng": {"torch": torch.get_rng_state()}, "config": cfg.flat()}
        # The weights first, the checkpoint last: the checkpoint is what a resume starts from, so a kill between
        # the two resumes from the step before and writes both again (the other order left a finished run whose
        # model.safetensors was a checkpoint old: "already at step N", nothing to redo).
        save_weights(run, hf_tensors(model_state, mcfg.tie_word_embeddings), mcfg.hf_config())
        save_checkpoint(run, step, state, cfg.run.keep_checkpoints)

    on_rank0(save, dist.get_world_size() if dist.is_initialized() else 1)


@torch.no_grad()
def evaluate(net, tokens: datamod.TokenData, cfg: TrainConfig, micro: int, device, autocast, rank: int, world: int) -> float:
    """Mean next-token loss over the fixed validation windows (shared out over ranks)."""
    net.eval()
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for x, y in tokens.eval_batches(cfg.run.eval_windows, micro, cfg.data.seq_len, rank, world):
        with autocast():
            logits = net(x.to(device))
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").double()
        total[1] += (y != datamod.IGNORE).sum()
    if world > 1:
        dist.all_reduce(total)
    net.train()
    return float(total[0] / total[1])


__all__ = ["ConfigError", "TrainConfig", "train", "evaluate", "RunError"]
