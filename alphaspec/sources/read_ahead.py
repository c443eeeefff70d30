"""Reading ahead of the solver: a background thread streams a checkpoint's matrices, file by file, into a
queue bounded by bytes (on a GPU, each copied there on the thread's own stream), so reading and the
host-to-device copy of the next matrices overlap with the eigen-solves of the current ones.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

import torch

from alphaspec.devices import SolveError
from alphaspec.sources.checkpoint import Checkpoint
from alphaspec.sources.matrices import MatrixSpec

STAGED_BYTES = {"cpu": 1 << 30, "cuda": 2 << 30}  # read ahead of the solver, at most (one matrix always fits)


class StagingQueue:
    """A queue that holds items up to a number of bytes (an item larger than the bound goes in alone).

    `put` waits while the queue is full and gives up (returns False) once `stop` is set; `close`
    empties it, so that no staged matrix outlives a failed or abandoned analysis.
    """

    def __init__(self, max_bytes: int, stop: threading.Event):
        self.max_bytes, self.stop = max_bytes, stop
        self.items: deque = deque()
        self.bytes = 0
        self.changed = threading.Condition()

    def put(self, item, nbytes: int = 0) -> bool:
        with self.changed:
            while self.items and self.bytes + nbytes > self.max_bytes and not self.stop.is_set():
                self.changed.wait(0.1)
            if self.stop.is_set():
                return False
            self.items.append((item, nbytes))
            self.bytes += nbytes
            self.changed.notify_all()
            return True

    def get(self):
        with self.changed:
            while not self.items:
                self.changed.wait(0.1)
            item, nbytes = self.items.popleft()
            self.bytes -= nbytes
            self.changed.notify_all()
            return item

    def close(self) -> None:
        with self.changed:
            self.items.clear()
            self.bytes = 0
            self.changed.notify_all()


_DONE = object()


def read_ahead(ckpt: Checkpoint, specs: list[MatrixSpec], stop: threading.Event,
               device: torch.device | None = None, max_bytes: int | None = None,
               on_versions: Callable[[MatrixSpec, torch.Tensor, torch.Tensor], None] | None = None,
               on_read: Callable[[MatrixSpec, torch.Tensor], None] | None = None,
               kept: Callable[[str, list[MatrixSpec]], list | None] | None = None) -> Iterator:
    """Yield (spec, matrix) in file order, read by a background thread up to `max_bytes` ahead.

    on_versions(spec, before, after): called in that thread, before the matrix is yielded, for each matrix of
    an update whose checkpoint holds its base (Checkpoint.read_versions). on_read(spec, matrix): called in that
    thread with each matrix as read, before it is copied to the device (the eigenvalue store keys it there).
    kept(tensor name, its specs): what the eigenvalue store already holds for each of them, asked before the
    tensor is read; when it returns a list, (spec, its item) is yielded instead and the tensor is never read.

    With a CUDA device the thread also copies each matrix there (and expands GGUF blocks there), on its
    own stream, in the checkpoint's dtype, so the host-to-device transfer overlaps the solver too.
    When the consumer stops early (an error, or it closes the generator) the thread is stopped and
    joined and the staged matrices are dropped.
    """
    cuda = device is not None and device.type == "cuda"
    copy_stream = torch.cuda.Stream(device) if cuda else None
    q = StagingQueue(max_bytes or STAGED_BYTES["cuda" if cuda else "cpu"], stop)

    def stage(spec: MatrixSpec, m: torch.Tensor) -> torch.Tensor:
        return m if copy_stream is None else _to_device(spec, m, device, copy_stream)

    by_tensor, reads = reading_order(ckpt, specs)

    def work() -> None:
        try:
            with torch.cuda.stream(copy_stream) if copy_stream is not None else contextlib.nullcontext():
                for file, names in reads:
                    if kept is not None:  # the tensors the store holds are not read
                        names = [n for n in names if not _queued(q, by_tensor[n], kept(n, by_tensor[n]))]
                    for name, tensor, versions in ckpt.read_versions(file, names, device) if names else ():
                        for spec in by_tensor[name]:
                            if versions is not None and on_versions is not None:
                                on_versions(spec, *(spec.extract(v) for v in versions))
                            m = spec.extract(tensor)
                            if on_read is not None:
                                on_read(spec, m)
                            m = stage(spec, m)
                            if not q.put((spec, m), m.numel() * m.element_size()):
                                return
            q.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            q.put(err)

    thread = threading.Thread(target=work, name="alphaspec-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        q.close()
        thread.join()
        q.close()  # what the thread put while it was stopping


def _queued(q: StagingQueue, specs: list[MatrixSpec], parts: list | None) -> bool:
    """Queue (spec, part) for each matrix of a tensor when the store holds them all (parts is not None)."""
    return parts is not None and all(q.put(item) for item in zip(specs, parts, strict=True))


def _to_device(spec: MatrixSpec, m: torch.Tensor, device: torch.device, copy_stream) -> torch.Tensor:
    """The matrix copied to the GPU on the reader's stream (the current one in its thread), complete when returned."""
    try:
        staged = m.to(device)
    except torch.cuda.OutOfMemoryError as err:
        raise SolveError.of([spec], err, device, "the copy to the GPU") from None
    # From pageable memory the copy call can return before the DMA has landed; this thread waits for it (and
    # for the dequantisation kernels), so a queued matrix is complete whatever stream the solver reads it on.
    copy_stream.synchronize()
    return staged


def reading_order(ckpt: Checkpoint, specs: list[MatrixSpec]) -> tuple[dict[str, list[MatrixSpec]], list]:
    """The matrices of each tensor, and [(file, tensor names)] in file order, same shapes together; a
    file none of these matrices live in is not listed, so it is never opened."""
    by_tensor: dict[str, list[MatrixSpec]] = {}
    for spec in specs:
        by_tensor.setdefault(spec.tensor, []).append(spec)
    file_of = {t.name: t.file for t in ckpt.tensors}
    order = sorted(by_tensor, key=lambda n: (ckpt.files.index(file_of[n]), by_tensor[n][0].rows, by_tensor[n][0].cols))
    reads = [(file, [n for n in order if file_of[n] == file]) for file in ckpt.files]
    return by_tensor, [(file, names) for file, names in reads if names]
