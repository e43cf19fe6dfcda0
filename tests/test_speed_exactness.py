"""The fast paths stay exact: fast and reference conv train to the same parameters in every
conv layout, float32 stays float32 everywhere, training is bit-for-bit repeatable and runs BLAS
with the configured thread count. Nothing here is timed (benchmarks/bench_train.py measures
speed)."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from cnncli import SGD, Adam, CrossEntropyLoss, MSELoss, build_network
from cnncli.config import load_config
from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import Conv2D, MaxPool2D, Sigmoid, conv
from cnncli.train import Trainer
from conftest import ROOT, SEED_MNIST_NET

LENET_NET = [  # padding, pooling, a conv that needs its input gradient, a strided conv
    {"type": "conv2d", "out_channels": 8, "kernel_size": 5, "padding": 2, "init": "he"},
    {"type": "relu"},
    {"type": "max_pool2d", "kernel_size": 2},                                 # -> 8x14x14
    {"type": "conv2d", "out_channels": 16, "kernel_size": 5, "init": "he"},   # -> 16x10x10
    {"type": "tanh"},
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "init": "he"},  # -> 8x4x4
    {"type": "relu"},
    {"type": "flatten"},
    {"type": "dense", "out_features": 32, "init": "he"},
    {"type": "relu"},
    {"type": "dense", "out_features": 10, "init": "xavier"},
    {"type": "softmax"},
]


def train_steps(specs, impl, steps, batch, loss, optimizer, dtype=np.float64, seed=0):
    """``steps`` SGD steps on random 1x28x28 images; returns the network."""
    net = build_network(specs, (1, 28, 28), np.random.default_rng([seed, 1]), dtype, impl=impl)
    rng = np.random.default_rng([seed, 5])
    for _ in range(steps):
        x = rng.random((batch, 1, 28, 28)).astype(dtype)
        y = np.eye(10, dtype=dtype)[rng.integers(0, 10, batch)]
        out = net.forward(x)
        net.backward(loss.gradient(out, y))
        optimizer.step(net)
    return net


def assert_same_params(a, b, rtol):
    for key, pa in a.params.items():
        pb = b.params[key]
        scale = np.abs(pb).max()
        assert np.abs(pa - pb).max() <= rtol * scale, (key, np.abs(pa - pb).max() / scale)


def test_fast_and_reference_conv_train_the_seed_network_to_the_same_parameters():
    fast = train_steps(SEED_MNIST_NET, "fast", 20, 16, MSELoss(), SGD(0.1))
    ref = train_steps(SEED_MNIST_NET, "reference", 20, 16, MSELoss(), SGD(0.1))
    assert_same_params(fast, ref, 1e-10)
    start = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng([0, 1]))
    assert not np.allclose(fast.params["layers.0.W"], start.params["layers.0.W"])  # it trained


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_fast_and_reference_conv_agree_on_pooling_padding_and_stride(monkeypatch, layout):
    monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if layout == "rows" else 2**62)
    opt = lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)  # noqa: E731
    fast = train_steps(LENET_NET, "fast", 4, 6, CrossEntropyLoss(from_logits=False), opt())
    ref = train_steps(LENET_NET, "reference", 4, 6, CrossEntropyLoss(from_logits=False), opt())
    assert_same_params(fast, ref, 1e-10)


@pytest.mark.parametrize("layout", ["flat", "rows"])
@pytest.mark.parametrize("c_in,c_out,size,k,padding,stride", [
    (1, 8, 28, 5, 2, 1),    # LeNet conv1 (flat: per-sample kernel gradient)
    (8, 16, 14, 5, 0, 1),   # LeNet conv2 (flat: one long kernel-gradient product)
    (12, 3, 7, 3, 1, 1),
    (3, 4, 9, 3, 1, 2),     # strided: the "windows" layout
])
def test_fast_conv_matches_reference_on_network_sized_layers(monkeypatch, layout, c_in, c_out, size, k,
                                                             padding, stride):
    monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if layout == "rows" else 2**62)
    rng = np.random.default_rng(4)
    fast = Conv2D(c_in, c_out, k, stride, padding, impl="fast", rng=np.random.default_rng(1))
    ref = Conv2D(c_in, c_out, k, stride, padding, impl="reference", rng=np.random.default_rng(1))
    x = rng.standard_normal((3, c_in, size, size))
    out = fast.forward(x)
    np.testing.assert_allclose(out, ref.forward(x), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(fast.backward(dout), ref.backward(dout), rtol=1e-12, atol=1e-12)
    for key in ("W", "b"):
        np.testing.assert_allclose(fast.grads[key], ref.grads[key], rtol=1e-12, atol=1e-12)
    # The layer reuses scratch arrays between calls: a second batch of another size is
    # still right, and the first output was not overwritten.
    first = out.copy()
    x2 = rng.standard_normal((2, c_in, size, size))
    np.testing.assert_allclose(fast.forward(x2), ref.forward(x2), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out, first)


@pytest.mark.parametrize("layout", ["flat", "rows"])
@pytest.mark.parametrize("c_in,k,padding,stride", [(1, 3, 1, 1), (8, 5, 2, 1), (12, 3, 0, 1), (2, 3, 1, 2)])
def test_every_fast_conv_layout_passes_the_gradient_check(monkeypatch, layout, c_in, k, padding, stride):
    monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if layout == "rows" else 2**62)
    rng = np.random.default_rng(5)
    layer = Conv2D(c_in, 3, k, stride, padding, rng=rng)
    assert layer._layout((2, c_in, 8, 7), np.float64) == ("windows" if stride > 1 else layout)
    for r in check_layer(layer, rng.standard_normal((2, c_in, 8, 7)), rng, max_entries=150):
        assert r.max_rel_error < TOLERANCE, (r.name, r.max_rel_error)


def test_max_pool_gradient_goes_to_the_first_maximum_with_many_ties():
    rng = np.random.default_rng(2)
    x = np.maximum(rng.integers(-2, 3, (2, 3, 7, 8)), 0).astype(np.float64)  # ReLU-like ties
    pool = MaxPool2D(2)
    out = pool.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    expected = np.zeros_like(x)
    for n, c, p, q in np.ndindex(out.shape):
        window = x[n, c, 2 * p:2 * p + 2, 2 * q:2 * q + 2]
        assert out[n, c, p, q] == window.max()
        i, j = divmod(int(window.argmax()), 2)  # first maximum in row-major order
        expected[n, c, 2 * p + i, 2 * q + j] = dout[n, c, p, q]
    np.testing.assert_array_equal(dx, expected)


def test_sigmoid_is_accurate_over_the_whole_range():
    x = np.concatenate([np.linspace(-700, 700, 2801), [-36.5, -1e-300, 0.0, 1e-300, 36.5]])
    expected = np.array([1 / (1 + np.exp(-v)) if v >= 0 else np.exp(v) / (1 + np.exp(v)) for v in x])
    np.testing.assert_allclose(Sigmoid().forward(x[None])[0], expected, rtol=4e-16, atol=0)
    assert Sigmoid().forward(np.array([[-744.0]]))[0, 0] == np.exp(-744.0) > 0  # subnormal, not 0


def test_sgd_update_is_p_minus_lr_times_g_within_one_ulp():
    rng = np.random.default_rng(3)
    net = build_network(SEED_MNIST_NET[2:5], (50,), rng)
    for _, _, g in net.parameters():
        g[...] = rng.standard_normal(g.shape)
    before = {k: p.copy() for k, p in net.params.items()}
    SGD(0.1).step(net)
    for key, p, g in net.parameters():
        np.testing.assert_allclose(p, before[key] - 0.1 * g, rtol=0, atol=np.spacing(np.abs(p)).max())


@pytest.mark.parametrize("specs,loss", [
    (SEED_MNIST_NET, MSELoss()),
    (LENET_NET, CrossEntropyLoss(from_logits=False)),
    (LENET_NET[:-1], CrossEntropyLoss(from_logits=True)),
])
@pytest.mark.parametrize("make_opt", [
    lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: Adam(1e-3, weight_decay=1e-3)])
def test_float32_stays_float32_through_every_layer_and_gradient(specs, loss, make_opt):
    f32 = np.dtype(np.float32)
    rng = np.random.default_rng(0)
    net = build_network(specs, (1, 28, 28), rng, np.float32)
    opt = make_opt()
    for _ in range(2):
        h = rng.random((4, 1, 28, 28)).astype(np.float32)
        for layer in net.layers:
            h = layer.forward(h)
            assert h.dtype == f32, f"{layer.type_name} output"
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 4)]
        assert isinstance(loss(h, y), float)
        d = loss.gradient(h, y)
        assert d.dtype == f32, "loss gradient"
        for layer in reversed(net.layers):
            d = layer.backward(d)
            if d is not None:
                assert d.dtype == f32, f"{layer.type_name} input gradient"
            for name, g in layer.grads.items():
                assert g.dtype == f32, f"{layer.type_name} grads[{name}]"
        opt.step(net)
        for key, p, _ in net.parameters():
            assert p.dtype == f32, key
    for state in opt.state_dict().values():
        assert np.asarray(state).dtype in (f32, np.dtype(np.int64)) or np.asarray(state).ndim == 0


def test_trainer_keeps_float32_data_and_parameters():
    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["training.dtype=float32", "training.epochs=1"])
    trainer = Trainer(cfg)
    trainer.train_epoch()
    assert {p.dtype for p in trainer.net.params.values()} == {np.dtype(np.float32)}
    xb = trainer.data.images(trainer.data.x_train[:4], trainer.dtype)
    assert trainer.net.forward(xb).dtype == np.float32


@pytest.mark.parametrize("specs,loss,make_opt", [
    (SEED_MNIST_NET, MSELoss(), lambda: SGD(0.1)),
    (LENET_NET, CrossEntropyLoss(from_logits=False),
     lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_two_identical_runs_give_bit_identical_parameters(specs, loss, make_opt, dtype):
    with threadpool_limits(limits=1):
        a = train_steps(specs, "fast", 6, 8, loss, make_opt(), dtype)
        b = train_steps(specs, "fast", 6, 8, loss, make_opt(), dtype)
    for key, p in a.params.items():
        assert p.tobytes() == b.params[key].tobytes(), key


@pytest.mark.parametrize("threads", [None, 2])
def test_training_runs_blas_with_the_configured_threads_and_one_by_default(threads):
    from threadpoolctl import threadpool_info

    over = ["training.epochs=1", f"training.threads={threads or 'null'}"]
    cfg = load_config(ROOT / "configs" / "shapes.yaml", over)
    trainer = Trainer(cfg)
    seen = []
    trainer.train_epoch(on_batch=lambda b, n, loss: seen.append(
        {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}))
    numpy_blas = {n for libs in seen for path, n in libs.items() if "scipy.libs" not in path}
    assert numpy_blas == {threads or 1}
    scipy_own = {n for libs in seen for path, n in libs.items() if "scipy.libs" in path}
    assert scipy_own <= {1}  # SciPy's own OpenBLAS (the axpy updates) never gets a second thread


PLAIN_SGD = {"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}


def _trainer_after_steps(impl, steps, optimizer, dtype="float64", network=SEED_MNIST_NET):
    """A Trainer on the seed's MNIST network after ``steps`` steps over random digits-sized data."""
    from cnncli.data import Dataset

    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (16 * steps, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 16 * steps)
    data = Dataset("random", x, y, x[:16], y[:16], [str(i) for i in range(10)], 1 / 255)
    cfg = load_config(ROOT / "configs" / "shapes.yaml")
    cfg["network"] = network
    cfg["training"].update(impl=impl, batch_size=16, learning_rate=0.1, dtype=dtype,
                           optimizer=optimizer)
    trainer = Trainer(cfg, data=data)
    trainer.train_epoch()
    return trainer


