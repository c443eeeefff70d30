"""How a process of its own (the CLI) spreads CPU eigen-solves: one matrix per core, each single-threaded.

Measured on a 2-core x86-64 box (docs/benchmarks.md): two matrices solved side by side with one thread
each take 0.47x (1024 wide) to 0.92x (4096 wide) of the time of solving them one after the other with
both threads, as much of LAPACK's eigen-solver is memory-bound and serial. Changing torch's thread
count is process-wide, so the library itself never does it; `analyze(..., workers=N)` with
`torch.set_num_threads(1)` gives a script the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MAX_CPU_WORKERS = 8  # each holds a Gram matrix and a block of widened rows: bounded, for many-core hosts


def cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(device: torch.device, world: int = 1) -> int:
    """Concurrent solves for `--workers 0`: one per core (at most MAX_CPU_WORKERS) on the CPU in a single
    process, else 1 (a GPU solves one matrix at a time fastest; torchrun ranks already share the cores)."""
    if device.type != "cpu" or world > 1:
        return 1
    return max(1, min(cores(), MAX_CPU_WORKERS))


@contextmanager
def one_thread_per_solve(workers: int, device: torch.device) -> Iterator[None]:
    """torch's intra-op threads set to 1 while `workers` CPU solves run side by side; restored afterwards."""
    if workers <= 1 or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
