"""Every fast layer path agrees with PyTorch in float64 (forward, input gradient and parameter
gradients to 1e-9 relative): each convolution layout ("flat", "rows", "windows"), in one piece
and in two batch halves (``cnncli.workers``), on odd sizes, strides, padding, 1x1 kernels and a
batch of 1; max pooling (tiled and overlapping windows), average pooling, global average
pooling and batch norm (train and eval mode, whole and in channel halves); dense layers whole
and in halves. PyTorch is the independent oracle here; ``impl: reference`` (the seed's SciPy
loops) is the other one (tests/test_speed_exactness.py)."""

import numpy as np
import pytest

from cnncli import workers
from cnncli.layers import Conv2D, conv, dense
from cnncli.layers.dense import Dense
from cnncli.layers.norm import BatchNorm
from cnncli.layers.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D

torch = pytest.importorskip("torch", reason="PyTorch is the oracle here (pip install '.[test]')")
F = torch.nn.functional

RTOL = 1e-9


def close(got, want, what):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    scale = max(np.abs(want).max(), 1e-300)
    err = np.abs(got - want).max() / scale
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert err < RTOL, f"{what}: max error {err:.2e} of the largest value"


def torch_grads(fn, x, dout, *params):
    """Forward ``fn(x, *params)`` in PyTorch and back-propagate ``dout``: (out, dx, dparams)."""
    xt = torch.tensor(x, requires_grad=True)
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    out = fn(xt, *pt)
    out.backward(torch.tensor(dout))
    return out, xt.grad, [p.grad for p in pt]


@pytest.fixture(params=["whole", "halves"])
def halves(request, monkeypatch):
    """Run each layer in one piece, or force the two-halves partition whatever the size (the
    halves then run side by side on the helper thread)."""
    if request.param == "halves":
        monkeypatch.setattr(conv, "SPLIT_FLOPS", 0)
        monkeypatch.setattr(dense, "SPLIT_BYTES", 0)
        monkeypatch.setattr(workers, "SPLIT_VALUES", 0)
    return request.param


@pytest.mark.parametrize("layout", ["flat", "rows"])
@pytest.mark.parametrize("n,c_in,c_out,h,w,k,stride,padding", [
    (4, 3, 8, 9, 9, 3, 1, 1),      # a CIFAR-style 3x3 "same" convolution, small
    (3, 5, 4, 11, 7, 3, 1, 0),     # odd, non-square input, no padding
    (1, 2, 3, 8, 8, 3, 1, 1),      # a batch of 1 (nothing to split)
    (5, 6, 7, 6, 5, 1, 1, 0),      # 1x1 kernel
    (3, 4, 5, 10, 9, 5, 1, 2),     # 5x5 with padding 2
    (4, 3, 6, 9, 11, 3, 2, 1),     # stride 2: the "windows" layout
    (2, 4, 3, 12, 12, 1, 2, 0),    # 1x1 kernel, stride 2
    (3, 2, 4, 13, 10, 4, 3, 2),    # even kernel, stride 3
])
def test_fast_conv_matches_pytorch(monkeypatch, halves, layout, n, c_in, c_out, h, w, k, stride,
                                   padding):
    monkeypatch.setattr(conv, "ROWS_MIN_BYTES", 0 if layout == "rows" else 2**62)
    rng = np.random.default_rng([n, c_in, c_out, h, w, k, stride])
    layer = Conv2D(c_in, c_out, k, stride, padding, impl="fast", rng=rng)
    layer.needs_input_grad = True
    x = rng.standard_normal((n, c_in, h, w))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    want, want_dx, (want_dw, want_db) = torch_grads(
        lambda xt, wt, bt: F.conv2d(xt, wt, bt, stride=stride, padding=padding),
        x, dout, layer.params["W"], layer.params["b"])
    close(out, want, "out")
    close(dx, want_dx, "dx")
    close(layer.grads["W"], want_dw, "dW")
    close(layer.grads["b"], want_db, "db")
    if halves == "halves" and n > 1:
        assert len(layer._parts(x.shape)) == 2  # the partition under test was used


