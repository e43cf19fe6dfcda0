"""How many threads cnncli's arithmetic runs on, applied around every call into it.

The policy, chosen with ``cnncli.threads(n)`` (or ``training.threads`` in a config):

- ``None`` (the default): BLAS runs single-threaded, and the few large matrix products (the
  2304x256 dense layer of the seed's MNIST network) are cut into a fixed number of blocks that
  cnncli's own small pool of Python threads computes side by side, one block per core, at most
  ``POOL_SIZE`` cores. The pool's threads sleep when idle; they never busy-wait, and each kind
  of outermost call runs its blocks on the pool only while that has measured faster than the
  calling thread alone (``_Choices``; not when another process holds the other core, say).
- ``1``: everything on the calling thread, one block after the other (what sweep workers want).
- ``n >= 2``: NumPy's BLAS with ``n`` threads of its own, cnncli's pool off (the old opt-in).

SciPy's own copy of OpenBLAS (its wheels ship one beside NumPy's; ``cnncli.blas`` runs there)
always gets 1 thread: two OpenBLAS pools busy-waiting for each other's cores made a step 4x
slower. OpenBLAS threads busy-wait, so a step of the seed's MNIST network with 2 BLAS threads
ran 30x slower than with 1 while another process kept the second core busy.

The partition into blocks depends on the layer's shape and dtype alone, never on the policy, the
load or whether the pool runs, and each block is the same BLAS call either way: results are
bit-identical with the pool on or off and from one machine to the next.

Every public entry point into cnncli's arithmetic (``Network.forward/backward/backward_sgd/
predict``, the optimizers' ``step``, ``cnncli.blas``, the Dense and Conv2D layers) is wrapped
with ``@applied``: the outermost such call sets the BLAS libraries' thread counts and puts the
previous counts back when it returns, so code outside cnncli's calls sees its own settings. The
libraries are found once (threadpoolctl, the first time cnncli computes; libraries loaded
later are not governed); setting a count is then a C call, a few microseconds per call
(``benchmarks/bench_threads.py``). The policy is one setting for the whole process, not one per
Python thread.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from pathlib import Path

POOL_SIZE = 2  # cores cnncli's own pool uses at most (the calling thread included)

_lock = threading.Lock()
_count: int | None = None  # the policy: None, 1 or n (see the module docstring)
_depth = 0  # nesting of applied calls and threads() blocks; the outermost applies the policy
_saved: list[tuple[object, int]] = []  # (set count function, count before) to restore
_libs: list[tuple[object, object, bool]] | None = None  # see _find_libs
_dynlibs: list[tuple[object, str]] = []  # see blas_dynlibs
_pool: "_Pool | None" = None


def _check(n):
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        from cnncli.errors import ConfigError

        raise ConfigError(f"threads must be an integer >= 1 or None (cnncli's default), got {n!r}")
    return n


def _find_libs() -> list[tuple[object, object, bool]]:
    """(get count, set count, is SciPy's own copy) for each BLAS library in the process
    (NumPy's, SciPy's own copy), found once (~5 ms)."""
    global _libs, _dynlibs
    if _libs is None:
        from threadpoolctl import ThreadpoolController

        from cnncli import blas

        blas.load_scipy()  # SciPy's BLAS must be loaded for threadpoolctl to see it
        controller = ThreadpoolController()
        found = [lib for lib in controller.lib_controllers if lib.user_api == "blas"]
        found.sort(key=lambda lib: not is_scipy_vendored(lib.filepath))  # SciPy's own first
        _dynlibs = [(lib.dynlib, lib.filepath) for lib in found if hasattr(lib, "dynlib")]
        _libs = [(*_accessors(lib), is_scipy_vendored(lib.filepath)) for lib in found]
    return _libs


def blas_dynlibs() -> list[tuple[object, str]]:
    """(ctypes library, file) of each BLAS library in the process, SciPy's own copy first."""
    _find_libs()
    return _dynlibs


def _accessors(lib):
    """The library's own get/set thread count functions. For OpenBLAS with its own threads (the
    pip wheels' build) these are its C functions, called directly: a process-wide setting,
    whichever Python thread calls (threadpoolctl's ``set_num_threads`` does nothing when called
    from another thread than the first that used it), and cheaper. Other builds go through
    threadpoolctl."""
    if lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) != "openmp":
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_", "_64"):
                get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
                put = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    return get, put
    return lib.get_num_threads, lib.set_num_threads


def is_scipy_vendored(filepath: str) -> bool:
    """A library inside SciPy's wheel (``scipy.libs/``, ``scipy/.dylibs/``), not shared with NumPy."""
    parts = Path(filepath).parts
    return "scipy.libs" in parts or ("scipy" in parts and ".dylibs" in parts)


def blas_count(n: int | None) -> int:
    """NumPy's BLAS thread count under policy ``n``."""
    return 1 if n is None else n


