"""2-D convolution (valid cross-correlation, as in the seed post), with stride and zero padding."""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from cnncli import workers
from cnncli.errors import ConfigError
from cnncli.layers.base import (
    CONV_INITS,
    Layer,
    check_init,
    check_int,
    check_keys,
    init_bias,
    init_weights,
    register,
)

IMPLS = ("fast", "reference")
# Above this size of the flat column matrix, the fast path copies K row shifts instead of
# K*K window entries (measured on an AVX-512 machine with 1 MB L2 and 32 MB L3 caches:
# e.g. "rows" is ~25% faster for LeNet's 28x28 conv at batch 128, "flat" ~20% faster for the
# seed's batch of 16).
ROWS_MIN_BYTES = 64 * 2**20
# From this many multiply-adds (x2) in a forward pass, the batch runs in two halves side by
# side (cnncli.workers).
SPLIT_FLOPS = 8_000_000


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
    derivation; ``impl="fast"`` the same arithmetic as matrix products over copied windows
    (see the fast-path notes below); the two agree to rounding (1e-10 relative is tested).
    ``padding="same"`` keeps H and W (odd K, stride 1).

    ``init="dirac"``: He-initialised, then the first min(C_in, C_out) filters are the
    identity (``W[i, i, K // 2, K // 2] = 1``, every other weight of filter i 0), so with
    ``padding="same"`` output channel i starts as a copy of input channel i (airbench's
    identity initialisation: a block of convolutions starts close to the identity).
    ``init="whiten"`` (the network's first layer only, ``out_channels = 2 * C_in * K * K``):
    the filters are computed from training images by ``whiten`` before training starts.
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
        self.init, self.std = check_init(init, std, CONV_INITS)
        rng = np.random.default_rng() if rng is None else rng
        k = self.kernel_size
        if self.init == "whiten" and self.out_channels != 2 * self.in_channels * k * k:
            raise ConfigError(
                f"init 'whiten' needs out_channels = 2 * in_channels * kernel_size**2 = "
                f"{2 * self.in_channels * k * k} (each whitened patch direction and its "
                f"negative), got {self.out_channels}")
        shape = (self.out_channels, self.in_channels, k, k)
        fan_in, fan_out = self.in_channels * k * k, self.out_channels * k * k
        self.params["W"] = init_weights(rng, shape, fan_in, fan_out, self.init, self.std, 1.0, dtype)
        self.params["b"] = init_bias(rng, (self.out_channels,), self.init, self.std, 1.0, dtype)
        if self.init == "dirac":
            m = min(self.in_channels, self.out_channels)
            self.params["W"][:m] = 0
            self.params["W"][np.arange(m), np.arange(m), k // 2, k // 2] = 1
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

    def whiten(self, images: np.ndarray, eps: float = 5e-4, chunk: int = 500) -> None:
        """Set the filters to a PCA whitening of the K x K patches of ``images`` (airbench's
        whitening initialisation) and the biases to 0.

        images: (N, C_in, H, W), as the network takes them.
        With S the (uncentred) covariance of the patches, (C_in*K*K, C_in*K*K) in float64,
        and S = V diag(lam) V^T, the first C_in*K*K filters are the rows of
        diag(lam + eps * mean(lam))^(-1/2) V^T (largest eigenvalue first), the other half
        their negatives; so on these images the first half of the output channels has
        (nearly) the identity as its second-moment matrix. Deterministic: no random draw, and
        each eigenvector's sign is fixed (its largest entry positive).
        """
        k, c = self.kernel_size, self.in_channels
        d = c * k * k
        cov = np.zeros((d, d))
        count = 0
        for a in range(0, len(images), chunk):
            x = np.asarray(images[a:a + chunk], dtype=np.float64)
            if self.pad:
                x = np.pad(x, ((0, 0), (0, 0), (self.pad,) * 2, (self.pad,) * 2))
            win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::self.stride, ::self.stride]
            patches = win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)  # (N*P*Q, C*K*K)
            cov += patches.T @ patches
            count += len(patches)
        cov /= max(count, 1)
        lam, vec = np.linalg.eigh(cov)  # ascending
        lam, vec = lam[::-1], vec[:, ::-1]
        vec = vec * np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(d)])  # a fixed sign each
        damping = eps * lam.mean()
        if not damping > 0:  # every patch 0 (or not finite): no direction to scale
            raise ConfigError(f"init 'whiten': the {len(images)} training image(s) it is computed "
                              f"from have no variation to whiten (their patches are all 0)")
        filters = (vec / np.sqrt(np.maximum(lam, 0) + damping)).T.reshape(d, c, k, k)
        w = self.params["W"]
        w[:d] = filters
        w[d:] = -filters
        self.params["b"][...] = 0

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

    # ------------------------------------------------------------------ fast path
    # Three layouts of the same arithmetic, chosen by _layout from the layer's shape:
    #   "windows" (stride > 1): every window as a column, cols (C*K*K, N, P*Q).
    #   "flat" (stride 1): each padded image as one flat row of Hp*Wp values, so the window
    #       entry (i, j) of every output is the contiguous run starting at i*Wp + j. Output
    #       rows are then Wp long; their last K-1 entries wrap around and are dropped.
    #       cols (C*K*K, N, P*Wp).
    #   "rows" (stride 1, when the flat column matrix would exceed ROWS_MIN_BYTES): the flat
    #       layout with only the K horizontal shifts copied, X (N, C*K, Hp*Wp); kernel row i
    #       reads X at offset i*Wp, so K products replace one, over a K times smaller copy.
    #       Small column matrices stay in cache and one product over them is faster.
    def forward(self, x):
        """x: (N, C_in, H, W) -> (N, C_out, P, Q)"""
        if self.impl == "reference":
            return self._forward_reference(x)
        _, _, p, q = self._geometry(x.shape)
        out = np.empty((x.shape[0], self.out_channels, p, q),
                       dtype=np.result_type(x.dtype, self.params["W"].dtype))
        parts = self._parts(x.shape)
        caches = [None] * len(parts)

        def half(i, a, b):
            caches[i] = self._forward_fast(x[a:b], self._scratch(i), out[a:b])

        workers.run([partial(half, i, a, b) for i, (a, b) in enumerate(parts)])
        self._cache = (parts, caches)
        return out

    def backward(self, dout):
        """dout: (N, C_out, P, Q) -> dx: (N, C_in, H, W), or None for the first layer"""
        if self.impl == "reference":
            return self._backward_reference(dout)
        parts, caches = self._cache
        gw, gb = self.grads["W"], self.grads["b"]
        if len(parts) == 1:
            return self._backward_fast(dout, caches[0], self._scratch(0), gw, gb)
        x_shape = (dout.shape[0], *caches[0][1][1:])
        dx = np.empty(x_shape, dtype=dout.dtype) if self.needs_input_grad else None
        grads = [(_buffer(self._scratch(i), "gw", gw.shape, gw.dtype),
                  _buffer(self._scratch(i), "gb", gb.shape, gb.dtype)) for i in range(len(parts))]

        def half(i, a, b):
            dx_half = self._backward_fast(dout[a:b], caches[i], self._scratch(i), *grads[i])
            if dx is not None:
                dx[a:b] = dx_half

        workers.run([partial(half, i, a, b) for i, (a, b) in enumerate(parts)])
        np.add(grads[0][0], grads[1][0], out=gw)  # the halves' sums, in one fixed order
        np.add(grads[0][1], grads[1][1], out=gb)
        return dx

    def _parts(self, x_shape) -> list[tuple[int, int]]:
        """The batch in two halves (``cnncli.workers``) when the layer's work is large enough,
        by the shapes alone; else the whole batch."""
        _, _, p, q = self._geometry(x_shape)
        flops = 2 * x_shape[0] * self.out_channels * self.in_channels * self.kernel_size ** 2 * p * q
        return workers.split(x_shape[0]) if flops >= SPLIT_FLOPS else [(0, x_shape[0])]

    def _scratch(self, i: int) -> dict:
        """The scratch arrays of half i (each half keeps its own between calls)."""
        bufs = self.__dict__.setdefault("_bufs", [])
        while len(bufs) <= i:
            bufs.append({})
        return bufs[i]

    def _forward_fast(self, x, bufs, out):
        """Writes the output of x: (n, C_in, H, W) into out: (n, C_out, P, Q); returns what
        ``_backward_fast`` needs."""
        n = x.shape[0]
        o, k = self.out_channels, self.kernel_size
        hp, wp, p, q = self._geometry(x.shape)
        W = self.params["W"]
        layout = self._layout(x.shape, np.result_type(x.dtype, W.dtype))
        if layout == "rows":
            X = self._shifted_rows(x, bufs)  # (N, C*K, Hp*Wp)
            length = p * wp
            w_rows = W.transpose(2, 0, 1, 3).reshape(k, o, -1)  # [i]: (C_out, C*K), a copy
            out_full = _temp("out", (n, o, length), X.dtype)  # (N, C_out, P*Wp)
            part = _temp("part", (n, o, length), X.dtype)
            np.matmul(w_rows[0], X[:, :, :length], out=out_full)
            for i in range(1, k):
                out_full += np.matmul(w_rows[i], X[:, :, i * wp:i * wp + length], out=part)
            cache = (layout, x.shape, X)
        else:
            cols = self._im2col(x, layout, bufs)  # (C*K*K, N, L)
            cache = (layout, x.shape, cols)
            # One product per sample: (C_out, C*K*K) @ (C*K*K, L) -> (N, C_out, L)
            w_mat, cols_n = W.reshape(o, -1), cols.transpose(1, 0, 2)
            if layout == "windows":  # the product is the output: add the bias in place
                np.matmul(w_mat, cols_n, out=out.reshape(n, o, p * q))
                out += self.params["b"][:, None, None]
                return cache
            out_full = np.matmul(w_mat, cols_n, out=_temp("out", (n, o, p * wp), cols.dtype))
        bias = self.params["b"][:, None, None]
        np.add(out_full.reshape(n, o, p, wp)[..., :q], bias, out=out)  # drop the wrap-around
        return cache

    def _backward_fast(self, dout, cache, bufs, gw, gb):
        """dout: (n, C_out, P, Q) of the samples ``cache`` came from. Writes the kernel and
        bias gradients of these samples into gw, gb; returns dx: (n, C_in, H, W) or None."""
        layout, x_shape, cols = cache
        n, o, p, q = dout.shape
        k = self.kernel_size
        wp = self._geometry(x_shape)[1]
        if layout == "windows":
            d = dout.reshape(n, o, p * q)
        else:  # zeros in the wrap-around columns, so that they add nothing
            d = _temp("dout", (n, o, p, wp), dout.dtype)
            d[..., :q] = dout
            d[..., q:] = 0
            d = d.reshape(n, o, p * wp)
        length = d.shape[2]
        if layout == "rows":
            X = cols
            part = _temp("wpart", (n, o, X.shape[1]), X.dtype)  # (N, C_out, C*K)
            for i in range(k):  # kernel row i: sum over samples of d_n @ X_n[:, i*Wp:][:, :L].T
                np.matmul(d, X[:, :, i * wp:i * wp + length].transpose(0, 2, 1), out=part)
                np.sum(part.reshape(n, o, -1, k), axis=0, out=gw[:, :, i, :])  # (C_out, C, K)
        else:
            ckk = cols.shape[0]
            gw = gw.reshape(o, ckk)
            if o * ckk * 50 <= length * (o + ckk):
                # Few kernel weights: one product per sample, d_n (C_out, L) @ cols_n.T
                # (L, C*K*K), summed over the samples. (Measured, float32, 1 core: 2-3x faster
                # than the long product for the seed's and LeNet's first convs, where the ratio
                # is ~1/200; the long product is 13% faster for a 32->32 3x3 layer on 32x32
                # images, at ~1/38.)
                part = _temp("wpart", (n, o, ckk), cols.dtype)
                np.sum(np.matmul(d, cols.transpose(1, 2, 0), out=part), axis=0, out=gw)
            else:
                # Many: their N partial results would cost more than one long product over
                # every sample and position, cols (C*K*K, N*L) @ d rows (N*L, C_out).
                d_rows = _temp("drows", (n, length, o), d.dtype)
                np.copyto(d_rows, d.transpose(0, 2, 1))
                d_rows = d_rows.reshape(n * length, o)
                np.copyto(gw, np.matmul(cols.reshape(ckk, n * length), d_rows).T)
        np.sum(d, axis=(0, 2), out=gb)
        if not self.needs_input_grad:
            return None
        if layout == "windows":
            w_t = self.params["W"].reshape(o, -1).T
            dcols = _temp("dcols", (n, w_t.shape[0], p * q), d.dtype)
            np.matmul(w_t, d, out=dcols)  # (N, C*K*K, P*Q)
            return self._col2im(dcols, x_shape)
        return self._input_grad_flat(d, x_shape)

    def _geometry(self, x_shape):
        """(padded H, padded W, P, Q) for an input of shape (N, C, H, W)."""
        k, s, pad = self.kernel_size, self.stride, self.pad
        hp, wp = x_shape[2] + 2 * pad, x_shape[3] + 2 * pad
        return hp, wp, (hp - k) // s + 1, (wp - k) // s + 1

    def _layout(self, x_shape, dtype):
        if self.stride != 1:
            return "windows"
        n, c = x_shape[:2]
        _, wp, p, _ = self._geometry(x_shape)
        cols_bytes = c * self.kernel_size ** 2 * n * p * wp * np.dtype(dtype).itemsize
        return "rows" if cols_bytes > ROWS_MIN_BYTES else "flat"

    def _flat_input(self, x):
        """x padded and flattened per channel, plus K-1 zeros: (N, C, Hp*Wp + K-1)."""
        n, c, h, w = x.shape
        k, pad = self.kernel_size, self.pad
        hp, wp, _, _ = self._geometry(x.shape)
        dtype = np.result_type(x.dtype, self.params["W"].dtype)
        xf = _temp("xflat", (n, c, hp * wp + k - 1), dtype)
        xf[:, :, hp * wp:] = 0
        image = xf[:, :, :hp * wp].reshape(n, c, hp, wp)
        _zero_border(image, pad)
        image[:, :, pad:pad + h, pad:pad + w] = x
        return xf

    def _shifted_rows(self, x, bufs):
        """X[n, (c, j), t] = x_flat[n, c, t + j]: (N, C*K, Hp*Wp)"""
        xf = self._flat_input(x)
        n, c, total = xf.shape
        k = self.kernel_size
        size = total - (k - 1)
        X = _buffer(bufs, "rows", (n, c, k, size), xf.dtype)
        np.copyto(X, sliding_window_view(xf, size, axis=2))  # (N, C, K, Hp*Wp)
        return X.reshape(n, c * k, size)

    def _im2col(self, x, layout, bufs):
        """The input windows as columns: cols (C*K*K, N, L), L = P*Wp ("flat") or P*Q."""
        n, c, h, w = x.shape
        k, s, pad = self.kernel_size, self.stride, self.pad
        hp, wp, p, q = self._geometry(x.shape)
        if layout == "flat":
            xf = self._flat_input(x)
            length, e = p * wp, xf.itemsize
            win = as_strided(xf, shape=(c, k, k, n, length),
                             strides=(xf.strides[1], wp * e, e, xf.strides[0], e), writeable=False)
            cols = _buffer(bufs, "cols", (c, k, k, n, length), xf.dtype)
            np.copyto(cols, win)  # (C, K, K, N, P*Wp)
            return cols.reshape(c * k * k, n, length)
        dtype = np.result_type(x.dtype, self.params["W"].dtype)
        if pad:
            xp = _temp("xpad", (n, c, hp, wp), dtype)
            _zero_border(xp, pad)
            xp[:, :, pad:pad + h, pad:pad + w] = x
        else:
            xp = x
        xt = xp.transpose(1, 0, 2, 3)  # (C, N, Hp, Wp)
        cols = _buffer(bufs, "cols", (c, k, k, n, p, q), dtype)
        for i in range(k):
            for j in range(k):
                cols[:, i, j] = xt[:, :, i:i + s * (p - 1) + 1:s, j:j + s * (q - 1) + 1:s]
        return cols.reshape(c * k * k, n, p * q)

    def _col2im(self, dcols, x_shape):
        """Add every column entry's gradient back onto the input pixel it was read from.

        dcols: (N, C*K*K, P*Q) -> dx: (N, C, H, W)
        """
        n, c, h, w = x_shape
        k, s, pad = self.kernel_size, self.stride, self.pad
        hp, wp, p, q = self._geometry(x_shape)
        dxp = np.zeros((n, c, hp, wp), dtype=dcols.dtype)
        d6 = dcols.reshape(n, c, k, k, p, q)
        for i in range(k):
            for j in range(k):
                dxp[:, :, i:i + s * (p - 1) + 1:s, j:j + s * (q - 1) + 1:s] += d6[:, :, i, j]
        if pad:
            return dxp[:, :, pad:pad + h, pad:pad + w]
        return dxp

    def _input_grad_flat(self, d, x_shape):
        """dx for the flat layouts, one kernel row i at a time:
        ``dx_flat[n, c, i*Wp + u] += sum over o, j of W[o, c, i, j] * d[n, o, u - j]``.

        The K shifted copies of d (shifted by j along the flat axis) serve every kernel row,
        so K products and K adds replace a K*K-fold column matrix.

        d: (N, C_out, P*Wp), zero in the wrap-around columns -> dx: (N, C, H, W)
        """
        n, c, h, w = x_shape
        k, pad, o = self.kernel_size, self.pad, self.out_channels
        hp, wp, p, _ = self._geometry(x_shape)
        length = p * wp
        span = length + k - 1  # u = 0 .. span-1
        # d behind K-1 zeros, K-1 zeros after
        dz = _temp("dz", (n, o, span + k - 1), d.dtype)
        dz[:, :, :k - 1] = 0
        dz[:, :, k - 1:k - 1 + length] = d
        dz[:, :, k - 1 + length:] = 0
        # shifted[n, (o, m), u] = dz[n, o, u + m] = d[n, o, u - j] with j = K-1-m
        shifted = _temp("dshift", (n, o, k, span), d.dtype)
        np.copyto(shifted, sliding_window_view(dz, span, axis=2))
        shifted = shifted.reshape(n, o * k, span)
        # rows[i, c, (o, m)] = W[o, c, i, K-1-m]
        rows = self.params["W"][:, :, :, ::-1].transpose(2, 1, 0, 3).reshape(k, c, o * k)
        dxf = np.zeros((n, c, hp * wp + k - 1), dtype=d.dtype)
        part = _temp("dxpart", (n, c, span), d.dtype)
        for i in range(k):
            dxf[:, :, i * wp:i * wp + span] += np.matmul(rows[i], shifted, out=part)  # (N, C, span)
        dxp = dxf[:, :, :hp * wp].reshape(n, c, hp, wp)
        if pad:
            return dxp[:, :, pad:pad + h, pad:pad + w]
        return dxp

    def _pad(self, x):
        p = self.pad
        if p == 0:
            return x
        return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))

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


