"""Batch norm, dropout and global average pooling: exact gradients, PyTorch's formulas written
out in NumPy, train and eval modes, buffers that no optimizer touches."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import BatchNorm, Dense, Dropout, GlobalAvgPool2D
from cnncli.network import Network, build_network
from cnncli.optim import SGD, Adam


def assert_gradients(layer, x, rng):
    """Every entry of the input gradient and of each parameter's gradient agrees with central
    finite differences, and every one was compared: none skipped at a kink. Batch norm (in
    either mode), dropout (its masks fixed) and global average pooling have no kink."""
    results = check_layer(layer, x, rng, max_entries=None)
    sizes = {"x": x.size, **{name: p.size for name, p in layer.params.items()}}
    assert sorted(r.name for r in results) == sorted(sizes)
    for r in results:
        assert r.max_rel_error < TOLERANCE, (r.type, r.name, r.max_rel_error)
        assert r.skipped == 0, (r.type, r.name, f"{r.skipped} entries skipped at kinks")
        assert r.checked == sizes[r.name], (r.type, r.name, r.checked, sizes[r.name])


# With two values per channel, the normalised values are +-1 whatever x is, up to eps: the
# input gradient is then of order eps, so those cases use a large eps to check the formula.
@pytest.mark.parametrize("shape,eps", [((5, 3, 4, 2), 1e-5), ((6, 4), 1e-5), ((3, 2, 1, 1), 1e-5),
                                       ((2, 2, 1, 1), 0.5), ((2, 3), 0.5)])
def test_batch_norm_train_mode_gradients(shape, eps):
    rng = np.random.default_rng(0)
    layer = BatchNorm(shape[1], eps=eps)
    layer.params["gamma"][...] = rng.uniform(0.5, 2.0, shape[1])
    layer.params["beta"][...] = rng.standard_normal(shape[1])
    assert layer.training
    assert_gradients(layer, rng.standard_normal(shape) * 3 + 1, rng)


def test_batch_norm_eval_mode_gradients():
    rng = np.random.default_rng(1)
    layer = BatchNorm(3)
    layer.buffers["running_mean"][...] = rng.standard_normal(3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    layer.training = False
    assert_gradients(layer, rng.standard_normal((4, 3, 3, 2)), rng)


@given(n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_global_avg_pool_gradients(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    layer = GlobalAvgPool2D()
    x = rng.standard_normal((n, c, h, w))
    np.testing.assert_allclose(layer.forward(x), x.mean(axis=(2, 3)))
    assert_gradients(layer, x, rng)


def numpy_batch_norm(x, gamma, beta, mean_run, var_run, momentum, eps):
    """PyTorch's BatchNorm, transcribed: train-mode output with the biased batch variance,
    running statistics updated with the unbiased one."""
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes)
    var_b = ((x - mu.reshape(shape)) ** 2).sum(axis=axes) / m
    var_u = ((x - mu.reshape(shape)) ** 2).sum(axis=axes) / (m - 1)
    out = gamma.reshape(shape) * (x - mu.reshape(shape)) / np.sqrt(var_b.reshape(shape) + eps) \
        + beta.reshape(shape)
    return out, (1 - momentum) * mean_run + momentum * mu, (1 - momentum) * var_run + momentum * var_u


@pytest.mark.parametrize("shape", [(8, 3, 5, 4), (10, 6)])
def test_batch_norm_matches_the_formulas(shape):
    rng = np.random.default_rng(2)
    c = shape[1]
    layer = BatchNorm(c, momentum=0.2, eps=1e-3)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    layer.params["gamma"][...] = gamma
    layer.params["beta"][...] = beta
    mean_run, var_run = np.zeros(c), np.ones(c)
    for _ in range(4):  # a few training steps
        x = rng.standard_normal(shape) * 2 + 3
        want, mean_run, var_run = numpy_batch_norm(x, gamma, beta, mean_run, var_run, 0.2, 1e-3)
        np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], mean_run, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], var_run, rtol=1e-12)
    layer.training = False
    x = rng.standard_normal(shape)
    bshape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    want = gamma.reshape(bshape) * (x - mean_run.reshape(bshape)) \
        / np.sqrt(var_run.reshape(bshape) + 1e-3) + beta.reshape(bshape)
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.forward(x), layer.forward(x))  # deterministic
    np.testing.assert_array_equal(layer.buffers["running_mean"], mean_run)  # eval changes nothing


def test_eval_mode_scores_do_not_depend_on_the_batch_size():
    from cnncli.scoring import scores

    specs = [{"type": "conv2d", "out_channels": 3, "kernel_size": 3}, {"type": "batch_norm"},
             {"type": "relu"}, {"type": "dropout", "p": 0.5}, {"type": "flatten"},
             {"type": "dense", "out_features": 5}, {"type": "batch_norm"}, {"type": "dense", "out_features": 4}]
    net = build_network(specs, (1, 6, 6), np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(3):  # move the running statistics away from their start
        net.forward(rng.standard_normal((16, 1, 6, 6)))
    x = rng.integers(0, 256, (37, 1, 6, 6)).astype(np.uint8)
    meta = {"input_scale": 1 / 255}
    whole = scores(net, x, meta, batch_size=37)
    ones = np.concatenate([scores(net, x[i:i + 1], meta) for i in range(37)])
    sevens = scores(net, x, meta, batch_size=7)
    np.testing.assert_allclose(ones, whole, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sevens, whole, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ones.argmax(1), whole.argmax(1))
    assert net.training  # scores() restores the mode


def test_batch_norm_refuses_a_single_value_per_channel():
    from cnncli.errors import TrainingError

    layer = BatchNorm(4)
    with pytest.raises(TrainingError, match="single value per channel"):
        layer.forward(np.ones((1, 4)))
    layer.training = False
    out = layer.forward(np.ones((1, 4)))  # eval mode: fine
    assert np.all(np.isfinite(out))
    layer.training = True
    assert np.all(np.isfinite(layer.forward(np.ones((1, 4, 2, 1)))))  # two values per channel


def test_dropout_drops_about_p_and_scales_the_rest():
    p = 0.3
    layer = Dropout(p)
    layer.set_rng(np.random.default_rng(0))
    x = np.ones((200, 500))
    out = layer.forward(x)
    dropped = float(np.mean(out == 0))
    # 100,000 Bernoulli(0.3) draws: standard deviation sqrt(0.3 * 0.7 / 1e5) = 0.00145;
    # 5 standard deviations is 0.0073
    assert abs(dropped - p) < 0.0073
    np.testing.assert_allclose(out[out != 0], 1 / (1 - p))
    dout = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dout), dout * layer.mask)
    np.testing.assert_array_equal(layer.mask, (out != 0) / (1 - p))


def test_dropout_same_seed_same_masks_and_eval_is_identity():
    a, b = Dropout(0.5), Dropout(0.5)
    a.set_rng(np.random.default_rng(7))
    b.set_rng(np.random.default_rng(7))
    x = np.random.default_rng(0).standard_normal((4, 10))
    for _ in range(3):
        np.testing.assert_array_equal(a.forward(x), b.forward(x))
    c = Dropout(0.5)
    c.set_rng(np.random.default_rng(8))
    assert not np.array_equal(a.forward(x), c.forward(x))
    a.training = False
    assert a.forward(x) is x
    np.testing.assert_array_equal(a.backward(x), x)


def test_dropout_gradient_with_a_fixed_mask():
    layer = Dropout(0.4)
    layer.set_rng(np.random.default_rng(3))
    layer.fix_mask = True
    rng = np.random.default_rng(4)
    assert_gradients(layer, rng.standard_normal((3, 7)), rng)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "half", True, float("nan")])
def test_dropout_p_must_be_in_0_1(bad):
    from cnncli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"p must be a number in \[0, 1\)"):
        build_network([{"type": "dropout", "p": bad}], (3,))


@pytest.mark.parametrize("opt", [SGD(0.1, weight_decay=0.1), SGD(0.1, momentum=0.9, nesterov=True,
                                                                 weight_decay=0.01),
                                 Adam(0.01, weight_decay=0.1), SGD(0.1)])
def test_optimizers_and_weight_decay_never_touch_buffers(opt):
    rng = np.random.default_rng(0)
    bn = BatchNorm(4)
    net = Network([Dense(3, 4, rng=rng), bn, Dense(4, 2, rng=rng)], (3,))
    x = rng.standard_normal((8, 3))
    net.forward(x)
    before = {k: v.copy() for k, v in net.buffers.items()}
    gamma = bn.params["gamma"].copy()
    dout = rng.standard_normal((8, 2))
    for _ in range(3):
        net.backward(dout)
        opt.step(net)
    for k, v in net.buffers.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert not np.array_equal(bn.params["gamma"], gamma)  # the parameters did train
    assert all(not k.endswith(("running_mean", "running_var")) for k in net.params)
    assert set(net.state_dict()) == set(net.params) | set(net.buffers)


def test_modes_switch_every_layer():
    net = build_network([{"type": "dense", "out_features": 3}, {"type": "batch_norm"},
                         {"type": "dropout"}], (4,), np.random.default_rng(0))
    assert net.training and all(layer.training for layer in net.layers)
    assert net.eval() is net and not any(layer.training for layer in net.layers)
    net.train()
    assert all(layer.training for layer in net.layers)


@pytest.mark.parametrize("bad", [True, -0.1, 1.5, "0.1", float("nan")])
def test_batch_norm_momentum_outside_0_1_names_the_range(bad):
    from cnncli.errors import ConfigError

    with pytest.raises(ConfigError, match=r"momentum must be a number in \[0, 1\]"):
        BatchNorm(3, momentum=bad)
