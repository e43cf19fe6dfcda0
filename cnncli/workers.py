"""The second core: large layers cut their work into two fixed halves that run side by side.

A layer whose work is large enough (decided by its shapes alone: ``split``) cuts it into two
halves (a convolution: the batch; a dense layer: the columns or rows of its weights) and hands
them to ``run``. Each half is the same NumPy and BLAS calls whether it runs on the helper thread
or after the other half on the calling thread, and the halves' partial weight gradients are
added in one fixed order, so results are bit-identical with or without the helper, on any
machine and under any load (``tests/test_workers.py``).

Who runs a half: the calling thread and one helper thread take the halves in order; the
caller never waits for a half nobody has started, only for one the helper is running. When
another process keeps the helper off its core, the caller runs both halves itself, about as
fast as without the helper. The helper sleeps while it has nothing to do (it never spins, as
OpenBLAS's own threads do), and BLAS stays single-threaded in both threads (``cnncli.blas``).

The helper runs under the default thread policy only (``cnncli.threads(None)``, training with
``training.threads`` unset), on a machine with at least two cores; ``threads(1)`` runs every
half on the calling thread, one after the other, and ``threads(n)`` gives BLAS the cores instead.
"""

from __future__ import annotations

import os
import queue
import threading

from cnncli import blas

_helper: "_Helper | None" = None
_helper_lock = threading.Lock()
_local = threading.local()  # .inside: this thread is running halves (no nesting)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def split(n: int) -> list[tuple[int, int]]:
    """Two consecutive ranges covering 0..n, sizes differing by at most 1 (one when n < 2)."""
    if n < 2:
        return [(0, n)]
    return [(0, n // 2), (n // 2, n)]


# Element-wise layers (ReLU, batch norm, max pooling) split arrays of at least this many
# values: their passes over memory then run on two cores.
SPLIT_VALUES = 2**20


def parts(n: int, values: int) -> list[tuple[int, int]]:
    """``split(n)`` when the work touches at least ``SPLIT_VALUES`` values, else the whole
    range 0..n."""
    return split(n) if values >= SPLIT_VALUES else [(0, n)]


def helper_on() -> bool:
    """Whether ``run`` hands halves to the helper thread now."""
    return blas.current() is None and cores() >= 2 and not getattr(_local, "inside", False)


def run(tasks: list) -> None:
    """Call every function of ``tasks`` (each a half of one piece of work: they must not write
    to the same arrays) and return when all are done; the first exception is raised after all
    started ones finished."""
    if len(tasks) < 2 or not helper_on():
        for task in tasks:
            task()
        return
    batch = _Batch(tasks)
    _get_helper().give(batch)
    try:
        batch.work()
    finally:
        batch.cancel()  # after Ctrl-C here: nobody starts the remaining halves
        batch.done.wait()
    if batch.error is not None:
        raise batch.error


class _Batch:
    """Tasks taken in order by whichever thread asks first."""

    def __init__(self, tasks):
        self.tasks, self.next, self.pending = list(tasks), 0, len(tasks)
        self.lock, self.done, self.error = threading.Lock(), threading.Event(), None

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.tasks):
                return None
            self.next += 1
            return self.next - 1

    def _finished(self, count: int = 1) -> None:
        with self.lock:
            self.pending -= count
            if self.pending == 0:
                self.done.set()

    def work(self) -> None:
        _local.inside = True
        try:
            while (i := self._take()) is not None:
                try:
                    self.tasks[i]()
                except BaseException as exc:
                    self.error = self.error or exc
                    if not isinstance(exc, Exception):
                        raise  # Ctrl-C on the calling thread
                finally:
                    self._finished()
        finally:
            _local.inside = False

    def cancel(self) -> None:
        with self.lock:
            left, self.next = len(self.tasks) - self.next, len(self.tasks)
        if left:
            self._finished(left)


class _Helper:
    """One daemon thread that sleeps on a queue and works on the batches it is given."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="cnncli-helper", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self.queue.get().work()

    def give(self, batch: _Batch) -> None:
        self.queue.put(batch)


def _get_helper() -> _Helper:
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = _Helper()
        return _helper


def _forget_helper() -> None:  # a forked child has no helper thread
    global _helper
    _helper = None


os.register_at_fork(after_in_child=_forget_helper)
