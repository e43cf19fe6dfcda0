"""2-D convolution (valid cross-correlation, as in the seed post), with stride and zero padding."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnncli.errors import ConfigError
from cnncli.layers.base import (
    Layer,
    check_init,
    check_int,
    check_keys,
    init_bias,
    init_weights,
    register,
)

IMPLS = ("fast", "reference")


@register("conv2d")
class Conv2D(Layer):
    """2-D cross-correlation (no kernel flip) over a batch, NCHW.

    ``out[n, o] = b[o] + sum_c correlate(x_pad[n, c], W[o, c])`` sampled every ``stride`` pixels.

    Shape:
        x:   (N, C_in, H, W)
        out: (N, C_out, P, Q) with P = (H + 2*padding - K) // stride + 1, likewise Q
        W:   (C_out, C_in, K, K)
        b:   (C_out,)

    ``impl="reference"`` runs the plain per-sample, per-channel SciPy loops of the seed's
    derivation; ``impl="fast"`` the same arithmetic as one matrix product per operation.
    ``padding="same"`` keeps H and W (odd K, stride 1).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 impl="fast", init="normal", std=None, rng=None, dtype=np.float64):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.stride = check_int("stride", stride, 1)
        if padding == "same":
            if self.kernel_size % 2 == 0 or self.stride != 1:
                raise ConfigError(
                    f"padding 'same' needs an odd kernel_size and stride 1, "
                    f"got kernel_size {self.kernel_size} and stride {self.stride}")
            self.pad = (self.kernel_size - 1) // 2
        else:
            if isinstance(padding, str):
                raise ConfigError(f"padding must be an integer >= 0 or 'same', got {padding!r}")
            self.pad = check_int("padding", padding, 0)
        self.padding = padding
        if impl not in IMPLS:
            raise ConfigError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.impl = impl
        self.init, self.std = check_init(init, std)
        rng = np.random.default_rng() if rng is None else rng
        k = self.kernel_size
        shape = (self.out_channels, self.in_channels, k, k)
        fan_in, fan_out = self.in_channels * k * k, self.out_channels * k * k
        self.params["W"] = init_weights(rng, shape, fan_in, fan_out, self.init, self.std, 1.0, dtype)
        self.params["b"] = init_bias(rng, (self.out_channels,), self.init, self.std, 1.0, dtype)
        self.grads = {k_: np.zeros_like(v) for k_, v in self.params.items()}
        self._cache = None

    @classmethod
    def from_spec(cls, spec, in_shape, rng, dtype):
        check_keys(cls, spec)
        if len(in_shape) != 3:
            raise ConfigError(f"needs an input of shape (C, H, W), but the previous layer "
                              f"outputs {_fmt(in_shape)}")
        spec = dict(spec)
        c = in_shape[0]
        if "in_channels" in spec and spec["in_channels"] != c:
            raise ConfigError(f"in_channels is {spec['in_channels']!r}, but its input has {c} channels")
        spec["in_channels"] = c
        layer = cls(rng=rng, dtype=dtype, **spec)
        layer.output_shape(in_shape)
        return layer

    def config(self):
        cfg = {"in_channels": self.in_channels, "out_channels": self.out_channels,
               "kernel_size": self.kernel_size}
        if self.stride != 1:
            cfg["stride"] = self.stride
        if self.padding != 0:
            cfg["padding"] = self.padding
        return cfg

    def output_shape(self, in_shape):
        c, h, w = in_shape
        k, s, p = self.kernel_size, self.stride, self.pad
        if c != self.in_channels:
            raise ConfigError(f"expects {self.in_channels} input channels, got {c}")
        if h + 2 * p < k or w + 2 * p < k:
            raise ConfigError(f"kernel_size {k} is larger than its (padded) input "
                              f"{h + 2 * p}x{w + 2 * p}")
        return (self.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)

    # ------------------------------------------------------------------ forward
    def forward(self, x):
        """x: (N, C_in, H, W) -> (N, C_out, P, Q)"""
        if self.impl == "reference":
            return self._forward_reference(x)
        k, s = self.kernel_size, self.stride
        xp = self._pad(x)
        win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]  # (N, C, P, Q, K, K)
        n, c, p, q = win.shape[:4]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * p * q, c * k * k)  # (N*P*Q, C*K*K)
        w_mat = self.params["W"].reshape(self.out_channels, -1)  # (C_out, C*K*K)
        out = cols @ w_mat.T  # (N*P*Q, C_out)
        out += self.params["b"]
        self._cache = (x.shape, cols)
        return out.reshape(n, p, q, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dout):
        """dout: (N, C_out, P, Q) -> dx: (N, C_in, H, W), or None for the first layer"""
        if self.impl == "reference":
            return self._backward_reference(dout)
        x_shape, cols = self._cache
        n, o, p, q = dout.shape
        dout_mat = dout.transpose(0, 2, 3, 1).reshape(n * p * q, o)  # (N*P*Q, C_out)
        gw = self.grads["W"].reshape(o, -1)  # a view: (C_out, C*K*K)
        np.matmul(dout_mat.T, cols, out=gw)
        np.sum(dout_mat, axis=0, out=self.grads["b"])
        if not self.needs_input_grad:
            return None
        return self._input_grad(dout, x_shape)

    def _pad(self, x):
        p = self.pad
        if p == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))

    def _input_grad(self, dout, x_shape):
        """Full convolution of the (stride-dilated) dout with the kernels, summed over C_out."""
        n, c, h, w = x_shape
        k, s, pad = self.kernel_size, self.stride, self.pad
        _, o, p, q = dout.shape
        hp, wp = h + 2 * pad, w + 2 * pad
        # dout, dilated by the stride and padded by K-1: one zero frame, dout written into it.
        big = np.zeros((n, o, hp + k - 1, wp + k - 1), dtype=dout.dtype)
        big[:, :, k - 1:k - 1 + s * (p - 1) + 1:s, k - 1:k - 1 + s * (q - 1) + 1:s] = dout
        win = sliding_window_view(big, (k, k), axis=(2, 3))  # (N, C_out, Hp, Wp, K, K)
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * hp * wp, o * k * k)  # (N*Hp*Wp, C_out*K*K)
        flipped = self.params["W"][:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(o * k * k, c)
        dxp = (cols @ flipped).reshape(n, hp, wp, c).transpose(0, 3, 1, 2)  # (N, C, Hp, Wp)
        if pad:
            dxp = dxp[:, :, pad:pad + h, pad:pad + w]
        return dxp

    # ---------------------------------------------------------------- reference
    def _forward_reference(self, x):
        from scipy.signal import correlate2d

        s = self.stride
        xp = self._pad(x)
        n = x.shape[0]
        _, p, q = self.output_shape(x.shape[1:])
        W, b = self.params["W"], self.params["b"]
        out = np.zeros((n, self.out_channels, p, q), dtype=x.dtype)
        for i in range(n):
            for o in range(self.out_channels):
                out[i, o] = b[o]
                for c in range(self.in_channels):
                    out[i, o] += correlate2d(xp[i, c], W[o, c], mode="valid")[::s, ::s]
        self._cache = (x.shape, xp)
        return out

    def _backward_reference(self, dout):
        from scipy.signal import convolve2d, correlate2d

        x_shape, xp = self._cache
        n, c_in, h, w = x_shape
        k, s, pad = self.kernel_size, self.stride, self.pad
        W = self.params["W"]
        gw, gb = self.grads["W"], self.grads["b"]
        gw[...] = 0
        gb[...] = dout.sum(axis=(0, 2, 3))
        dxp = np.zeros(xp.shape, dtype=dout.dtype) if self.needs_input_grad else None
        for i in range(n):
            for o in range(self.out_channels):
                d = _dilate(dout[i, o], s)
                for c in range(c_in):
                    # dL/dW[o, c] = valid cross-correlation of the input with dout (in this order).
                    gw[o, c] += correlate2d(xp[i, c], d, mode="valid")[:k, :k]
                    if dxp is not None:
                        # dL/dx[c] = full convolution of dout with W[o, c], summed over o.
                        full = convolve2d(d, W[o, c], mode="full")
                        dxp[i, c, :full.shape[0], :full.shape[1]] += full
        if dxp is None:
            return None
        return dxp[:, :, pad:pad + h, pad:pad + w]


def _dilate(d, s):
    """Insert s-1 zeros between the entries of a 2-D array (s=1: unchanged)."""
    if s == 1:
        return d
    out = np.zeros(((d.shape[0] - 1) * s + 1, (d.shape[1] - 1) * s + 1), dtype=d.dtype)
    out[::s, ::s] = d
    return out


def _fmt(shape):
    return "x".join(str(d) for d in shape) if shape else "a scalar"
