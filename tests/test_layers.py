"""Every layer's backward pass against central finite differences (float64), the fast conv
against the plain SciPy reference, and the layer contract over the whole registry."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.errors import ConfigError
from cnncli.gradcheck import TOLERANCE, check_layer
from cnncli.layers import LAYERS, AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh


def assert_gradients(layer, x, rng):
    """Every entry of the input gradient and of each parameter's gradient agrees with central
    finite differences, and every one was compared: none skipped at a kink. The layers checked
    here are smooth (conv, dense, flatten, sigmoid, tanh, softmax, average pooling), or their
    inputs sit off every kink (ReLU's moved away from 0; random normals make no max-pool ties)."""
    results = check_layer(layer, x, rng, max_entries=None)
    sizes = {"x": x.size, **{name: p.size for name, p in layer.params.items()}}
    assert sorted(r.name for r in results) == sorted(sizes)
    for r in results:
        assert r.max_rel_error < TOLERANCE, (r.type, r.name, r.max_rel_error)
        assert r.skipped == 0, (r.type, r.name, f"{r.skipped} entries skipped at kinks")
        assert r.checked == sizes[r.name], (r.type, r.name, r.checked, sizes[r.name])


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 0), (1, 1), (2, 1), (3, 2), (1, "same")])
def test_conv2d_gradients(impl, stride, padding):
    rng = np.random.default_rng(0)
    layer = Conv2D(2, 3, 3, stride=stride, padding=padding, impl=impl, rng=rng)
    assert_gradients(layer, rng.standard_normal((2, 2, 7, 6)), rng)


def test_conv2d_forward_is_cross_correlation_by_hand():
    # One 3x3 input, one 2x2 kernel: out[p, q] = sum_ij x[p+i, q+j] * W[i, j] + b (no flip).
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    layer = Conv2D(1, 1, 2, rng=np.random.default_rng(0))
    layer.params["W"][...] = [[[[1.0, 2.0], [3.0, 4.0]]]]
    layer.params["b"][...] = 0.5
    out = layer.forward(x)
    # top-left window [[0, 1], [3, 4]]: 0*1 + 1*2 + 3*3 + 4*4 + 0.5 = 27.5
    np.testing.assert_allclose(out[0, 0], [[27.5, 37.5], [57.5, 67.5]])


def test_conv2d_kernel_gradient_is_not_rotated():
    """The seed post's swapped correlate2d(dout, x) gives the kernel gradient rotated by 180
    degrees; ours is correlate2d(x, dout), which the finite differences confirm."""
    from scipy.signal import correlate2d

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 5, 5))
    layer = Conv2D(1, 1, 3, rng=rng)
    dout = rng.standard_normal((1, 1, 3, 3))
    layer.forward(x)
    layer.backward(dout)
    right = correlate2d(x[0, 0], dout[0, 0], mode="valid")
    swapped = correlate2d(dout[0, 0], x[0, 0], mode="valid")
    np.testing.assert_allclose(layer.grads["W"][0, 0], right, rtol=1e-12)
    np.testing.assert_allclose(swapped, right[::-1, ::-1], rtol=1e-12)
    assert not np.allclose(layer.grads["W"][0, 0], swapped)


@given(n=st.integers(1, 4), c_in=st.integers(1, 3), c_out=st.integers(1, 4),
       h=st.integers(3, 12), w=st.integers(3, 12), data=st.data())
