"""Fully connected layer and Flatten."""

from __future__ import annotations

from functools import partial

import numpy as np

from cnncli.blas import add_product, axpy
from cnncli.errors import ConfigError
from cnncli.layers.base import Layer, check_init, check_int, check_keys, init_bias, init_weights, register
from cnncli.parallel import applied, run_blocks

# Weight matrices of at least this many bytes run their products in blocks. Smaller ones
# gained nothing from cnncli's pool (the seed network's layer in float32, 2.4 MB: 0.99x,
# benchmarks/bench_threads.py): waking a thread costs more than half of their products.
SPLIT_BYTES = 4 * 2**20
BLOCKS = 2  # how many: fixed, so that results never depend on the machine or its load


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

    ``backward`` keeps x and dout, and the weight gradient ``x.T @ dout`` is computed when
    ``grads`` is first read (or ``store_grads`` runs): the plain SGD step (``sgd_step``, what
    ``SGD.step`` runs) adds the product into W directly, so the README's loop
    ``net.backward(...); opt.step(net)`` runs the trainer's fused update and gives the same
    bits as ``cnn train``. Reading ``grads`` before the step stores the gradient (it may be
    changed by hand there), and the step then applies the stored one: the same update,
    rounded as ``p -= lr * g``. Read ``grads`` after each backward: the arrays are refreshed
    when it is read, not by the backward itself.
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

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """The last backward's gradients (W's is computed here on the first read after it)."""
        self.store_grads()
        return self._grads

    @grads.setter
    def grads(self, value: dict[str, np.ndarray]) -> None:
        self._grads = value
        self._pending = None  # (x, dout) of a weight gradient not computed yet

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

    def blocks(self):
        """The fixed partition of a large layer's products, or None for a small layer:
        ``(columns, rows)``, each ``BLOCKS`` (start, stop) ranges of nearly equal size, of W's
        columns for the forward product and of its rows for the backward ones.
        It depends on W's shape and dtype alone, and each block is the same BLAS call whether cnncli's
        pool runs the blocks side by side or one after the other (``cnncli.parallel``)."""
        if self.params["W"].nbytes < SPLIT_BYTES:
            return None
        return _split(self.out_features), _split(self.in_features)

    @applied
    def forward(self, x):
        """x: (N, in_features) -> (N, out_features)"""
        self._x = x
        w = self.params["W"]
        parts = self.blocks()
        if parts is None or not isinstance(x, np.ndarray) or x.ndim != 2:
            out = x @ w
        else:  # out[:, j0:j1] = x @ W[:, j0:j1]
            out = np.empty((x.shape[0], w.shape[1]), dtype=np.result_type(x.dtype, w.dtype))
            run_blocks([partial(np.matmul, x, w[:, a:b], out=out[:, a:b]) for a, b in parts[0]])
        out += self.params["b"]
        return out

    @applied
    def backward(self, dout):
        """dout: (N, out_features) -> dx: (N, in_features), or None for the first layer.

        Writes ``grads["b"]`` and keeps (x, dout) for the weight gradient (``grads``); x and
        dout must not be changed in place until the next backward, as x until this one."""
        dx = self._input_grad(dout)
        np.sum(dout, axis=0, out=self._grads["b"])
        self._pending = (self._x, dout)
        return dx

    @applied
    def backward_sgd(self, dout, lr):
        """``backward`` fused with ``W -= lr * x.T @ dout`` and ``b -= lr * sum(dout)``.

        The weight gradient goes straight into W (one GEMM accumulating into it, ``sgd_step``),
        so it is never stored: the update costs one pass over W instead of three (write the
        gradient, read it, update W); ``grads`` still computes it when read. A layer in blocks
        does each block's input gradient and update in one batch (one wake of the pool, not
        two). A subclass that overrides ``backward`` gets its backward, then ``sgd_step``.
        """
        parts = self.blocks()
        if parts is None or type(self).backward is not Dense.backward:
            return super().backward_sgd(dout, lr)  # backward, then sgd_step
        # per block of W's rows: dx rows from W[i0:i1], then W[i0:i1] -= lr * x[:, i0:i1].T @ dout
        w, x, dx_t = self.params["W"], self._x, self._dx_t(dout)
        run_blocks([partial(_backward_sgd_block, -lr, x, a, b, dout, w, dx_t) for a, b in parts[1]])
        gb = self._grads["b"]
        np.sum(dout, axis=0, out=gb)
        axpy(-lr, gb, self.params["b"])
        self._pending = (x, dout)
        return None if dx_t is None else np.ascontiguousarray(dx_t.T)

    @applied
    def sgd_step(self, lr):
        """``p -= lr * grad``: while the weight gradient is not stored, the product is added
        into W as ``backward_sgd`` does (the same blocks, the same bits)."""
        if self._pending is None:
            return super().sgd_step(lr)
        (x, dout), w, parts = self._pending, self.params["W"], self.blocks()
        if parts is None:
            add_product(-lr, x, dout, w)
        else:
            run_blocks([partial(_backward_sgd_block, -lr, x, a, b, dout, w, None)
                        for a, b in parts[1]])
        axpy(-lr, self._grads["b"], self.params["b"])

    @applied
    def store_grads(self):
        """grads["W"] = x.T @ dout from the last backward, if not stored yet:
        (in_features, out_features)"""
        if self._pending is None:
            return
        (x, dout), gw, parts = self._pending, self._grads["W"], self.blocks()
        if parts is None:
            np.matmul(x.T, dout, out=gw)
        else:  # gW[i0:i1] = x[:, i0:i1].T @ dout
            run_blocks([partial(np.matmul, x[:, a:b].T, dout, out=gw[a:b]) for a, b in parts[1]])
        self._pending = None  # only now: a product that failed leaves the gradient pending

    def _input_grad(self, dout):
        """dout: (N, out_features) -> dx: (N, in_features), or None for the first layer"""
        if not self.needs_input_grad:
            return None
        parts = self.blocks()
        if parts is None:
            # W @ dout.T, then one small transposing copy: as exact as dout @ W.T, and OpenBLAS
            # runs this orientation faster for a few rows in float32.
            return np.ascontiguousarray(np.matmul(self.params["W"], dout.T).T)
        dx_t = self._dx_t(dout)  # per block of W's rows: dx_t[i0:i1] = W[i0:i1] @ dout.T
        w = self.params["W"]
        run_blocks([partial(np.matmul, w[a:b], dout.T, out=dx_t[a:b]) for a, b in parts[1]])
        return np.ascontiguousarray(dx_t.T)

    def _dx_t(self, dout):
        """The transposed input gradient's array, (in_features, N), or None for the first layer."""
        if not self.needs_input_grad:
            return None
        w = self.params["W"]
        return np.empty((w.shape[0], dout.shape[0]), dtype=np.result_type(w.dtype, dout.dtype))


def _split(n: int) -> list[tuple[int, int]]:
    """``BLOCKS`` consecutive ranges covering 0..n, sizes differing by at most 1."""
    cuts = [n * k // BLOCKS for k in range(BLOCKS + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _backward_sgd_block(alpha, x, a, b, dout, w, dx_t):
    """One block of W's rows in the fused backward: ``dx_t[a:b] = W[a:b] @ dout.T`` (when dx_t
    is given) with the rows from before the step, then ``W[a:b] += alpha * x[:, a:b].T @ dout``
    (x's columns copied: BLAS reads them in place). No other block reads or writes these rows,
    so one batch of blocks does both products."""
    if dx_t is not None:
        np.matmul(w[a:b], dout.T, out=dx_t[a:b])
    add_product(alpha, np.ascontiguousarray(x[:, a:b]), dout, w[a:b])
