"""Max and average pooling over square windows."""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnncli import workers
from cnncli.errors import ConfigError
from cnncli.layers.base import Layer, check_int, register


class _Pool2D(Layer):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else check_int("stride", stride, 1)

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride}

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"needs an input of shape (C, H, W), got {'x'.join(map(str, in_shape))}")
        c, h, w = in_shape
        k, s = self.kernel_size, self.stride
        if h < k or w < k:
            raise ConfigError(f"kernel_size {k} is larger than its input {h}x{w}")
        return (c, (h - k) // s + 1, (w - k) // s + 1)

    def _windows(self, x):
        k, s = self.kernel_size, self.stride
        return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # (N, C, P, Q, K, K)


@register("max_pool2d")
class MaxPool2D(_Pool2D):
    """Maximum of each K x K window, every ``stride`` pixels (default: stride = K).

    The gradient goes to the arg-max of each window; a tie goes to the first maximum in
    row-major order, so results are deterministic. Overlapping windows add up.

    Shape:
        x:   (N, C, H, W)
        out: (N, C, (H - K) // stride + 1, (W - K) // stride + 1)
    """

    def forward(self, x):
        if self.stride == self.kernel_size:
            return self._forward_tiled(x)
        k = self.kernel_size
        win = self._windows(x)
        n, c, p, q = win.shape[:4]
        flat = win.reshape(n, c, p, q, k * k)  # (N, C, P, Q, K*K), a copy
        arg = flat.argmax(axis=-1)  # (N, C, P, Q)
        self._cache = ("windows", x.shape, arg)
        return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        if self._cache[0] == "tiled":
            return self._backward_tiled(dout)
        _, (n, c, h, w), arg = self._cache
        k, s = self.kernel_size, self.stride
        _, _, p, q = dout.shape
        rows = np.arange(p)[:, None] * s + arg // k  # (N, C, P, Q) by broadcasting
        cols = np.arange(q)[None, :] * s + arg % k
        plane = (np.arange(n)[:, None, None, None] * c + np.arange(c)[None, :, None, None]) * (h * w)
        flat_index = plane + rows * w + cols
        dx = np.bincount(flat_index.ravel(), weights=dout.ravel(), minlength=n * c * h * w)
        return dx.reshape(n, c, h, w).astype(dout.dtype, copy=False)

    # Non-overlapping windows (stride = K): the window entry at offset (i, j) of every
    # window is the strided slice x[:, :, i::K, j::K], so no window is ever copied.
    def _offsets(self, x):
        """The K*K strided views (N, C, P, Q), offsets in row-major order."""
        k = self.kernel_size
        _, _, h, w = x.shape
        p, q = (h - k) // k + 1, (w - k) // k + 1
        return [x[:, :, i:i + k * p:k, j:j + k * q:k] for i in range(k) for j in range(k)]

    def _forward_tiled(self, x):
        """Large batches in two halves side by side (``cnncli.workers``)."""
        k = self.kernel_size
        n, c, h, w = x.shape
        out = np.empty((n, c, (h - k) // k + 1, (w - k) // k + 1), dtype=x.dtype)
        workers.run([partial(self._max_tiled, x[a:b], out[a:b])
                     for a, b in workers.parts(n, x.size)])
        self._cache = ("tiled", x, out)
        return out

    def _max_tiled(self, x, out):
        views = self._offsets(x)
        np.copyto(out, views[0])
        for v in views[1:]:
            np.maximum(out, v, out=out)

    def _backward_tiled(self, dout):
        _, x, out = self._cache
        dx = np.empty(x.shape, dtype=dout.dtype)
        workers.run([partial(self._route_tiled, x[a:b], out[a:b], dout[a:b], dx[a:b])
                     for a, b in workers.parts(len(x), x.size)])
        return dx

    def _route_tiled(self, x, out, dout, dx):
        """Each window's gradient goes to the first entry (row-major) equal to its maximum."""
        k = self.kernel_size
        _, _, h, w = x.shape
        _, _, p, q = dout.shape
        if p * k != h or q * k != w:  # rows or columns no window covers
            dx[...] = 0
        views, dviews = self._offsets(x), self._offsets(dx)
        left = dout.copy()  # the gradient of windows whose maximum is not yet found
        for m, (v, dv) in enumerate(zip(views, dviews)):
            np.multiply(left, v == out, out=dv)
            if m + 1 < len(views):
                left -= dv  # exactly 0 where this entry took the gradient


@register("avg_pool2d")
class AvgPool2D(_Pool2D):
    """Mean of each K x K window, every ``stride`` pixels (default: stride = K).

    Shape:
        x:   (N, C, H, W)
        out: (N, C, (H - K) // stride + 1, (W - K) // stride + 1)
    """

    def forward(self, x):
        self._shape = x.shape
        return self._windows(x).mean(axis=(-2, -1))

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        k, s = self.kernel_size, self.stride
        _, _, p, q = dout.shape
        dx = np.zeros(self._shape, dtype=dout.dtype)
        share = dout / (k * k)
        for i in range(k):  # a loop over window offsets, not over samples or channels
            for j in range(k):
                dx[:, :, i:i + s * (p - 1) + 1:s, j:j + s * (q - 1) + 1:s] += share
        return dx


@register("global_avg_pool2d")
class GlobalAvgPool2D(Layer):
    """Mean of each channel over all its positions.

    Shape:
        x:   (N, C, H, W)
        out: (N, C)
    """

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"needs an input of shape (C, H, W), got {'x'.join(map(str, in_shape))}")
        return (in_shape[0],)

    def forward(self, x):
        self._shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dout):
        """dout: (N, C) -> dx: (N, C, H, W), each position getting dout / (H * W)"""
        if not self.needs_input_grad:
            return None
        n, c, h, w = self._shape
        share = dout / (h * w)
        return np.broadcast_to(share[:, :, None, None], self._shape).copy()
