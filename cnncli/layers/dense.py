"""Fully connected layer and Flatten."""

from __future__ import annotations

import numpy as np

from cnncli.errors import ConfigError
from cnncli.layers.base import Layer, check_init, check_int, check_keys, init_bias, init_weights, register


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

    def forward(self, x):
        """x: (N, in_features) -> (N, out_features)"""
        self._x = x
        out = x @ self.params["W"]
        out += self.params["b"]
        return out

    def backward(self, dout):
        """dout: (N, out_features) -> dx: (N, in_features), or None for the first layer.

        grads["W"] = x.T @ dout (in_features, out_features), grads["b"] = sum of dout over N.
        """
        np.matmul(self._x.T, dout, out=self.grads["W"])
        np.sum(dout, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        # W @ dout.T, then one small transposing copy: as exact as dout @ W.T, and OpenBLAS
        # runs this orientation faster for a few rows in float32.
        return np.ascontiguousarray(np.matmul(self.params["W"], dout.T).T)
