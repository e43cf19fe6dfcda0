"""Batch normalisation (PyTorch's conventions) and dropout: the layers that behave differently
in train and eval mode."""

from __future__ import annotations

from functools import partial

import numpy as np

from cnncli import workers
from cnncli.errors import ConfigError, TrainingError
from cnncli.layers.base import Layer, check_float, check_int, check_keys, register


@register("batch_norm")
class BatchNorm(Layer):
    """Normalise each channel (4-D input: over N, H, W) or feature (2-D input: over N), then
    scale and shift: ``out = gamma * (x - mean) / sqrt(var + eps) + beta``.

    Train mode normalises with the batch mean and the **biased** batch variance (divided by
    m, the number of values per channel), and updates the buffers
    ``running = (1 - momentum) * running + momentum * batch`` with the **unbiased** variance
    (divided by m - 1), as ``torch.nn.BatchNorm2d``. Eval mode normalises with the running
    statistics. A train-mode batch with a single value per channel (m = 1: a 2-D batch of one
    sample) has no variance and is refused with a TrainingError (the trainer refuses such a
    last batch before training starts; see ``training.drop_last``).

    Shape:
        x:   (N, C, H, W) or (N, C)
        out: as x
        gamma, beta, running_mean, running_var: (C,)
    """

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float64):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        try:
            self.momentum = check_float("momentum", momentum, 0.0, strict=False)
        except ConfigError:
            self.momentum = 2.0  # reported below with the whole range
        if self.momentum > 1:
            raise ConfigError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.eps = check_float("eps", eps)
        c = self.num_features
        self.params = {"gamma": np.ones(c, dtype=dtype), "beta": np.zeros(c, dtype=dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": np.zeros(c, dtype=dtype),
                        "running_var": np.ones(c, dtype=dtype)}
        self._cache = None

    @classmethod
    def from_spec(cls, spec, in_shape, rng, dtype):
        check_keys(cls, spec)
        spec = dict(spec)
        if len(in_shape) not in (1, 3):
            raise ConfigError(f"needs an input of shape (C, H, W) or (F,), but the previous "
                              f"layer outputs {'x'.join(map(str, in_shape))}")
        c = in_shape[0]
        if "num_features" in spec and spec["num_features"] != c:
            raise ConfigError(f"num_features is {spec['num_features']!r}, but its input has {c} "
                              "channels or features")
        spec["num_features"] = c
        return cls(dtype=dtype, **spec)

    def config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 3) or in_shape[0] != self.num_features:
            raise ConfigError(f"expects {self.num_features} channels or features, got {in_shape}")
        return tuple(in_shape)

    @staticmethod
    def _axes(x):
        return (0, 2, 3) if x.ndim == 4 else (0,)

    def _per_channel(self, v, x):
        """(C,) -> broadcastable against x"""
        return v[None, :, None, None] if x.ndim == 4 else v[None, :]

    def forward(self, x):
        """Large inputs in two halves of the channels side by side (``cnncli.workers``): each
        channel's statistics are its own, so the halves share nothing."""
        if self.training and x.size // x.shape[1] < 2:
            raise TrainingError(
                f"batch_norm: a train-mode batch of shape {x.shape} holds a single value per "
                "channel, which has no variance; use batches of at least 2 samples (for a last "
                "partial batch of 1, set training.drop_last: true)")
        out, xhat = np.empty_like(x), np.empty_like(x)
        inv_std = np.empty(x.shape[1], dtype=x.dtype)
        forward = self._forward_train if self.training else self._forward_eval
        workers.run([partial(forward, x, out, xhat, inv_std, slice(a, b))
                     for a, b in workers.parts(x.shape[1], x.size)])
        self._cache = ("train" if self.training else "eval", xhat, inv_std)
        return out

    def _forward_train(self, x, out, xhat, inv_std, cs):
        """Channels ``cs`` in train mode: batch statistics, running statistics updated."""
        x, out, xhat = x[:, cs], out[:, cs], xhat[:, cs]
        axes, m = self._axes(x), x.size // x.shape[1]  # m values per channel
        mean = x.mean(axis=axes)  # (C,)
        np.subtract(x, self._per_channel(mean, x), out=xhat)  # centred now, normalised below
        var = np.square(xhat).mean(axis=axes)  # biased: divided by m
        inv_std[cs] = 1.0 / np.sqrt(var + self.eps)
        xhat *= self._per_channel(inv_std[cs], x)
        mom = self.momentum
        rm, rv = self.buffers["running_mean"][cs], self.buffers["running_var"][cs]
        rm *= 1 - mom
        rm += mom * mean
        rv *= 1 - mom
        rv += mom * var * (m / (m - 1))  # unbiased
        self._scale_shift(xhat, out, cs)

    def _forward_eval(self, x, out, xhat, inv_std, cs):
        """Channels ``cs`` in eval mode: the running statistics."""
        x, out, xhat = x[:, cs], out[:, cs], xhat[:, cs]
        mean, var = self.buffers["running_mean"][cs], self.buffers["running_var"][cs]
        inv_std[cs] = 1.0 / np.sqrt(var + self.eps)
        np.subtract(x, self._per_channel(mean, x), out=xhat)
        xhat *= self._per_channel(inv_std[cs], x)
        self._scale_shift(xhat, out, cs)

    def _scale_shift(self, xhat, out, cs):
        np.multiply(xhat, self._per_channel(self.params["gamma"][cs], xhat), out=out)
        out += self._per_channel(self.params["beta"][cs], xhat)

    def backward(self, dout):
        """With xhat the normalised input and m values per channel: dgamma = sum(dout * xhat),
        dbeta = sum(dout); in train mode (mean and variance depend on x)
        dx = gamma * inv_std / m * (m * dout - sum(dout) - xhat * sum(dout * xhat)),
        in eval mode dx = gamma * inv_std * dout. Channel halves as in ``forward``."""
        dx = np.empty_like(dout) if self.needs_input_grad else None
        workers.run([partial(self._backward_channels, dout, dx, slice(a, b))
                     for a, b in workers.parts(dout.shape[1], dout.size)])
        return dx

    def _backward_channels(self, dout, dx, cs):
        mode, xhat, inv_std = self._cache
        dout, xhat, inv_std = dout[:, cs], xhat[:, cs], inv_std[cs]
        axes = self._axes(dout)
        sum_d = dout.sum(axis=axes)  # (C,)
        sum_dx = np.multiply(dout, xhat).sum(axis=axes)
        self.grads["gamma"][cs] = sum_dx
        self.grads["beta"][cs] = sum_d
        if dx is None:
            return
        dx = dx[:, cs]
        scale = self._per_channel(self.params["gamma"][cs] * inv_std, dout)
        if mode == "eval":
            np.multiply(dout, scale, out=dx)
            return
        m = dout.size // dout.shape[1]
        # gamma * inv_std * (dout - sum_d / m - xhat * sum_dx / m), in place
        np.multiply(xhat, self._per_channel(sum_dx / m, dout), out=dx)
        np.subtract(dout, dx, out=dx)
        dx -= self._per_channel(sum_d / m, dout)
        dx *= scale