@settings(max_examples=60, deadline=None)
def test_fast_conv_matches_reference(n, c_in, c_out, h, w, data):
    k = data.draw(st.integers(1, min(h, w)), label="k")
    stride = data.draw(st.integers(1, 3), label="stride")
    padding = data.draw(st.integers(0, 2), label="padding")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    fast = Conv2D(c_in, c_out, k, stride=stride, padding=padding, impl="fast", rng=np.random.default_rng(seed))
    ref = Conv2D(c_in, c_out, k, stride=stride, padding=padding, impl="reference", rng=np.random.default_rng(seed))
    x = rng.standard_normal((n, c_in, h, w))
    out_f, out_r = fast.forward(x), ref.forward(x)
    np.testing.assert_allclose(out_f, out_r, rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(out_f.shape)
    dx_f, dx_r = fast.backward(dout), ref.backward(dout)
    np.testing.assert_allclose(dx_f, dx_r, rtol=1e-10, atol=1e-12)
    for key in ("W", "b"):
        np.testing.assert_allclose(fast.grads[key], ref.grads[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make,shape", [
    (lambda rng: Dense(7, 5, rng=rng), (4, 7)),
    (lambda rng: Flatten(), (3, 2, 3, 4)),
    (lambda rng: ReLU(), (4, 9)),
    (lambda rng: Sigmoid(), (4, 9)),
    (lambda rng: Tanh(), (4, 9)),
    (lambda rng: Softmax(), (4, 6)),
    (lambda rng: MaxPool2D(2), (2, 3, 6, 6)),
    (lambda rng: MaxPool2D(3, stride=1), (2, 2, 6, 5)),  # overlapping windows
    (lambda rng: MaxPool2D(3, stride=2), (2, 2, 7, 7)),
    (lambda rng: AvgPool2D(2), (2, 3, 6, 6)),
    (lambda rng: AvgPool2D(3, stride=1), (2, 2, 6, 5)),
])
def test_layer_gradients(make, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU inputs off its kink
    assert_gradients(make(rng), x, rng)


def test_sigmoid_has_no_overflow_warning():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = Sigmoid().forward(np.array([[-1e308, -800.0, 0.0, 800.0, 1e308]]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_softmax_is_stable_for_huge_logits():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = Softmax().forward(np.array([[1e300, 0.0, -1e300], [1000.0, 1000.0, 1000.0]]))
    np.testing.assert_allclose(out, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]])


def test_max_pool_ties_go_to_the_first_maximum():
    pool = MaxPool2D(2)
    x = np.ones((1, 1, 2, 2))
    pool.forward(x)
    dx = pool.backward(np.array([[[[5.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[5.0, 0.0], [0.0, 0.0]])


def test_float32_end_to_end():
    rng = np.random.default_rng(0)
    layers = [Conv2D(1, 2, 3, rng=rng, dtype=np.float32), MaxPool2D(2), Flatten(),
              Dense(8, 3, rng=rng, dtype=np.float32), Sigmoid()]
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    h = x
    for layer in layers:
        h = layer.forward(h)
        assert h.dtype == np.float32, type(layer).__name__
    d = np.ones_like(h)
    for layer in reversed(layers):
        d = layer.backward(d)
        assert d.dtype == np.float32, type(layer).__name__
        for g in layer.grads.values():
            assert g.dtype == np.float32


MINIMAL_SPECS = {
    "conv2d": ({"out_channels": 2, "kernel_size": 3}, (3, 7, 6), (2, 5, 4)),
    "dense": ({"out_features": 4}, (6,), (4,)),
    "flatten": ({}, (2, 3, 4), (24,)),
    "relu": ({}, (5,), (5,)),
    "sigmoid": ({}, (5,), (5,)),
    "tanh": ({}, (5,), (5,)),
    "softmax": ({}, (5,), (5,)),
    "max_pool2d": ({"kernel_size": 2}, (2, 6, 5), (2, 3, 2)),
    "avg_pool2d": ({"kernel_size": 3, "stride": 1}, (2, 6, 5), (2, 4, 3)),
    "global_avg_pool2d": ({}, (3, 4, 5), (3,)),
    "batch_norm": ({}, (3, 4, 5), (3, 4, 5)),
    "dropout": ({"p": 0.3}, (5,), (5,)),
    "residual": ({"layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3,
                              "padding": 1}, {"type": "relu"}]}, (2, 4, 5), (2, 4, 5)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_contract(name):
    """Every registered layer builds from a minimal spec and keeps the layer contract."""
    assert name in MINIMAL_SPECS, f"add {name} to MINIMAL_SPECS"
    spec, in_shape, out_shape = MINIMAL_SPECS[name]
    rng = np.random.default_rng(0)
    layer = LAYERS[name].from_spec(dict(spec), in_shape, rng, np.float64)
    assert layer.output_shape(in_shape) == out_shape
    x = rng.standard_normal((3, *in_shape))
    out = layer.forward(x)
    assert out.shape == (3, *out_shape)
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape
    assert set(layer.grads) == set(layer.params)
    for key in layer.params:
        assert layer.grads[key].shape == layer.params[key].shape


def test_first_layer_skips_input_gradient():
    layer = Conv2D(1, 2, 2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    layer.forward(x)
    assert layer.backward(np.ones((2, 2, 3, 3))).shape == x.shape
    layer.needs_input_grad = False
    layer.forward(x)
    assert layer.backward(np.ones((2, 2, 3, 3))) is None
    assert np.any(layer.grads["W"] != 0)


def test_seed_initialisation_scales():
    rng = np.random.default_rng(0)
    conv = Conv2D(8, 64, 5, rng=rng)
    dense = Dense(500, 400, rng=rng)
    assert abs(conv.params["W"].std() - 1.0) < 0.02
    assert abs(dense.params["W"].std() - 0.1) < 0.002
    he = Dense(500, 400, init="he", rng=rng)
    assert abs(he.params["W"].std() - np.sqrt(2 / 500)) < 0.002
    assert np.all(he.params["b"] == 0)
    xavier = Dense(500, 400, init="xavier", rng=rng)
    assert abs(xavier.params["W"].std() - np.sqrt(2 / 900)) < 0.002
    narrow = Dense(500, 400, init="normal", std=0.01, rng=rng)
    assert abs(narrow.params["W"].std() - 0.01) < 0.0002


def test_dirac_init_starts_as_the_identity_on_the_first_channels():
    rng = np.random.default_rng(0)
    conv = Conv2D(4, 6, 3, padding="same", init="dirac", rng=rng)
    x = rng.standard_normal((2, 4, 5, 7))
    out = conv.forward(x)
    np.testing.assert_array_equal(out[:, :4], x)  # exact copies: one weight 1, the rest 0
    assert abs(conv.params["W"][4:].std() - np.sqrt(2 / 36)) < 0.05  # the rest He-initialised
    assert np.all(conv.params["b"] == 0)
    narrow = Conv2D(6, 2, 3, padding="same", init="dirac", rng=rng)  # more inputs than outputs
    x = rng.standard_normal((1, 6, 4, 4))
    np.testing.assert_array_equal(narrow.forward(x), x[:, :2])


@pytest.mark.parametrize("channels,k,padding", [(3, 2, 0), (1, 3, 1), (2, 1, 0)])
def test_whiten_init_gives_patches_the_identity_second_moment(channels, k, padding):
    """On the images it was computed from, the first half of the output channels of a whitened
    conv has the identity as its second-moment matrix (up to the eps damping); the second half is
    its negative; the biases are 0; the same images give the same filters."""
    rng = np.random.default_rng(1)
    scale = np.array([1.0, 0.5, 0.2])[:channels, None, None]
    x = rng.random((60, channels, 9, 9)) * scale  # unequal channel scales, not centred
    d = channels * k * k
    conv = Conv2D(channels, 2 * d, k, padding=padding, init="whiten", rng=rng)
    conv.whiten(x, eps=1e-9, chunk=7)  # several chunks
    out = conv.forward(x)
    half = out[:, :d].transpose(0, 2, 3, 1).reshape(-1, d)
    np.testing.assert_allclose(half.T @ half / len(half), np.eye(d), atol=1e-6)
    np.testing.assert_array_equal(out[:, d:], -out[:, :d])
    assert np.all(conv.params["b"] == 0)
    again = Conv2D(channels, 2 * d, k, padding=padding, init="whiten", rng=np.random.default_rng(9))
    again.whiten(x, eps=1e-9)
    np.testing.assert_allclose(again.params["W"], conv.params["W"], rtol=1e-9, atol=1e-9)


def test_whiten_init_refuses_blank_images_in_one_line():
    conv = Conv2D(1, 8, 2, init="whiten")
    with pytest.raises(ConfigError, match=r"^init 'whiten': the 4 training image\(s\) .* all 0\)$"):
        conv.whiten(np.zeros((4, 1, 5, 5)))


def test_whiten_init_needs_twice_the_patch_size_in_channels():
    with pytest.raises(ConfigError, match=r"out_channels = 2 \* in_channels \* kernel_size\*\*2 = 24.*got 16"):
        Conv2D(3, 16, 2, init="whiten")


def test_same_generator_seed_gives_same_weights():
    a = Conv2D(2, 3, 3, rng=np.random.default_rng(7))
    b = Conv2D(2, 3, 3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
