"""Fully connected layer and Flatten."""

from __future__ import annotations

from functools import partial

import numpy as np

from cnncli import workers
from cnncli.errors import ConfigError
from cnncli.layers.base import Layer, check_init, check_int, check_keys, init_bias, init_weights, register


# Weight matrices of at least this many bytes split their products into two halves that run
# side by side (cnncli.workers): reading the weights dominates such products, and each half
# reads half of them. Measured with benchmarks/bench_train.py on a 2-core AVX-512 VM: the seed
# network's 2304x256 layer gained 4% a step in float64 (4.7 MB) and lost 11% in float32 (2.4 MB).
SPLIT_BYTES = 4 * 2**20


@register("flatten")
class Flatten(Layer):
    """Keep the batch axis, flatten the rest (C, H, W order, as PyTorch).

    Shape:
        x:   (N, *S)
        out: (N, prod(S))
    """

    def __init__(self):
        super().__init__()
        self._shape = None

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        return dout.reshape(self._shape)


@register("dense")
class Dense(Layer):
    """Affine map ``out = x @ W + b``.

    Shape:
        x:   (N, in_features)
        out: (N, out_features)
        W:   (in_features, out_features)
        b:   (out_features,)
    """

    def __init__(self, in_features, out_features, init="normal", std=None, rng=None,
                 dtype=np.float64):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.init, self.std = check_init(init, std)
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.in_features, self.out_features)
        self.params["W"] = init_weights(rng, shape, self.in_features, self.out_features,
                                        self.init, self.std, 0.1, dtype)
        self.params["b"] = init_bias(rng, (self.out_features,), self.init, self.std, 0.1, dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x = None

    @classmethod
    def from_spec(cls, spec, in_shape, rng, dtype):
        check_keys(cls, spec)
        spec = dict(spec)
        if len(in_shape) != 1:
            n = int(np.prod(in_shape))
            raise ConfigError(f"needs a flat input, but the previous layer outputs "
                              f"{'x'.join(map(str, in_shape))} = {n} values (add a flatten layer)")
        n = in_shape[0]
        if "in_features" in spec and spec["in_features"] != n:
            raise ConfigError(f"in_features is {spec['in_features']!r}, but the previous layer "
                              f"outputs {n} values")
        spec["in_features"] = n
        return cls(rng=rng, dtype=dtype, **spec)

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ConfigError(f"expects {self.in_features} input features, got {in_shape}")
        return (self.out_features,)

    def halves(self) -> bool:
        """Whether the products run as two halves (``cnncli.workers``): by W's size alone."""
        return self.params["W"].nbytes >= SPLIT_BYTES

    def forward(self, x):
        """x: (N, in_features) -> (N, out_features)"""
        self._x = x
        w = self.params["W"]
        if self.halves():  # out[:, j0:j1] = x @ W[:, j0:j1]
            out = np.empty((x.shape[0], w.shape[1]), dtype=np.result_type(x.dtype, w.dtype))
            workers.run([partial(np.matmul, x, w[:, a:b], out=out[:, a:b])
                         for a, b in workers.split(w.shape[1])])
        else:
            out = x @ w
        out += self.params["b"]
        return out

    def backward(self, dout):
        """dout: (N, out_features) -> dx: (N, in_features), or None for the first layer.

        grads["W"] = x.T @ dout (in_features, out_features), grads["b"] = sum of dout over N.
        The input gradient is dout @ W.T in float64; in float32 it is computed as
        (W @ dout.T).T, then one small transposing copy (as exact), the orientation OpenBLAS
        runs faster for a few float32 rows (the seed network's 2304x256 layer at batch 16,
        SkylakeX and Haswell kernels: 1.1-1.6x; in float64 the other way round, 1.1-1.3x).
        """
        x, w, gw = self._x, self.params["W"], self.grads["W"]
        dx, transposed = None, False
        if self.needs_input_grad:
            dtype = np.result_type(w.dtype, dout.dtype)
            transposed = dtype == np.float32
            shape = (w.shape[0], dout.shape[0]) if transposed else (dout.shape[0], w.shape[0])
            dx = np.empty(shape, dtype=dtype)
        rows = workers.split(w.shape[0]) if self.halves() else [(0, w.shape[0])]
        workers.run([partial(_backward_rows, x, dout, w, gw, dx, transposed, a, b)
                     for a, b in rows])
        np.sum(dout, axis=0, out=self.grads["b"])
        return np.ascontiguousarray(dx.T) if transposed else dx


def _backward_rows(x, dout, w, gw, dx, transposed, a, b):
    """Rows a:b of W's two gradient products: gW[a:b] = x[:, a:b].T @ dout and, when dx is
    given, the input gradient's columns a:b = dout @ W[a:b].T, into dx (N, in_features), or
    with ``transposed`` into rows a:b of dx (in_features, N) as W[a:b] @ dout.T."""
    np.matmul(x[:, a:b].T, dout, out=gw[a:b])
    if dx is None:
        return
    if transposed:
        np.matmul(w[a:b], dout.T, out=dx[a:b])
    else:
        np.matmul(dout, w[a:b].T, out=dx[:, a:b])