def _apply(n: int | None) -> list[tuple[object, int]]:
    """Set every BLAS library for policy ``n``; returns what to restore."""
    saved = []
    for get, put, scipy_own in _find_libs():
        want = 1 if scipy_own else blas_count(n)
        have = get()
        if have != want:
            put(want)
            saved.append((put, have))
    return saved


def _restore(saved) -> None:
    for put, have in reversed(saved):
        put(have)


def _enter() -> None:
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = _apply(_count)
        _depth += 1


def _exit() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth == 0:
            _restore(_saved)
            _saved = []


def applied(fn):
    """Decorator: run ``fn`` under cnncli's thread policy (a nested call costs a count).

    A calling thread's outermost such call also decides whether the blocks it runs go to the
    pool, and times itself for that decision (``_Choices``)."""
    name = fn.__qualname__

    @functools.wraps(fn)
    def run(*args, **kwargs):
        mine = _calls
        if mine.depth:  # nested: this thread's outermost call has set everything up
            mine.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                mine.depth -= 1
        _enter()
        mine.depth += 1
        try:
            if _count is not None:  # another policy: no pool to choose
                return fn(*args, **kwargs)
            return _choices.timed((name, _shape(args)), fn, args, kwargs)
        finally:
            mine.depth -= 1
            _exit()

    return run


def _shape(args) -> tuple | None:
    """The shape of the first array among a call's first two arguments (after ``self``, or the
    first of a function), which with the function names the kind of call."""
    for a in args[:2]:
        shape = getattr(a, "shape", None)
        if isinstance(shape, tuple):
            return shape
    return None


class threads:
    """Context manager: cnncli's arithmetic inside the block runs with policy ``n``.

    ``with cnncli.threads(1):`` keeps everything on one core; ``threads(None)`` is the default
    (single-threaded BLAS plus cnncli's own pool); ``threads(n)`` gives NumPy's BLAS ``n``
    threads. The BLAS libraries are set for the whole block and put back when it ends.
    """

    def __init__(self, n: int | None):
        self.n = _check(n)

    def __enter__(self):
        global _count, _depth, _saved
        with _lock:
            self._outer = (_count, _depth, _saved)
            _count = self.n
            _saved = _apply(self.n)
            _depth += 1
        return self

    def __exit__(self, *exc):
        global _count, _depth, _saved
        with _lock:
            _restore(_saved)
            _count, depth, _saved = self._outer
            _depth = depth
        return False


def current() -> int | None:
    """The policy in force: None (the default), 1 or n."""
    return _count


# ----------------------------------------------------------------------------- the pool
def pool_workers(n: int | None) -> int:
    """Threads cnncli's pool adds to the calling one under policy ``n`` (0: the pool is off)."""
    if n is not None:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(0, min(POOL_SIZE, cores) - 1)


def run_blocks(blocks) -> None:
    """Run every callable of ``blocks`` once (each writes its own part of a result).

    On the pool, the calling thread and the pool's threads take blocks in turn from the list
    until none is left, so a thread that is slow to wake (another process holds its core) just
    takes fewer: nothing ever waits for a block nobody has started. Otherwise the blocks run
    one after the other. Either way each block is the same computation. Which way is decided
    per outermost cnncli call (``_Choices``).
    """
    global _pool
    workers = pool_workers(_count)
    if workers and len(blocks) >= 2:
        mine = _calls
        mine.batches += 1
        if mine.pooling:
            if _pool is None or _pool.size < workers:
                _pool = _Pool(workers)
            _pool.run(blocks)
            return
    for block in blocks:
        block()


class _Calls(threading.local):
    """How deep in cnncli's calls the current Python thread is (the pool's threads start at 1:
    their calls are parts of the caller's), and whether its outermost call's blocks go to the
    pool."""

    depth = 0
    pooling = True
    batches = 0  # blocks batches run during the outermost call


_calls = _Calls()
MARGIN = 0.95  # the pool is chosen when it has been at least 5% faster


class _Timing:
    """How long one kind of call has taken with its blocks on the pool and without."""

    __slots__ = ("alone", "pooled", "count", "every", "run", "way", "tried", "pool", "wins")

    def __init__(self, every):
        self.alone: float | None = None
        self.pooled: float | None = None
        self.count = 0  # calls of this kind so far
        self.every = every  # a try of the other way starts every this many calls
        self.run = 0  # calls left in the try under way
        self.way = True  # the way being tried (True: on the pool)
        self.tried: list[float] = []  # the times of the try under way
        self.pool = False  # the way chosen, once both have been tried
        self.wins = 0  # tries in a row the pool has won while the choice was alone

    def best(self) -> bool:
        """Whether the pool is the faster way: by a margin, since the calling thread alone
        never waits for a thread that another process keeps off its core."""
        return self.pooled < MARGIN * self.alone


