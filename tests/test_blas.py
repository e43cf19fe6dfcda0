"""The in-place BLAS updates (cnncli.blas) against plain NumPy, over random shapes and layouts."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli import blas

dims = st.integers(1, 40)


def _layout(x, kind):
    """The same values in C order, Fortran order, or as a strided view of a larger array."""
    if kind == "F":
        return np.asfortranarray(x)
    if kind == "strided":
        big = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=x.dtype)
        big[:, ::2] = x
        return big[:, ::2]
    return x


@settings(max_examples=80, deadline=None)
@given(k=dims, m=dims, n=dims, alpha=st.floats(-3, 3), dtype=st.sampled_from(["float64", "float32"]),
       layouts=st.tuples(*[st.sampled_from(["C", "F", "strided"])] * 3), seed=st.integers(0, 2**32 - 1))
def test_add_product_adds_alpha_a_transpose_b_into_c_in_place(k, m, n, alpha, dtype, layouts, seed):
    rng = np.random.default_rng(seed)
    a, b, c = (_layout(rng.standard_normal(s).astype(dtype), kind)
               for s, kind in zip(((k, m), (k, n), (m, n)), layouts))
    expected = c.astype(np.float64) + alpha * (a.astype(np.float64).T @ b.astype(np.float64))
    view = c[...]  # another view of c's memory: it must see the result
    blas.add_product(alpha, a, b, c)
    assert c.dtype == dtype
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(view, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max()))


def test_add_product_uses_blas_for_contiguous_arrays(monkeypatch):
    blas.load()
    used = []
    fn = blas._FUNCS["gemm", "d"]
    monkeypatch.setitem(blas._FUNCS, ("gemm", "d"), lambda *a, **k: used.append(1) or fn(*a, **k))
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    expected = c - 0.5 * a.T @ b
    blas.add_product(-0.5, a, b, c)
    assert used == [1]
    np.testing.assert_allclose(c, expected, rtol=1e-14)


def test_add_product_and_axpy_are_right_when_arrays_overlap():
    rng = np.random.default_rng(2)
    c = rng.standard_normal((6, 6))
    a = c  # c += a.T @ c with a and b the very array being written
    expected = c + 0.25 * (c.T @ c)
    blas.add_product(0.25, a, c, c)
    np.testing.assert_allclose(c, expected, rtol=1e-13)
    buf = rng.standard_normal(10)
    x, y = buf[:6], buf[4:]  # overlapping views
    expected = y + 2.0 * x
    blas.axpy(2.0, x, y)
    np.testing.assert_allclose(buf[4:], expected, rtol=1e-14)
    y = rng.standard_normal(5)
    expected = 3 * y
    blas.axpy(2.0, y, y)  # x is y
    np.testing.assert_allclose(y, expected, rtol=1e-14)


def test_axpy_broadcasts_like_numpy_when_shapes_differ():
    y = np.ones((2, 3))
    blas.axpy(2.0, np.arange(3.0), y)
    np.testing.assert_array_equal(y, [[1, 3, 5], [1, 3, 5]])


def test_add_product_falls_back_to_numpy_for_views_and_other_dtypes():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 8))[:, ::2]  # not contiguous
    b = rng.standard_normal((6, 3))
    c = rng.standard_normal((4, 3))
    expected = c + 0.5 * a.T @ b
    blas.add_product(0.5, a, b, c)
    np.testing.assert_allclose(c, expected, rtol=1e-14)
    ci = np.zeros((2, 2), dtype=np.int64)
    blas.add_product(2, np.ones((3, 2), np.int64), np.ones((3, 2), np.int64), ci)
    np.testing.assert_array_equal(ci, np.full((2, 2), 6))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5000), a=st.floats(-3, 3), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**32 - 1))
def test_axpy_adds_a_times_x_into_y_in_place(size, a, dtype, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, size)).astype(dtype)
    expected = y.astype(np.float64) + a * x.astype(np.float64)
    blas.axpy(a, x, y)  # the result is read from y itself
    tol = 1e-14 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max()))


@settings(max_examples=40, deadline=None)
@given(k=dims, m=dims, n=dims, alpha=st.floats(-3, 3), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**32 - 1))
def test_the_cblas_call_gives_the_same_bits_as_scipys_wrapper(k, m, n, alpha, dtype, seed):
    blas.load()
    assert blas.CBLAS_SOURCE, "SciPy's wheel ships CBLAS symbols"
    rng = np.random.default_rng(seed)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((k, m), (k, n), (m, n)))
    mine, theirs = c.copy(), c.copy()
    blas._CBLAS["gemm", c.dtype.char](alpha, a, b, mine)
    blas._FUNCS["gemm", c.dtype.char](alpha, a, b, theirs)
    assert mine.tobytes() == theirs.tobytes()


def test_large_products_go_through_ctypes_and_small_ones_through_scipy(monkeypatch):
    blas.load()
    used = []
    for table, name in ((blas._CBLAS, "ctypes"), (blas._FUNCS, "scipy")):
        fn = table["gemm", "d"]
        monkeypatch.setitem(table, ("gemm", "d"), lambda *a, _fn=fn, _name=name: used.append(_name) or _fn(*a))
    rng = np.random.default_rng(4)
    for m in (blas.CTYPES_MIN // 64 - 1, blas.CTYPES_MIN // 64):  # c just below, then at the bar
        a, b, c = rng.standard_normal((16, m)), rng.standard_normal((16, 64)), rng.standard_normal((m, 64))
        expected = c - 0.1 * a.T @ b
        blas.add_product(-0.1, a, b, c)
        np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-12)
    assert used == ["scipy", "ctypes"]


def test_without_a_cblas_library_scipys_wrappers_do_it_all(monkeypatch):
    from cnncli import parallel

    monkeypatch.setattr(blas, "_FUNCS", {})
    monkeypatch.setattr(blas, "_CBLAS", {})
    monkeypatch.setattr(blas, "CBLAS_SOURCE", "")
    monkeypatch.setattr(parallel, "blas_dynlibs", lambda: [])
    blas.load()
    assert blas.CBLAS_SOURCE == "" and not blas._CBLAS
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((16, 1152)), rng.standard_normal((16, 256))
    c = rng.standard_normal((1152, 256))  # above CTYPES_MIN
    expected = c - 0.1 * a.T @ b
    blas.add_product(-0.1, a, b, c)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-12)


def test_add_product_refuses_mismatched_shapes_instead_of_writing_past_c():
    a, b, c = np.ones((3, 4)), np.ones((3, 5)), np.zeros((4, 6))  # c should be (4, 5)
    with pytest.raises(ValueError):
        blas.add_product(1.0, a, b, c)
    with pytest.raises(ValueError):
        blas.axpy(1.0, np.ones(4), np.zeros(3))
    frozen = np.zeros((4, 5))
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        blas.add_product(1.0, a, b, frozen)
