"""The two in-place BLAS updates NumPy has no function for.

``axpy``: ``y += a * x`` in one pass over y (NumPy's ``y += a * x`` makes two, plus a temporary).
``add_product``: ``c += alpha * a.T @ b`` written straight into c (GEMM with beta = 1), so the
dense layer's SGD update never stores its weight gradient: one pass over the weights, not three.

Both run in SciPy's own copy of OpenBLAS (its wheels ship one beside NumPy's; it always runs
with 1 thread, ``cnncli.parallel``), through SciPy's wrappers (``scipy.linalg.blas``). Two
threads calling those at once take turns, so a large ``add_product`` (from ``CTYPES_MIN``
entries of c: the blocks cnncli's pool runs side by side) calls the library's CBLAS function
through ctypes instead, which lets go of Python's GIL as NumPy's own products do. The seed
network's two update blocks in two threads at once, against one after the other
(``benchmarks/bench_threads.py``, idle machine): SciPy's wrappers 0.77x (slower than in turn),
ctypes 1.92x. Both give the same bits (tested); ctypes costs ~4 us more per call (reading
three array addresses), which is why small products keep the wrappers.
"""

from __future__ import annotations

import ctypes

import numpy as np

from cnncli.parallel import applied

# (BLAS name, dtype character) -> fn; gemm(alpha, a, b, c): c += alpha * a.T @ b for C-ordered
# a (K, M), b (K, N), c (M, N); axpy(a, x, y): y += a * x for contiguous x, y of one size.
_FUNCS: dict[tuple[str, str], object] = {}  # SciPy's wrappers
_CBLAS: dict[tuple[str, str], object] = {}  # gemm through ctypes, when the library has CBLAS
CTYPES_MIN = 1 << 15  # entries of c from which add_product goes through ctypes
CBLAS_SOURCE = ""  # the library file _CBLAS calls into ("" if none was found)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enum values


def load_scipy() -> None:
    """Import SciPy's BLAS wrappers, which loads SciPy's copy of OpenBLAS into the process."""
    from scipy.linalg import blas  # noqa: F401


def load() -> None:
    """Find the BLAS functions now (a thread limit set afterwards then covers them too)."""
    global CBLAS_SOURCE
    if _FUNCS:
        return
    from cnncli import parallel

    for dynlib, filepath in parallel.blas_dynlibs():
        funcs = _cblas(dynlib)
        if funcs is not None:
            _CBLAS.update(funcs)
            CBLAS_SOURCE = filepath
            break
    _FUNCS.update(_scipy_wrappers())


def _cblas(dynlib) -> dict | None:
    """ctypes calls of ``dynlib``'s cblas_sgemm and cblas_dgemm, or None if it has none.
    OpenBLAS names them with a prefix ("scipy_" in SciPy's and NumPy's wheels) and, when its
    integers are 64-bit, a suffix ("64_")."""
    for prefix in ("scipy_", ""):
        for suffix, int_t in (("", ctypes.c_int), ("64_", ctypes.c_int64), ("_64", ctypes.c_int64)):
            found = {("gemm", char): getattr(dynlib, f"{prefix}cblas_{blas_char}gemm{suffix}", None)
                     for char, blas_char in (("f", "s"), ("d", "d"))}
            if all(f is not None for f in found.values()):
                return {key: _typed_gemm(key[1], f, int_t) for key, f in found.items()}
    return None


def _typed_gemm(char, f, int_t):
    """Give cblas_?gemm its argument types; wrap it in the gemm convention above."""
    real = ctypes.c_float if char == "f" else ctypes.c_double
    ptr = ctypes.c_void_p
    # order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    f.argtypes = [ctypes.c_int] * 3 + [int_t] * 3 + [real, ptr, int_t, ptr, int_t, real, ptr, int_t]
    f.restype = None

    def gemm(alpha, a, b, c):
        (k, m), n = a.shape, b.shape[1]
        if m and n and k:
            f(_ROW_MAJOR, _TRANS, _NO_TRANS, m, n, k, alpha, a.ctypes.data, m,
              b.ctypes.data, n, 1.0, c.ctypes.data, n)
    return gemm


def _scipy_wrappers() -> dict:
    """The two calls through SciPy's f2py wrappers."""
    from scipy.linalg import blas

    funcs = {}
    for char in "fd":
        gemm_fn = blas.get_blas_funcs("gemm", dtype=np.dtype(char))
        axpy_fn = blas.get_blas_funcs("axpy", dtype=np.dtype(char))

        def gemm(alpha, a, b, c, _fn=gemm_fn):
            # Column-major BLAS sees each C-ordered array as its transpose, so ask it for
            # c.T += alpha * b.T @ (a.T).T: every operand is then read in place, without a copy.
            z = _fn(alpha, b.T, a.T, beta=1.0, c=c.T, trans_b=1, overwrite_c=1)
            if not np.shares_memory(z, c):  # pragma: no cover - SciPy had to copy
                c[...] = z.T

        def axpy(a, x, y, _fn=axpy_fn):
            yf = y.reshape(-1)
            z = _fn(x.reshape(-1), yf, a=a)  # SciPy writes into y itself and returns it ...
            if z is not yf:  # pragma: no cover - ... unless it had to copy
                yf[...] = z

        funcs["gemm", char], funcs["axpy", char] = gemm, axpy
    return funcs


@applied
def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """``y += a * x`` in place. BLAS runs it when x and y are contiguous arrays of one shape
    and dtype that do not overlap; anything else goes through NumPy (broadcasting included)."""
    load()
    fn = _FUNCS.get(("axpy", y.dtype.char))
    if (fn is not None and x.dtype == y.dtype and x.shape == y.shape and y.flags.c_contiguous
            and x.flags.c_contiguous and y.flags.writeable
            and (x is y or not np.may_share_memory(x, y))):
        fn(a, x, y)
        return
    y += a * x


@applied
def add_product(alpha: float, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """``c += alpha * a.T @ b`` in place.

    a: (K, M), b: (K, N), c: (M, N). BLAS runs it for contiguous float32/float64 arrays of one
    dtype when c overlaps neither a nor b; anything else goes through NumPy.
    """
    load()
    key = ("gemm", c.dtype.char)
    fn = _CBLAS.get(key) if c.size >= CTYPES_MIN else None
    fn = fn or _FUNCS.get(key)
    if (fn is not None and a.dtype == b.dtype == c.dtype and c.flags.c_contiguous
            and a.flags.c_contiguous and b.flags.c_contiguous and c.flags.writeable
            and a.ndim == b.ndim == c.ndim == 2 and a.shape[1] == c.shape[0]
            and b.shape[1] == c.shape[1] and a.shape[0] == b.shape[0]
            and not np.may_share_memory(a, c) and not np.may_share_memory(b, c)):
        fn(alpha, a, b, c)
        return
    c += alpha * (a.T @ b)
