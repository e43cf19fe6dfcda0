"""The second core (cnncli.workers): fixed halves, the same bits with or without the helper
thread, never waiting on a helper that cannot run, errors and Ctrl-C passed on, no spinning."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cnncli
from cnncli import workers
from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import Conv2D, conv, dense
from cnncli.losses import CrossEntropyLoss, MSELoss
from cnncli.network import build_network
from cnncli.optim import SGD
from conftest import SEED_MNIST_NET


@given(st.integers(0, 10_000))
def test_split_covers_the_range_in_two_nearly_equal_consecutive_halves(n):
    parts = workers.split(n)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a < b or n == 0 for a, b in parts)
    assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
    assert len(parts) == (2 if n >= 2 else 1)
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


CONV_NET = [  # its convs and dense layer are large enough to run in halves
    {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
    {"type": "batch_norm"}, {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "stride": 2},
    {"type": "relu"}, {"type": "flatten"},
    {"type": "dense", "out_features": 64}, {"type": "relu"},
    {"type": "dense", "out_features": 10},
]


def _train(specs, in_shape, policy, dtype, loss, steps=20, batch=16):
    net = build_network(specs, in_shape, np.random.default_rng(0), dtype)
    opt, rng = SGD(0.05, momentum=0.9), np.random.default_rng(1)
    with cnncli.threads(policy):
        for _ in range(steps):
            x = rng.random((batch, *in_shape)).astype(dtype)
            y = np.eye(10, dtype=dtype)[rng.integers(0, 10, batch)]
            out = net.forward(x)
            net.backward(loss.gradient(out, y))
            opt.step(net)
    return net


@pytest.fixture(params=["shapes decide", "flat", "rows"])
def every_layer_in_halves(request, monkeypatch):
    """As shipped, or every layer that can in halves, with the conv's flat or rows layout."""
    if request.param != "shapes decide":
        monkeypatch.setattr(conv, "SPLIT_FLOPS", 0)
        monkeypatch.setattr(dense, "SPLIT_BYTES", 0)
        monkeypatch.setattr(workers, "SPLIT_VALUES", 0)  # ReLU, batch norm, max pooling
        monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if request.param == "rows" else 2**62)
    return request.param


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("specs,in_shape,loss", [
    (SEED_MNIST_NET, (1, 28, 28), MSELoss()),
    (CONV_NET, (3, 16, 16), CrossEntropyLoss()),
])
def test_parameters_after_20_steps_are_bit_identical_with_the_halves_side_by_side_or_in_turn(
        specs, in_shape, loss, dtype, every_layer_in_halves):
    side_by_side = _train(specs, in_shape, None, dtype, loss)
    in_turn = _train(specs, in_shape, 1, dtype, loss)
    for key, p in side_by_side.params.items():
        assert p.tobytes() == in_turn.params[key].tobytes(), key


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
def test_a_conv_in_halves_has_the_finite_difference_gradients_and_matches_the_reference(
        monkeypatch, stride, padding):
    monkeypatch.setattr(conv, "SPLIT_FLOPS", 0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 7, 6))  # an odd batch: halves of 2 and 3
    layer = Conv2D(3, 4, 3, stride=stride, padding=padding, rng=np.random.default_rng(0))
    assert len(layer._parts(x.shape)) == 2
    for r in check_layer(layer, x, rng, max_entries=None):
        assert r.checked > 0 and r.max_rel_error <= TOLERANCE, r
    ref = Conv2D(3, 4, 3, stride=stride, padding=padding, impl="reference",
                 rng=np.random.default_rng(0))
    dout = rng.standard_normal(layer.forward(x).shape)
    np.testing.assert_allclose(layer.forward(x), ref.forward(x), rtol=1e-12, atol=1e-12)
    dx, dx_ref = layer.backward(dout), ref.backward(dout)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    for key in ("W", "b"):
        np.testing.assert_allclose(layer.grads[key], ref.grads[key], rtol=1e-12, atol=1e-12)


def test_the_caller_runs_every_half_itself_while_the_helper_is_kept_off():
    if not workers.helper_on():
        pytest.skip("one core: the helper is never used")
    release = threading.Event()
    blocker = workers._Batch([release.wait])  # keeps the helper busy
    workers._get_helper().give(blocker)
    try:
        ran = []
        start = time.perf_counter()
        workers.run([lambda: ran.append(threading.get_ident()) for _ in range(2)])
        assert ran == [threading.get_ident()] * 2
        assert time.perf_counter() - start < 1.0
    finally:
        release.set()
    blocker.done.wait(5)


def test_the_helper_takes_a_half_when_it_is_free():
    if not workers.helper_on():
        pytest.skip("one core: the helper is never used")
    gate, ran = threading.Barrier(2, timeout=5), []

    def half():  # both halves must be running at once to pass the barrier
        ran.append(threading.get_ident())
        gate.wait()

    workers.run([half, half])
    assert len(set(ran)) == 2


def test_threads_1_runs_every_half_on_the_calling_thread():
    ran = []
    with cnncli.threads(1):
        workers.run([lambda: ran.append(threading.get_ident()) for _ in range(2)])
    assert ran == [threading.get_ident()] * 2


def test_an_error_in_either_half_is_raised_after_both_finished():
    done = []

    def fail():
        raise ValueError("half failed")

    for tasks in ([fail, lambda: done.append(1)], [lambda: done.append(1), fail]):
        with pytest.raises(ValueError, match="half failed"):
            workers.run(tasks)
    assert done == [1, 1]


def test_ctrl_c_in_the_callers_half_leaves_no_half_running_and_no_deadlock():
    started = threading.Event()

    def interrupted():
        started.set()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        workers.run([interrupted, lambda: time.sleep(0.05)])
    assert started.is_set()
    workers.run([lambda: None, lambda: None])  # the helper still serves


def test_the_idle_helper_sleeps():
    workers.run([lambda: None, lambda: None])  # the helper exists
    cpu = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu < 0.05
