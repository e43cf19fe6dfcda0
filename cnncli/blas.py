"""The two in-place BLAS updates NumPy has no function for, from SciPy's BLAS wrappers.

``axpy``: ``y += a * x`` in one pass over y (NumPy's ``y += a * x`` makes two, plus a temporary).
``add_product``: ``c += alpha * a.T @ b`` written straight into c (GEMM with beta = 1), so the
dense layer's SGD update never stores its weight gradient: one pass over the weights, not three.

SciPy's wheels ship their own copy of OpenBLAS beside NumPy's; these run there, always with
1 thread (``cnncli.parallel``).
"""

from __future__ import annotations

import numpy as np

from cnncli.parallel import applied

_FUNCS: dict[tuple[str, str], object] = {}  # (BLAS name, dtype character) -> SciPy wrapper


def load() -> None:
    """Import SciPy's BLAS now (a thread limit set afterwards then covers it too)."""
    if not _FUNCS:
        from scipy.linalg import blas

        for char in "fd":
            for name in ("axpy", "gemm"):
                _FUNCS[name, char] = blas.get_blas_funcs(name, dtype=np.dtype(char))


@applied
def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place. BLAS runs it when x and y are contiguous arrays of one shape
    and dtype that do not overlap; anything else goes through NumPy (broadcasting included)."""
    load()
    fn = _FUNCS.get(("axpy", y.dtype.char))
    if (fn is not None and x.dtype == y.dtype and x.shape == y.shape and y.flags.c_contiguous
            and x.flags.c_contiguous and (x is y or not np.may_share_memory(x, y))):
        yf = y.reshape(-1)
        z = fn(x.reshape(-1), yf, a=a)  # SciPy writes into y itself and returns it ...
        if z is not yf:  # pragma: no cover - ... unless it had to copy
            yf[...] = z
        return
    y += a * x


@applied
def add_product(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """``c += alpha * a.T @ b`` in place.

    a: (K, M), b: (K, N), c: (M, N). BLAS runs it for contiguous float32/float64 arrays of one
    dtype when c overlaps neither a nor b; anything else goes through NumPy.
    """
    load()
    fn = _FUNCS.get(("gemm", c.dtype.char))
    if (fn is not None and a.dtype == b.dtype == c.dtype and c.flags.c_contiguous
            and a.flags.c_contiguous and b.flags.c_contiguous
            and not np.may_share_memory(a, c) and not np.may_share_memory(b, c)):
        # Column-major BLAS sees each C-ordered array as its transpose, so ask it for
        # c.T += alpha * b.T @ (a.T).T: every operand is then read in place, without a copy.
        z = fn(alpha, b.T, a.T, beta=1.0, c=c.T, trans_b=1, overwrite_c=1)
        if not np.shares_memory(z, c):  # pragma: no cover - SciPy had to copy
            c[...] = z.T
        return
    c += alpha * (a.T @ b)
