"""The in-place BLAS updates (cnncli.blas) against plain NumPy, over random shapes and layouts."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli import blas

dims = st.integers(1, 40)


@settings(max_examples=60, deadline=None)
@given(k=dims, m=dims, n=dims, alpha=st.floats(-3, 3), dtype=st.sampled_from(["float64", "float32"]),
       seed=st.integers(0, 2**32 - 1))
def test_add_product_adds_alpha_a_transpose_b_into_c_in_place(k, m, n, alpha, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b, c = (rng.standard_normal(s).astype(dtype) for s in ((k, m), (k, n), (m, n)))
    expected = c.astype(np.float64) + alpha * (a.astype(np.float64).T @ b.astype(np.float64))
    before = c.__array_interface__["data"][0]
    blas.add_product(alpha, a, b, c)
    assert c.__array_interface__["data"][0] == before and c.dtype == dtype
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * (1 + np.abs(expected).max()))


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