def _buffer(bufs, name, shape, dtype):
    """An array of ``bufs`` (one layer's, one half's) kept between calls, reallocated when the
    shape or dtype changes: what the forward pass leaves for the backward pass (the columns)
    and the halves' partial gradients."""
    buf = bufs.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = bufs[name] = np.empty(shape, dtype=dtype)
    return buf


_temps = threading.local()


def _temp(name, shape, dtype):
    """A scratch array used within one forward or backward call and shared by every conv layer
    that runs on this thread: one array per name and thread, grown to the largest size asked
    for and never shrunk, so memory holds the temporaries of the largest layer, not of every
    layer. Its contents are what an earlier call left: callers write every entry they read
    (zeros included). Each thread (the caller, the helper of ``cnncli.workers``) has its own,
    so two halves running side by side never share one."""
    pool = _temps.__dict__.setdefault("pool", {})
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = pool.get(name)
    if buf is None or buf.nbytes < size:
        buf = pool[name] = np.empty(max(size, 1), dtype=np.uint8)
    return buf[:size].view(dtype).reshape(shape)


def _zero_border(a, pad):
    """Zero the ``pad`` outermost rows and columns of a: (N, C, H, W)."""
    if pad:
        a[:, :, :pad] = 0
        a[:, :, -pad:] = 0
        a[:, :, :, :pad] = 0
        a[:, :, :, -pad:] = 0


def _dilate(d, s):
    """Insert s-1 zeros between the entries of a 2-D array (s=1: unchanged)."""
    if s == 1:
        return d
    out = np.zeros(((d.shape[0] - 1) * s + 1, (d.shape[1] - 1) * s + 1), dtype=d.dtype)
    out[::s, ::s] = d
    return out


def _fmt(shape):
    return "x".join(str(d) for d in shape) if shape else "a scalar"
