"""AlphaDecay in any training loop: module-wise decays recomputed from the live weights every `gap` steps
(maps/lr_hook.py's AlphaLR does the same for learning rates, on this machinery).

    hook = AlphaDecay(model, optimizer, weight_decay=0.1, gap=500)
    for batch in data:
        loss(model, batch).backward(); optimizer.step(); optimizer.zero_grad()
        hook.step()

Each tuned matrix gets its own optimizer param group (split off the group it was in, keeping that
group's hyperparameters; build the hook before the LR scheduler, or pass `scheduler=` so its
per-group lists follow). Under torch.distributed every rank solves only its share of the matrices
and the metric rows are all-gathered, so every rank applies identical decays.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import pandas as pd
import torch
import torch.distributed as dist

from alphaspec.analysis.engine import analyze_tensors
from alphaspec.analysis.rows import ordered_table, records
from alphaspec.distributed import full_tensor, process_group, share_of_work
from alphaspec.errors import AlphaspecError, first_line
from alphaspec.maps.alphadecay import build_decay_map
from alphaspec.maps.groups import is_tuned_candidate, merge_param_groups, own_groups, split_param_groups
from alphaspec.maps.spec import DecayMapError, DecaySpec, decay_spec, hook_settings_problem
from alphaspec.sources.in_memory import model_config

log = logging.getLogger("alphaspec")


class AlphaDecay:
    """Module-wise weight decay from the spectra of the live weights (AlphaDecay, docs/math.md §3).

    weight_decay: base decay w (default: the optimizer's). spec: the DecaySpec (ratio, assign, metric,
    preserve_mean, estimator, include, exclude, paper_compat, as in `alphaspec decay-map`); keyword
    `options` set its fields one by one. gap: refresh every `gap` calls of step(). warmup: "init"
    computes decays from the initial weights at construction (the paper), "uniform" keeps w until the
    first refresh. overlap: snapshot the weights and solve in a worker thread (on a side CUDA stream
    for GPU weights) while training goes on; the decays are applied when ready (under
    torch.distributed: at the next step, on every rank alike) and `staleness` says how many steps old
    they were. A refresh due while one is in flight is skipped. "auto" (the default) overlaps. A refresh
    whose solve fails (out of GPU memory, no convergence) keeps the decays in force and logs one warning;
    `failed_refreshes` counts them.
    keep_history: how many refreshes `history` keeps (the oldest go first; None keeps all: a long run with a
    short gap then grows it without bound); `drain_history()` hands over the rows kept and empties it.
    config: the model's config.json as a dict (default: `model.config`, as Hugging Face models carry
    it), which says how fused tensors split, exactly as `analyze` reads the checkpoint. With
    paper_compat the first Linear keeps w, as in the release; unlike the release, biases keep the
    decay of the group they were in.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, weight_decay: float | None = None,
                 spec: DecaySpec | None = None, *, gap: int = 500, warmup: str = "init", overlap: bool | str = "auto",
                 scheduler=None, config: dict | None = None, keep_history: int | None = 100, **options):
        if problem := hook_settings_problem(gap=gap, warmup=warmup, keep_history=keep_history):
            raise ValueError(problem)
        self.spec = spec = decay_spec(spec, options)
        model = getattr(model, "module", model)  # DistributedDataParallel
        self.config = model_config(model) if config is None else dict(config)
        inc, exc = [re.compile(p) for p in spec.include], [re.compile(p) for p in spec.exclude]
        self.tuned = {n: p for n, p in model.named_parameters()
                      if (any(r.search(n) for r in inc) if inc else is_tuned_candidate(n, p))
                      and not any(r.search(n) for r in exc)}
        if not self.tuned:
            raise DecayMapError("no parameters to tune: no matrices inside transformer blocks (see include=)")
        self.weight_decay = float(optimizer.defaults.get("weight_decay", 0.0) if weight_decay is None else weight_decay)
        self.gap = gap
        self.optimizer, self.scheduler = optimizer, scheduler
        self._originals = list(optimizer.param_groups)  # the groups as given, for merge_groups()
        self.groups = split_param_groups(optimizer, self.tuned, scheduler)
        self.rank, self.world = process_group()
        self.owned = share_of_work(self.tuned, self.rank, self.world)
        on_cuda = next(iter(self.tuned.values())).is_cuda
        self.overlap = True if overlap == "auto" else bool(overlap)  # measured faster on CPU too (docs/benchmarks.md)
        self._executor: ThreadPoolExecutor | None = None  # the worker thread of overlapped refreshes, made when needed
        self._stream = torch.cuda.Stream(next(iter(self.tuned.values())).device) if self.overlap and on_cuda else None
        self._pending: tuple[int, Future] | None = None
        self.step_count = 0
        self.metrics: dict[str, float] = {}
        self.decays: dict[str, float] = dict.fromkeys(self.tuned, self.weight_decay)
        self.staleness: int | None = None
        self.refreshes = 0
        self.failed_refreshes = 0  # refreshes whose solve failed (out of memory, ...): their decays were kept
        self._history: deque[list[dict]] = deque(maxlen=keep_history)  # one list of rows per refresh
        self.modules: dict[str, str] = {}  # module type of each row of the latest refresh
        self._set(self.decays)
        if warmup == "init":
            self._apply(self._gather(self._solve(self._snapshot())), 0)

    @property
    def history(self) -> list[dict]:
        """(step, name, module, layer, metric, and weight_decay or lr_scale) of each matrix at each refresh kept."""
        return [row for rows in self._history for row in rows]

    def drain_history(self) -> list[dict]:
        """The rows of `history`, handed over once: `history` is empty after (a logger's way to keep memory flat)."""
        rows = self.history
        self._history.clear()
        return rows

    @property
    def alphas(self) -> dict[str, float]:
        """The latest metric per tuned parameter (alpha unless another metric was chosen)."""
        return self.metrics

    def step(self) -> None:
        """Call once after every optimizer.step()."""
        self.step_count += 1
        if self._pending is not None:
            started, future = self._pending
            # Single process: apply whenever ready. Distributed: every rank applies at the next step,
            # so the all-gather happens at the same point on all ranks.
            if self.world > 1 or future.done():
                self._pending = None
                self._apply(self._gather(future.result()), started)
        if self.step_count % self.gap == 0 and self._pending is None:
            snapshot = self._snapshot()
            if not self.overlap:
                self._apply(self._gather(self._solve(snapshot)), self.step_count)
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="alphadecay")
                self._pending = (self.step_count, self._executor.submit(self._solve, snapshot))

    def close(self, apply: bool = True) -> None:
        """Apply a refresh still in flight (or, with apply=False, let it finish unused: at the end of training
        no optimizer step would see it) and stop the worker thread (under distributed: on every rank).

        The hook stays usable: a later step() starts a new worker when it needs one.
        """
        if self._pending is not None:
            started, future = self._pending
            self._pending = None
            result = future.result()
            if apply:
                self._apply(self._gather(result), started)
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def merge_groups(self) -> None:
        """Put the optimizer's param groups back as they were given (for a checkpoint that an optimizer
        built the ordinary way can load); `split_groups()` splits them again with the decays in force."""
        merge_param_groups(self.optimizer, self._originals, self.scheduler)
        self.groups = {}

    def split_groups(self) -> None:
        """One param group per tuned matrix again, after `merge_groups()`, with the decays in force."""
        self._originals = list(self.optimizer.param_groups)
        self.groups = split_param_groups(self.optimizer, self.tuned, self.scheduler)
        self._set(self.decays)

    def summary(self) -> dict[str, float]:
        """The latest refresh by module type: mean metric and mean decay (e.g. `alpha/att.q`, `weight_decay/mlp.up`)."""
        if not self.modules:
            return {}
        latest = pd.DataFrame({"module": self.modules, "metric": self.metrics,
                               "weight_decay": {n: self.decays[n] for n in self.modules}})
        means = latest.groupby("module", sort=True)[["metric", "weight_decay"]].mean()
        metric = self.spec.metric
        return {f"{metric}/{module}": float(row.metric) for module, row in means.iterrows()} | {
            f"weight_decay/{module}": float(row.weight_decay) for module, row in means.iterrows()}

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the refresh schedule: step count, latest decays and metrics.

        A refresh still in flight is not included; save after close(), or accept that it is redone.
        """
        return {"step_count": self.step_count, "decays": dict(self.decays), "metrics": dict(self.metrics),
                "modules": dict(self.modules), "refreshes": self.refreshes, "staleness": self.staleness}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict() and write its decays into the optimizer groups."""
        unknown = set(state["decays"]) - set(self.tuned)
        if unknown:
            raise DecayMapError(f"state holds decays for parameters this hook does not tune: {sorted(unknown)[:3]}")
        self.step_count, self.refreshes, self.staleness = state["step_count"], state["refreshes"], state["staleness"]
        self.decays, self.metrics = {**self.decays, **state["decays"]}, dict(state["metrics"])
        self.modules = dict(state.get("modules", {}))
        self._set(self.decays)

    def _snapshot(self) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
        """The owned matrices as they are now (views when solved in line, copies when solved alongside
        training), and on a GPU the event the side stream waits for before it reads them.

        The copies are made on the training stream, in order with the gathers that produce them: an
        FSDP2 full tensor is freed when the next one is gathered, and its memory reused at once.
        """
        snap = {}
        for name in sorted(self.tuned):
            full = full_tensor(self.tuned[name].detach())  # a collective under FSDP2: every rank, every matrix
            if name in self.owned:
                snap[name] = full.clone() if self.overlap else full
        if self._stream is None:
            return snap, None
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self._stream.device))
        return snap, ready

    def _solve(self, taken: tuple[dict[str, torch.Tensor], torch.cuda.Event | None]) -> pd.DataFrame | list[dict] | str:
        """The owned matrices' table (under torch.distributed as plain rows, which travel between ranks), or
        the one-line reason the solve failed (out of memory, no convergence): training goes on without it."""
        snapshot, ready = taken
        if not snapshot:
            return []
        try:
            if self._stream is None:
                table = self._analyze(snapshot)
            else:
                with torch.cuda.device(self._stream.device), torch.cuda.stream(self._stream):
                    self._stream.wait_event(ready)
                    for t in snapshot.values():  # made on the training stream, read and freed on this one
                        t.record_stream(self._stream)
                    table = self._analyze(snapshot)
        except (AlphaspecError, RuntimeError) as err:
            return first_line(err)
        return records(table) if self.world > 1 else table

    def _analyze(self, snapshot: dict[str, torch.Tensor]) -> pd.DataFrame:
        # FARMS alphas are fitted only when they are the metric (they cost many window solves)
        return analyze_tensors(snapshot, self.spec.estimator, config=self.config,
                               split_fused=not self.spec.paper_compat, farms=self.spec.metric == "alpha_farms")

    def _gather(self, rows: pd.DataFrame | list[dict] | str) -> pd.DataFrame | str:
        """The whole table from every rank's rows, or the first rank's failure (then every rank keeps its decays)."""
        if self.world == 1:
            return rows  # already the whole table, in the order of analyze
        parts: list = [None] * self.world
        dist.all_gather_object(parts, rows)
        failed = [(r, p) for r, p in enumerate(parts) if isinstance(p, str)]
        if failed:
            return f"rank {failed[0][0]}: {failed[0][1]}"
        return ordered_table([r for part in parts for r in part])  # the order of analyze: blocks by layer, then type

    def _apply(self, table: pd.DataFrame | str, started: int) -> None:
        if isinstance(table, str):  # the refresh failed: the decays in force stay, and the user hears it once
            self.failed_refreshes += 1
            if self.failed_refreshes == 1:
                log.warning(f"AlphaDecay: the refresh of step {started} failed ({table}); keeping the decays in "
                            "force (later failures are counted in failed_refreshes, not reported)")
            return
        # the tuned set was chosen above (include/exclude); the map takes every row of the solved table
        dmap = build_decay_map(table, self.weight_decay, replace(self.spec, include=(), exclude=()), all_rows=True)
        metric = self.spec.metric
        self.decays = dmap.decays()
        if dmap.notes and not self.refreshes:  # the shape note, once
            log.warning(f"AlphaDecay: note: {dmap.notes[0]}")
        self.metrics = {m["name"]: m[metric] for m in dmap.modules}
        self.modules = {m["name"]: m["module"] for m in dmap.modules}
        self._set(self.decays)
        self.staleness = self.step_count - started
        self.refreshes += 1
        self._history.append([{"step": self.step_count, "name": m["name"], "module": m["module"], "layer": m["layer"],
                               "metric": m[metric], "weight_decay": m["weight_decay"]} for m in dmap.modules])

    def _live_groups(self) -> dict[str, dict]:
        """Each tuned parameter's own group as the optimizer holds it now: optimizer.load_state_dict() (a resumed
        run) replaces the group dicts. None while merged (merge_groups): split_groups() sets them."""
        if self.groups:
            self.groups = own_groups(self.optimizer, self.tuned)
        return self.groups

    def _set(self, decays: dict[str, float]) -> None:
        groups = self._live_groups()
        for name, wd in decays.items():
            if name in groups:
                groups[name]["weight_decay"] = wd
