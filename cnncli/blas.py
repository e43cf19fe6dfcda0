"""Threads and BLAS: how many threads cnncli's arithmetic runs on, and the in-place update.

The policy, chosen with ``with cnncli.threads(n):`` or ``training.threads: n`` in a config:
``None`` (the default): every BLAS library single-threaded, large layers in two halves on two
cores (``cnncli.workers``); ``1``: all on the calling thread; ``n >= 2``: NumPy's BLAS with
``n`` threads. OpenBLAS's threads busy-wait: with 2 of them a step of the seed's MNIST network
ran 30x slower than with 1 while another process kept the second core busy, and NumPy's and
SciPy's OpenBLAS copies busy-waiting against each other made a step 4-35x slower. SciPy's
copy (its wheels ship their own), which runs only ``axpy`` below, always gets 1 thread.

Every entry point into cnncli's arithmetic (the trainer, ``Network``'s public calls, the
optimizers' ``step``, every command, each sweep worker) is wrapped with ``@applied``: the
outermost such call sets the libraries' thread counts and puts the previous counts back when
it returns, so the rest of a program keeps its own settings. The libraries are found once, with
threadpoolctl, on the first call; after that an outermost call costs a few microseconds.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

_lock = threading.RLock()
_policy: int | None = None  # None (the default) or n >= 1
_depth = 0  # nesting of applied calls and threads() blocks; the outermost applies the policy
_saved: list = []  # (library controller, count before) to put back
_libs: list | None = None  # (threadpoolctl library controller, is SciPy's own copy)
_axpy: dict = {}  # dtype character -> SciPy's axpy wrapper


def check_threads(n) -> int | None:
    """``n`` if it is a valid policy (None or an integer >= 1); a ConfigError otherwise."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        from cnncli.errors import ConfigError

        raise ConfigError(f"threads must be an integer >= 1 or None (cnncli's default), got {n!r}")
    return n


def is_scipy_vendored(filepath: str) -> bool:
    """A library inside SciPy's wheel (``scipy.libs/``, ``scipy/.dylibs/``), not NumPy's."""
    return "scipy.libs" in Path(filepath).parts or "scipy/.dylibs" in Path(filepath).as_posix()


def _find_libs() -> list:
    global _libs
    if _libs is None:
        from scipy.linalg import blas  # noqa: F401  (loads SciPy's copy, so that it is found)
        from threadpoolctl import ThreadpoolController

        _libs = [(lib, is_scipy_vendored(lib.filepath))
                 for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    return _libs


def _apply(n: int | None) -> list:
    """Set every BLAS library for policy ``n``; returns what to put back."""
    saved = []
    for lib, scipy_own in _find_libs():
        want = 1 if scipy_own or n is None else n
        have = lib.get_num_threads()
        if have is not None and have != want:
            lib.set_num_threads(want)
            saved.append((lib, have))
    return saved


def _enter(n: int | None = None, set_policy: bool = False) -> int | None:
    """One level deeper; the outermost level applies the policy. Returns the previous policy."""
    global _depth, _saved, _policy
    with _lock:
        before = _policy
        if set_policy:
            _policy = n
        if _depth == 0:
            _saved = _apply(_policy)
        elif set_policy and n != before:
            _apply(n)  # what to put back was saved by the outermost level
        _depth += 1
        return before


def _exit(before: int | None = None, set_policy: bool = False) -> None:
    global _depth, _saved, _policy
    with _lock:
        _depth -= 1
        if set_policy:
            if _depth and before != _policy:
                _apply(before)
            _policy = before
        if _depth == 0:
            for lib, have in reversed(_saved):
                lib.set_num_threads(have)
            _saved = []


def applied(fn):
    """Decorator: run ``fn`` under cnncli's thread policy."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()
    return run


class threads:
    """Context manager: cnncli's arithmetic inside the block runs with policy ``n`` (module
    doc); the libraries are set for the whole block and put back when it ends."""

    def __init__(self, n: int | None):
        self.n = check_threads(n)
        self._before: list[int | None] = []

    def __enter__(self):
        self._before.append(_enter(self.n, set_policy=True))
        return self

    def __exit__(self, *exc):
        _exit(self._before.pop(), set_policy=True)
        return False


def current() -> int | None:
    """The policy in force: None (the default) or n."""
    return _policy


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place, in one pass over y (NumPy's ``y += a * x`` makes two and a
    temporary). SciPy's BLAS runs it for contiguous, non-overlapping arrays of one shape and
    dtype (float32 or float64); anything else goes through NumPy."""
    fn = _axpy.get(y.dtype.char)
    if fn is None and y.dtype.char in "fd":
        from scipy.linalg import blas

        fn = _axpy[y.dtype.char] = blas.get_blas_funcs("axpy", dtype=y.dtype)
    if (fn is not None and x.dtype == y.dtype and x.shape == y.shape and y.flags.c_contiguous
            and x.flags.c_contiguous and y.flags.writeable and not np.may_share_memory(x, y)):
        yf = y.reshape(-1)
        if fn(x.reshape(-1), yf, a=a) is not yf:  # pragma: no cover - SciPy had to copy
            y += a * x
        return
    y += a * x
