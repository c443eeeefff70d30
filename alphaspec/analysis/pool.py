"""The one bounded thread pool of the analysis: solves (analyze) and matrix jobs (diff) in a few threads,
with a cap on what is in flight so memory stays bounded however many items there are."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, name: str = "alphaspec-worker") -> Iterator[R]:
    """fn over items in `workers` threads, results yielded in the items' order, at most 2·workers in flight (the
    items are drawn lazily, so a reader feeding them is held back too). One worker: in this thread. The first
    failure, or the consumer stopping early, cancels what has not started; the pool is shut down before the
    failure propagates."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