class _Choices:
    """Whether each kind of outermost call (a function and the shape of its array argument,
    e.g. ``Network.forward`` on a batch of 16) runs its blocks on the pool: the way that has
    been faster, timing the whole call. The whole call, because the pool also changes how fast
    the rest of it runs (results written by the other core sit in that core's cache): alone in
    a loop, the seed network's dense layer's products ran 1.3-1.7x faster on the pool, while a
    whole step gained far less.

    A way is tried for ``TRY`` calls in a row and their median time is its estimate (the
    first call on a pool that has slept a while pays for waking it; on a busy machine one call
    may be lucky). Each kind first tries the pool, then the calling thread alone; after that it
    runs the faster way (the pool only if at least 5% faster: alone, the caller never waits
    for a thread that another process keeps off its core), whose estimate is a moving average, and tries the other way every ``every`` calls so that a change of
    load is noticed. ``every`` starts at ``EXPLORE_MIN`` and doubles, up to ``EXPLORE_MAX``,
    each time a try confirms the choice (a busy machine then pays for a slow try rarely), and
    falls back when a try goes the other way. After the first choice (one try each way) the
    choice leans to the calling thread alone: it leaves the pool as soon as the pool's moving
    average or a try says alone is faster, but goes back to the pool only after it has won
    two tries in a row (with another process on the other core, one lucky try of three calls
    against an average of unlucky ones is common). The pool gains only with a second core to spare: it
    loses to the calling thread alone when another process holds that core, when waking a
    thread costs more than half the work, or when the two cores slow each other down. Only who
    computes a block changes, never what, so results never depend on these choices.
    """

    TRY = 3
    EXPLORE_MIN = 32
    EXPLORE_MAX = 1024
    WEIGHT = 0.25  # of the newest time in the moving average of the way that runs

    def __init__(self):
        self.timings: dict[object, _Timing] = {}

    def pooled(self, t: _Timing) -> bool:
        """Whether the next call of this kind runs its blocks on the pool."""
        t.count += 1
        if t.run == 0:
            if t.pooled is None or t.alone is None:
                t.run, t.way = self.TRY, t.pooled is None
            elif t.count % t.every == 0:
                t.run, t.way = self.TRY, not t.pool
            else:
                return t.pool
        return t.way

    def timed(self, kind, fn, args, kwargs):
        mine = _calls
        t = self.timings.get(kind)
        if t is None:  # a kind first seen (or one that runs no blocks): on the pool, untimed
            mine.pooling, mine.batches = True, 0
            result = fn(*args, **kwargs)
            if mine.batches:
                self.timings[kind] = _Timing(self.EXPLORE_MIN)
            return result
        pooled = self.pooled(t)
        mine.pooling, mine.batches = pooled, 0
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        finally:
            mine.pooling = True
        wall = time.perf_counter() - start
        if mine.batches:
            self.record(t, pooled, wall)
        else:
            t.count -= 1  # a call that ran no batch says nothing
        return result

    def record(self, t: _Timing, pooled: bool, wall: float) -> None:
        name = "pooled" if pooled else "alone"
        if t.run:  # a try
            t.run -= 1
            t.tried.append(wall)
            if t.run == 0:
                settled = t.pooled is not None and t.alone is not None
                setattr(t, name, sorted(t.tried)[len(t.tried) // 2])  # the median
                t.tried = []
                if not settled:  # the first choice, once both ways have been tried
                    t.pool = t.alone is not None and t.best()
                elif t.pool == t.best():  # the try confirms the choice
                    t.every, t.wins = min(2 * t.every, self.EXPLORE_MAX), 0
                elif t.pool:  # alone won a try: leave the pool now
                    t.pool, t.every = False, self.EXPLORE_MIN
                else:  # the pool won a try: take it the second time in a row
                    t.wins, t.every = t.wins + 1, self.EXPLORE_MIN
                    if t.wins == 2:
                        t.pool, t.wins = True, 0
            return
        old = getattr(t, name)
        setattr(t, name, wall if old is None else old + self.WEIGHT * (wall - old))
        if t.pool and not t.best():  # the pool has become slower: leave it now
            t.pool, t.every = False, self.EXPLORE_MIN


_choices = _Choices()


class _Batch:
    """The blocks of one ``run_blocks`` call, taken in turn by whichever thread asks first."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.next = 0
        self.left = len(blocks)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        while True:
            with self.lock:
                i = self.next
                if i >= len(self.blocks):
                    return
                self.next = i + 1
            try:
                self.blocks[i]()
            except BaseException as exc:  # re-raised by the calling thread
                self.error = self.error or exc
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.done.set()


class _Pool:
    """``size`` daemon threads waiting for batches; they sleep on a queue when idle."""

    def __init__(self, size: int):
        self.size = size
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(size):
            threading.Thread(target=self._serve, name=f"cnncli-pool-{i}", daemon=True).start()

    def _serve(self) -> None:
        _calls.depth = 1  # what this thread runs is part of another thread's call
        while True:
            self.queue.get().work()

    def run(self, blocks) -> None:
        batch = _Batch(blocks)
        for _ in range(min(self.size, len(blocks) - 1)):
            self.queue.put(batch)
        batch.work()
        batch.done.wait()
        if batch.error is not None:
            raise batch.error


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start afresh (the lock may be held)."""
    global _lock, _pool
    _lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
