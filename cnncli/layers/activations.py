"""Element-wise activations and softmax. None has parameters."""

from __future__ import annotations

from functools import partial

import numpy as np

from cnncli import workers
from cnncli.layers.base import Layer, register


@register("relu")
class ReLU(Layer):
    """``max(x, 0)``; the gradient at exactly 0 is taken as 0.

    Shape: out has the shape of x.
    """

    def forward(self, x):
        """Large batches in two halves side by side (``cnncli.workers``)."""
        out = self._out = np.empty_like(x)
        workers.run([partial(np.maximum, x[a:b], 0, out=out[a:b])
                     for a, b in workers.parts(len(x), x.size)])
        return out

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        out, dx = self._out, np.empty_like(dout)
        workers.run([partial(_pass_positive, dout[a:b], out[a:b], dx[a:b])  # out > 0 where x > 0
                     for a, b in workers.parts(len(dout), dout.size)])
        return dx


def _pass_positive(dout, out, dx):
    """dx = dout where out > 0, else 0"""
    np.multiply(dout, out > 0, out=dx)


@register("sigmoid")
class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, computed without overflow for any x.

    With ``e = exp(-|x|)`` (in (0, 1], so it never overflows): ``1 / (1 + e)`` for x >= 0 and
    ``e / (1 + e)`` for x < 0, which keeps full relative precision for very negative x.

    Shape: out has the shape of x.
    """

    def forward(self, x):
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)  # exp(-|x|)
        r = np.add(e, 1)
        np.reciprocal(r, out=r)  # 1 / (1 + e)
        e *= r  # e / (1 + e)
        self._out = np.where(x < 0, e, r)
        return self._out

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        out = self._out
        return dout * out * (1 - out)


@register("tanh")
class Tanh(Layer):
    """Hyperbolic tangent. Shape: out has the shape of x."""

    def forward(self, x):
        self._out = np.tanh(x)
        return self._out

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        return dout * (1 - self._out * self._out)


@register("softmax")
class Softmax(Layer):
    """Softmax over the last axis, shifted by the row maximum so that no logit overflows.

    Shape:
        x:   (N, K)
        out: (N, K), rows summing to 1
    """

    def forward(self, x):
        z = x - x.max(axis=-1, keepdims=True)
        e = np.exp(z)
        self._out = e / e.sum(axis=-1, keepdims=True)
        return self._out

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        s = self._out
        return s * (dout - (dout * s).sum(axis=-1, keepdims=True))