@register("dropout")
class Dropout(Layer):
    """Inverted dropout: in train mode each unit is zeroed with probability ``p`` and the
    kept ones are scaled by 1 / (1 - p), so that eval mode is the identity. The mask is drawn
    from the generator given by ``set_rng`` (the trainer hands every layer one generator from
    the config seed; until then, a fresh unseeded one).

    ``fix_mask = True`` (finite-difference checks) keeps the last mask of the same shape
    instead of drawing a new one per forward pass.

    Shape: out has the shape of x.
    """

    def __init__(self, p=0.5):
        super().__init__()
        ok = isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p < 1
        if not ok:
            raise ConfigError(f"p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng()
        self.fix_mask = False
        self.mask = None  # (N, ...) of 0 and 1 / (1 - p), the last one drawn
        self._mask_used = None  # the mask of the last forward pass (None: the identity)

    def set_rng(self, rng):
        self.rng = rng

    def config(self):
        return {"p": self.p}

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask_used = None
            return x
        if not (self.fix_mask and self.mask is not None and self.mask.shape == x.shape):
            keep = self.rng.random(x.shape) >= self.p
            self.mask = keep.astype(x.dtype) * np.asarray(1 / (1 - self.p), dtype=x.dtype)
        self._mask_used = self.mask
        return x * self.mask

    def backward(self, dout):
        if not self.needs_input_grad:
            return None
        return dout if self._mask_used is None else dout * self._mask_used