def test_trainer_fast_and_reference_paths_reach_the_same_parameters_after_20_steps():
    # The reference path runs the seed's algorithm step for step (SciPy loops, the first
    # layer's input gradient too); the fast path skips that gradient.
    fast = _trainer_after_steps("fast", 20, PLAIN_SGD)
    ref = _trainer_after_steps("reference", 20, PLAIN_SGD)
    assert ref.net.input_grad and not fast.net.input_grad
    assert_same_params(fast.net, ref.net, 1e-10)
    start = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng([0, 1]))
    for key, p in start.params.items():  # every parameter moved
        assert not np.allclose(fast.net.params[key], p), key


@pytest.mark.parametrize("network,optimizer", [
    (SEED_MNIST_NET, PLAIN_SGD),
    (LENET_NET[:-1] + [{"type": "dense", "out_features": 10}, {"type": "sigmoid"}],
     {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_readme_api_loop_gives_the_same_bits_as_cnn_train(network, optimizer, dtype):
    trainer = _trainer_after_steps("fast", 4, optimizer, dtype, network)
    data, t = trainer.data, trainer.cfg["training"]
    # the README's loop, from the trainer's initial weights, over the same batches
    net = build_network(network, (1, 28, 28), np.random.default_rng([0, 1]), dtype)
    loss = MSELoss()
    opt = SGD(t["learning_rate"], **{k: v for k, v in optimizer.items() if k != "name"})
    for b in range(4):
        x = data.images(data.x_train[16 * b:16 * (b + 1)], dtype)
        y = np.eye(10, dtype=dtype)[data.y_train[16 * b:16 * (b + 1)]]
        out = net.forward(x)
        net.backward(loss.gradient(out, y))
        opt.step(net)
    for key, p in trainer.net.params.items():
        assert p.tobytes() == net.params[key].tobytes(), key


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_grads_after_backward_are_the_gradient_and_the_step_applies_them_as_changed(dtype):
    net = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng(3), dtype)
    big, relu = net.layers[2], net.layers[3]
    assert big.type_name == "dense"
    seen = {}
    relu_backward = relu.backward
    relu.backward = lambda d: seen.setdefault("dout", relu_backward(d))  # the big layer's dout
    rng = np.random.default_rng(8)
    x = rng.random((6, 1, 28, 28)).astype(dtype)
    y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 6)]
    flat = net.layers[1].forward(net.layers[0].forward(x))  # the big layer's input
    net.backward(MSELoss().gradient(net.forward(x), y))
    tol = {"rtol": 1e-12 if dtype == np.float64 else 1e-5, "atol": 0}
    np.testing.assert_allclose(big.grads["W"], flat.T @ seen["dout"], **tol)
    np.testing.assert_allclose(big.grads["b"], seen["dout"].sum(axis=0), **tol)
    before = {k: p.copy() for k, p in net.params.items()}
    for g in net.grads.values():  # a user's own change between backward and step
        g *= 0.5
    halved = {k: g.copy() for k, g in net.grads.items()}
    SGD(0.1).step(net)
    for key, p in net.params.items():
        np.testing.assert_allclose(p, before[key] - 0.1 * halved[key], rtol=0,
                                   atol=2 * np.spacing(np.abs(before[key]).max()), err_msg=key)


def test_grads_stay_the_gradient_of_the_last_backward_after_the_step():
    specs = SEED_MNIST_NET[2:5]  # dense 50 -> 256, relu, dense -> 128
    net = build_network(specs, (50,), np.random.default_rng(3))
    rng = np.random.default_rng(8)
    x, dout = rng.standard_normal((4, 50)), rng.standard_normal((4, 128))
    net.forward(x)
    net.backward(dout)
    expected = {k: g.copy() for k, g in net.grads.items()}
    SGD(0.1).step(net)
    for key, g in net.grads.items():
        np.testing.assert_array_equal(g, expected[key], err_msg=key)


def test_trainer_float32_is_close_to_float64():
    t = _trainer_after_steps("fast", 5, PLAIN_SGD, "float32")
    t64 = _trainer_after_steps("fast", 5, PLAIN_SGD)
    for key, p in t.net.params.items():
        np.testing.assert_allclose(p, t64.net.params[key], rtol=0, atol=2e-5 * np.abs(p).max())


def test_the_reference_trainer_computes_the_first_layers_input_gradient_as_the_seed_does():
    seen = {}
    for impl in ("fast", "reference"):
        trainer = _trainer_after_steps(impl, 1, PLAIN_SGD)
        first = trainer.net.layers[0]
        xb = np.random.default_rng(0).random((2, 1, 28, 28))
        dout = np.ones((2, 4, 24, 24))
        first.forward(xb)
        seen[impl] = first.backward(dout)
    assert seen["fast"] is None
    assert seen["reference"].shape == (2, 1, 28, 28)


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_conv_scratch_shared_between_layers_never_leaks_old_values(monkeypatch, layout):
    """Conv layers share their per-call scratch arrays (conv._temp): every entry read must have
    been written in the same call. Each scratch array is handed out full of NaN here, and a
    network of convolutions of different sizes, paddings and strides still trains to the
    reference's parameters."""
    monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if layout == "rows" else 2**62)
    shared = conv._temp

    def poisoned(name, shape, dtype):
        a = shared(name, shape, dtype)
        a.fill(np.nan)
        return a

    monkeypatch.setattr(conv, "_temp", poisoned)
    opt = lambda: SGD(0.05, momentum=0.9)  # noqa: E731
    fast = train_steps(LENET_NET, "fast", 3, 6, CrossEntropyLoss(from_logits=False), opt())
    ref = train_steps(LENET_NET, "reference", 3, 6, CrossEntropyLoss(from_logits=False), opt())
    assert_same_params(fast, ref, 1e-10)