@pytest.mark.parametrize("pool,k,stride,shape", [
    ("max", 2, 2, (4, 3, 8, 8)),     # tiled: non-overlapping windows by reshape
    ("max", 2, 2, (3, 2, 9, 7)),     # tiled, odd sizes: the last row and column are dropped
    ("max", 3, 2, (2, 3, 9, 9)),     # overlapping windows
    ("max", 3, 1, (2, 2, 6, 7)),
    ("avg", 2, 2, (3, 2, 8, 8)),
    ("avg", 3, 1, (2, 3, 7, 6)),
    ("avg", 3, 2, (2, 2, 9, 8)),
])
def test_pooling_matches_pytorch(halves, pool, k, stride, shape):
    rng = np.random.default_rng(list(shape) + [k, stride])
    layer = {"max": MaxPool2D, "avg": AvgPool2D}[pool](k, stride)
    x = rng.standard_normal(shape)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    torch_pool = {"max": F.max_pool2d, "avg": F.avg_pool2d}[pool]
    want, want_dx, _ = torch_grads(lambda xt: torch_pool(xt, k, stride), x, dout)
    close(out, want, "out")
    close(layer.backward(dout), want_dx, "dx")


def test_global_avg_pool_matches_pytorch():
    rng = np.random.default_rng(3)
    layer = GlobalAvgPool2D()
    x = rng.standard_normal((3, 5, 7, 6))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    want, want_dx, _ = torch_grads(lambda xt: F.adaptive_avg_pool2d(xt, 1).flatten(1), x, dout)
    close(out, want, "out")
    close(layer.backward(dout), want_dx, "dx")


@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (5, 3), (1, 6, 3, 3)])
def test_batch_norm_train_mode_matches_pytorch(halves, shape):
    rng = np.random.default_rng(list(shape))
    layer = BatchNorm(shape[1], momentum=0.1, eps=1e-5)
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, shape[1])
    layer.params["beta"][:] = rng.standard_normal(shape[1])
    x = rng.standard_normal(shape) * 3 + 1
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    mean, var = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    want, want_dx, (want_dg, want_db) = torch_grads(
        lambda xt, g, b: F.batch_norm(xt, mean, var, g, b, training=True, momentum=0.1, eps=1e-5),
        x, dout, layer.params["gamma"], layer.params["beta"])
    close(out, want, "out")
    close(dx, want_dx, "dx")
    close(layer.grads["gamma"], want_dg, "dgamma")
    close(layer.grads["beta"], want_db, "dbeta")
    close(layer.buffers["running_mean"], mean, "running mean")
    close(layer.buffers["running_var"], var, "running var (unbiased, as PyTorch)")


def test_batch_norm_eval_mode_matches_pytorch(halves):
    rng = np.random.default_rng(8)
    layer = BatchNorm(4)
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, 4)
    layer.params["beta"][:] = rng.standard_normal(4)
    layer.buffers["running_mean"][:] = rng.standard_normal(4)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2, 4)
    layer.training = False
    x = rng.standard_normal((3, 4, 6, 5))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    mean = torch.tensor(layer.buffers["running_mean"])
    var = torch.tensor(layer.buffers["running_var"])
    want, want_dx, (want_dg, want_db) = torch_grads(
        lambda xt, g, b: F.batch_norm(xt, mean, var, g, b, training=False, eps=1e-5),
        x, dout, layer.params["gamma"], layer.params["beta"])
    close(out, want, "out")
    close(layer.backward(dout), want_dx, "dx")
    close(layer.grads["gamma"], want_dg, "dgamma")
    close(layer.grads["beta"], want_db, "dbeta")


@pytest.mark.parametrize("n,fin,fout", [(16, 40, 24), (1, 7, 5), (5, 33, 1)])
def test_dense_matches_pytorch(halves, n, fin, fout):
    rng = np.random.default_rng([n, fin, fout])
    layer = Dense(fin, fout, rng=rng)
    layer.needs_input_grad = True
    x = rng.standard_normal((n, fin))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    want, want_dx, (want_dw, want_db) = torch_grads(
        lambda xt, wt, bt: F.linear(xt, wt.T, bt), x, dout, layer.params["W"], layer.params["b"])
    close(out, want, "out")
    close(dx, want_dx, "dx")
    close(layer.grads["W"], want_dw, "dW")
    close(layer.grads["b"], want_db, "db")
    assert layer.halves() == (halves == "halves")
