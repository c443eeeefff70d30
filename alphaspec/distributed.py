"""Where this process stands in a torch.distributed job, and the few collectives the analysis needs."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist

from alphaspec.errors import AlphaspecError, UsageError, first_line

T = TypeVar("T")


class RankFailure(AlphaspecError):
    """A rank of the job failed; the message is that rank's error line (the job's line, the same on every rank).

    `own_line` is the line this rank prints under torchrun: its own failure, or that it stopped for another
    rank's (with that rank's error), so each rank's output says what happened there.
    """

    own_line: str = ""


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one. Collectives use this."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them, before or after the group is initialised."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


@contextmanager
def joined(use_cuda: bool) -> Iterator[tuple[int, int, int]]:
    """Under torchrun, join the process group (NCCL with GPUs, else gloo) and leave it afterwards; yields
    (rank, world, local rank). Outside torchrun, or with a group already initialised, it does nothing."""
    rank, world, local = launched()
    owns = world > 1 and dist.is_available() and not dist.is_initialized()
    if owns:
        start_group("nccl" if use_cuda and torch.cuda.is_available() else "gloo")
    try:
        yield rank, world, local
    finally:
        if owns:
            dist.destroy_process_group()


def start_group(backend: str) -> None:
    """init_process_group from torchrun's environment; a job that cannot start is one line, not a traceback
    (WORLD_SIZE left set in a shell without MASTER_ADDR, a port in use, a rank that never came)."""
    try:
        dist.init_process_group(backend, timeout=timeout())
    except (ValueError, RuntimeError) as err:  # DistStoreError and DistNetworkError are RuntimeErrors
        raise UsageError(f"torch.distributed could not start its {backend} group for WORLD_SIZE="
                         f"{os.environ.get('WORLD_SIZE')} (launch with torchrun, or unset WORLD_SIZE to run "
                         f"one process): {first_line(err)}") from err


def solve_cost(rows: int, cols: int) -> int:
    """Flops of a Gram product and its eigen-solve, up to a constant: m²n + m³ with m = min(rows, cols)."""
    m, n = sorted((rows, cols))
    return m * m * n + m**3


def split_by_cost(costs: dict[str, int], world: int) -> list[list[str]]:
    """Names per rank, balancing total cost greedily (largest first). Deterministic from names and costs
    alone, so every rank computes the same split without talking to the others."""
    load, shares = [0] * world, [[] for _ in range(world)]
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        r = min(range(world), key=lambda i: (load[i], i))
        shares[r].append(name)
        load[r] += costs[name]
    return [sorted(s) for s in shares]


def object_group():
    """A gloo group over all ranks for exchanging Python objects (works beside an NCCL default group). Collective."""
    return dist.new_group(backend="gloo", timeout=timeout())


def timeout() -> timedelta:
    """How long a rank waits for the others at a collective: ALPHASPEC_DIST_TIMEOUT seconds (default 900), so
    a rank that stopped (frozen, not dead: torchrun ends the job when one dies) fails the job in 15 minutes
    rather than gloo's 30. Raise it when the ranks' shares of a very large model take longer to diverge."""
    value = os.environ.get("ALPHASPEC_DIST_TIMEOUT", "900")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(f"ALPHASPEC_DIST_TIMEOUT={value!r}: give a number of seconds above 0")
    return timedelta(seconds=seconds)


def gather_outcomes(value, error: BaseException | None, group) -> list:
    """Collective: every rank's value; when any rank failed, every rank raises.

    The error raised is a RankFailure with the first failure's message and exit code (prefixed with its
    rank unless every rank failed alike), so no rank waits or writes alone and rank 0 can report it; a
    rank whose own failure is not an AlphaspecError (a bug) raises that instead, traceback and all.
    """
    mine = (None if error is None else _describe(error), None if error is not None else value)
    outcomes: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(outcomes, mine, group=group)
    failures = [(r, fail) for r, (fail, _) in enumerate(outcomes) if fail is not None]
    if error is not None and not isinstance(error, AlphaspecError):
        raise error
    if failures:
        rank, (message, code) = failures[0]
        alike = len(failures) == len(outcomes) and len({fail for _, fail in failures}) == 1
        failure = RankFailure(message if alike else f"rank {rank}: {message}")
        failure.exit_code = code
        me = dist.get_rank(group)
        own = outcomes[me][0]
        failure.own_line = (failure.args[0] if alike and me == 0 else f"rank {me}: {own[0]}" if own is not None
                            else f"rank {me}: stopped, rank {rank} failed: {message}")
        raise failure from error
    return [value for _, value in outcomes]


def on_rank0(work: Callable[[], T], world: int) -> T | None:
    """Collective: run `work` on rank 0 alone; every rank gets its value, or raises its failure (a RankFailure
    naming rank 0 where it failed), so no rank waits at the next collective for a rank that is gone."""
    if world <= 1:
        return work()
    value, error = None, None
    if dist.get_rank() == 0:
        try:
            value = work()
        except Exception as err:  # noqa: BLE001 - told to every rank by gather_outcomes, which raises it again
            error = err
    return gather_outcomes(value, error, None)[0]


def end_rank(code: int) -> NoReturn:
    """End a process of a torchrun job now, skipping the interpreter's shutdown (streams and logs flushed first).

    torch frees a gloo group only when nothing references it, and DDP/FSDP keep references that outlive
    destroy_process_group(), so the group's worker threads are still there at exit. One of them can still be
    letting go of the last collective's tensors when Python shuts down; it then needs the interpreter lock,
    which no longer exists, and the process aborts ("terminate called without an active exception", SIGABRT)
    after finishing its work. Everything a command writes is closed before it returns, so nothing is lost.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # closed, or a reader that went away
            stream.flush()
    os._exit(code)


def _describe(err: BaseException) -> tuple[str, int]:
    if isinstance(err, AlphaspecError):
        return str(err), err.exit_code
    return first_line(err, with_type=True), 1


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a parameter, gathering FSDP2/DTensor shards (a collective: every rank calls it)."""
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def share_of_work(tuned: dict[str, torch.Tensor], rank: int, world: int) -> list[str]:
    """This rank's matrices: a greedy split balancing the solve cost (Gram + eigensolver) over ranks.

    Deterministic from names and shapes alone, so every rank computes the same partition.
    """
    costs = {name: (t.numel() // (t.shape[-2] * t.shape[-1])) * solve_cost(t.shape[-2], t.shape[-1])
             for name, t in tuned.items()}  # stacked experts count once each
    return split_by_cost(costs, world)[rank]
