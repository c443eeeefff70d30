"""analyze() split over the ranks of a torch.distributed job (`torchrun ... -m alphaspec analyze`).

Every rank reads the tensor headers and plans the same module map, then takes its share of the
checkpoint's tensors, balanced by solve cost (distributed.split_by_cost). A tensor's matrices (the
parts of a fused tensor, the experts of a stacked one) stay together, so each tensor is read once
in the whole job, and a rank opens only the files holding its tensors. Ranks solve on their own
device; every rank ends with the whole table (rank 0 also with the spectra). Progress counts the
whole job through the process group's store; one failing rank fails every rank (gather_outcomes).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from alphaspec.analysis.options import AnalysisOptions
from alphaspec.analysis.solve import Analysis, assemble, plan_checkpoint, solve_matrices, solve_options
from alphaspec.devices import resolve_device
from alphaspec.distributed import gather_outcomes, launched, object_group, solve_cost, split_by_cost
from alphaspec.sources.checkpoint import Checkpoint
from alphaspec.sources.deltas import open_source
from alphaspec.sources.matrices import MatrixSpec

_CALLS = itertools.count()  # every rank calls analyze in the same order: the n-th call shares its store keys
POLL_SECONDS = 0.25
STORE_SECONDS = 30  # how long a rank waits to reach the job's store for the progress counter


def share(matrices: list[MatrixSpec], rank: int, world: int) -> list[MatrixSpec]:
    """This rank's matrices: whole tensors, balanced by the solve cost of all their matrices."""
    costs: dict[str, int] = {}
    for spec in matrices:
        costs[spec.tensor] = costs.get(spec.tensor, 0) + solve_cost(spec.rows, spec.cols)
    mine = set(split_by_cost(costs, world)[rank])
    return [spec for spec in matrices if spec.tensor in mine]


def rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    """`auto`/`cuda` under torchrun: the GPU of this local rank; an explicit `cuda:N` or `cpu` as given."""
    dev = resolve_device(device)
    return torch.device("cuda", local_rank % torch.cuda.device_count()) if dev.type == "cuda" and dev.index is None else dev


def job_store():
    """A client of the job's key-value store (the TCPStore torchrun's ranks meet at, MASTER_ADDR:MASTER_PORT),
    through torch.distributed's public TCPStore; None when there is none to reach (the bar then counts this
    rank's share only)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    if not host or not port.isdigit():
        return None
    try:
        return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=STORE_SECONDS),
                             wait_for_workers=False)
    except Exception:  # noqa: BLE001 - unreachable or refused: progress is a courtesy, not the job
        return None


class JobProgress:
    """Matrices solved in the whole job: each rank adds to a counter in the process group's store, and
    rank 0 reads it back in a thread that drives the `progress` callback until the job is gathered."""

    def __init__(self, call: int, progress: Callable[[int, int], None] | None):
        self.key = f"alphaspec/analyze/{call}/solved"
        self.progress, self.total = progress, 0
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.store = job_store()
        self.local = 0

    def add(self, n: int) -> None:
        self.local += n
        if self.store is not None:
            self.store.add(self.key, n)
        elif self.progress:
            self.progress(self.local, self.total)

    def start(self, total: int) -> None:
        self.total = total
        if self.progress is None:
            return
        self.progress(0, total)
        if self.store is not None:
            self.thread = threading.Thread(target=self._follow, name="alphaspec-progress", daemon=True)
            self.thread.start()

    def _follow(self) -> None:
        while not self.done.wait(POLL_SECONDS):
            self.progress(min(self.store.add(self.key, 0), self.total), self.total)

    def stop(self, finished: bool) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()
        if finished and self.progress:
            self.progress(self.total, self.total)


def analyze_sharded(source, options: AnalysisOptions, device: str | torch.device, *,
                    progress: Callable[[int, int], None] | None = None, checkpoint: Checkpoint | None = None
                    ) -> Analysis:
    """analyze_checkpoint() inside an initialised process group; a collective (every rank must call it)."""
    rank, world, local = launched()
    group = object_group()
    board = JobProgress(next(_CALLS), progress if rank == 0 else None)
    rows, spectra, error, finished = [], {}, None, False
    try:
        try:
            dev = rank_device(device, local)
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            ckpt = checkpoint or open_source(source, options.base, options.merge)
            todo = plan_checkpoint(ckpt, options.include, options.exclude, options.split_fused)
            board.start(len(todo.matrices))
            how = solve_options(ckpt, options)
            rows, spectra = solve_matrices(ckpt, share(todo.matrices, rank, world), dev, how, workers=options.workers,
                                           keep_spectra=options.keep_spectra, on_solved=board.add)
        except Exception as err:  # noqa: BLE001 - told to every rank, then raised again below
            error = err
        parts = gather_outcomes(rows, error, group)
        finished = True
        merged = _gather_spectra(spectra, rank, world, group) if options.keep_spectra else {}
    finally:
        board.stop(finished)
        dist.destroy_process_group(group)
    return assemble([row for part in parts for row in part], merged, ckpt, todo, str(source), how,
                    f"{dev} x {world} ranks")


def _gather_spectra(spectra: dict[str, np.ndarray], rank: int, world: int, group) -> dict[str, np.ndarray]:
    """Every rank's spectra, on rank 0 (the others keep none: they are the bulk of the data)."""
    parts: list | None = [None] * world if rank == 0 else None
    dist.gather_object(spectra, parts, dst=0, group=group)
    return {k: v for part in parts for k, v in part.items()} if rank == 0 else {}
