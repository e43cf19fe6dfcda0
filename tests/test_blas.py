"""Threads and BLAS (cnncli.blas): the thread policy each entry point applies and puts back, and
the in-place axpy against plain NumPy."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

import cnncli
from cnncli import blas
from cnncli.errors import ConfigError
from cnncli.losses import MSELoss
from cnncli.network import build_network
from cnncli.optim import SGD, Adam

PACKAGE = Path(cnncli.__file__).parent


def numpy_blas_threads() -> int:
    """The thread count of NumPy's BLAS (not SciPy's own copy) right now."""
    counts = {lib["num_threads"] for lib in threadpool_info()
              if lib["user_api"] == "blas" and not blas.is_scipy_vendored(lib["filepath"])}
    assert len(counts) == 1, counts
    return counts.pop()


def scipy_blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and blas.is_scipy_vendored(lib["filepath"])}


def _net():
    specs = [{"type": "conv2d", "out_channels": 2, "kernel_size": 2}, {"type": "flatten"},
             {"type": "dense", "out_features": 3}, {"type": "sigmoid"}]
    return build_network(specs, (1, 4, 4), np.random.default_rng(0))


class Spy:
    """A layer-like probe: records NumPy's BLAS thread count whenever the network calls it."""

    def __init__(self, layer, seen):
        self.layer, self.seen = layer, seen

    def __getattr__(self, name):
        return getattr(self.layer, name)

    def forward(self, x):
        self.seen.append(numpy_blas_threads())
        return self.layer.forward(x)

    def backward(self, dout):
        self.seen.append(numpy_blas_threads())
        return self.layer.backward(dout)


@pytest.mark.parametrize("policy, expected", [(None, 1), (1, 1), (2, 2)])
def test_every_entry_point_runs_under_the_policy_and_puts_the_users_setting_back(policy, expected):
    net, seen = _net(), []
    net.layers[-1] = Spy(net.layers[-1], seen)
    x, y = np.random.default_rng(1).random((4, 1, 4, 4)), np.eye(3)[[0, 1, 2, 0]]
    loss = MSELoss()
    with threadpool_limits(limits=3, user_api="blas"):  # the user's own setting
        assert numpy_blas_threads() == 3
        with cnncli.threads(policy):
            out = net.forward(x)
            net.backward(loss.gradient(out, y))
            net.predict(x, batch_size=2)
        assert numpy_blas_threads() == 3
        if policy is None:  # without a threads() block too: each call applies the default
            net.forward(x)
        assert numpy_blas_threads() == 3
    assert set(seen) == {expected}


def test_optimizers_step_under_the_policy():
    net = _net()
    net.forward(np.ones((2, 1, 4, 4)))
    net.backward(np.ones((2, 3)))
    seen = []
    real = blas.axpy

    def spy(*args):
        seen.append((numpy_blas_threads(), scipy_blas_threads()))
        return real(*args)

    with threadpool_limits(limits=2, user_api="blas"):
        import cnncli.optim as optim
        old = optim.axpy
        optim.axpy = spy
        try:
            SGD(0.1).step(net)
        finally:
            optim.axpy = old
        Adam().step(net)
    assert seen and all(n == 1 and s <= {1} for n, s in seen)


def test_nested_threads_blocks_apply_the_inner_policy_and_restore_the_outer_one():
    with cnncli.threads(2):
        _net().forward(np.ones((1, 1, 4, 4)))
        assert numpy_blas_threads() == 2
        with cnncli.threads(None):
            assert numpy_blas_threads() == 1 and blas.current() is None
        assert numpy_blas_threads() == 2 and blas.current() == 2
    assert blas.current() is None


def test_scipys_own_blas_copy_always_runs_one_thread():
    blas._find_libs()
    with cnncli.threads(2):
        assert scipy_blas_threads() <= {1}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        cnncli.threads(bad)


def _imports(path: Path) -> set[str]:
    """The cnncli modules ``path`` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("cnncli"):
                found.add(node.module)
                for alias in node.names:  # "from cnncli import blas" imports a module
                    sub = f"{node.module}.{alias.name}"
                    if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                            (PACKAGE.parent / sub.replace(".", "/")).is_dir():
                        found.add(sub)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnncli")}
    return found


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_no_import_cycle_in_the_package():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    # importing a.b.c also imports a.b: count a package's __init__ as a dependency
    graph = {m: {d for dep in deps for d in [dep] if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d] if d in path else [m, d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_nothing_in_the_package_uses_ctypes():
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "ctypes" in p.read_text()]
    assert users == []


def test_no_layer_knows_a_learning_rate():
    for path in (PACKAGE / "layers").glob("*.py"):
        assert not re.search(r"learning_rate|\blr\b", path.read_text()), path


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


def test_axpy_is_right_when_arrays_overlap_and_for_views_and_other_dtypes():
    y = np.arange(5.0)
    blas.axpy(2.0, y, y)  # x is y
    np.testing.assert_array_equal(y, 3 * np.arange(5.0))
    big = np.arange(10.0)
    blas.axpy(1.0, big[:9], big[1:])  # overlapping views
    np.testing.assert_array_equal(big, np.concatenate([[0.0], np.arange(1.0, 10.0) + np.arange(9.0)]))
    strided = np.zeros(8)[::2]
    blas.axpy(2.0, np.ones(4), strided)
    np.testing.assert_array_equal(strided, np.full(4, 2.0))
    ints = np.ones(3, np.int64)
    blas.axpy(2, np.ones(3, np.int64), ints)
    np.testing.assert_array_equal(ints, np.full(3, 3))


def test_axpy_broadcasts_like_numpy_and_refuses_what_numpy_refuses():
    y = np.zeros((2, 3))
    blas.axpy(2.0, np.arange(3.0), y)
    np.testing.assert_array_equal(y, [[0, 2, 4], [0, 2, 4]])
    with pytest.raises(ValueError):
        blas.axpy(1.0, np.ones(4), np.zeros(3))
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        blas.axpy(1.0, np.ones(3), frozen)
