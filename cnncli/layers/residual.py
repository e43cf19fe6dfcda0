"""Residual blocks: ``x + block(x)``, the skip connection of ResNets, with any inner layers."""

from __future__ import annotations

from cnncli.errors import ConfigError
from cnncli.layers.base import Layer, check_keys, register

SHORTCUTS = ("identity", "conv")


def _fmt(shape) -> str:
    return "x".join(map(str, shape))


@register("residual")
class Residual(Layer):
    """``out = block(x) + shortcut(x)``: ``block`` is the inner layer list ``layers`` (any
    registered layers, residual blocks too), ``shortcut`` the identity or, with
    ``shortcut: conv``, a 1x1 convolution (He-initialised, zero bias) whose stride maps the
    input's height and width to the block's, optionally followed by batch norm
    (``shortcut_batch_norm: true``). The identity needs the block to keep the shape.

    ``params``, ``grads`` and ``buffers`` are the inner layers' own arrays (not copies) under
    nested names: ``layers.<i>.<name>`` for inner layer i, ``shortcut.W``/``shortcut.b`` and
    ``shortcut_bn.<name>``; a network prefixes them with ``layers.<index>.``, so a checkpoint
    holds e.g. ``layers.3.layers.1.W``. Mode (``training``), the input-gradient flag, the
    dropout generator (``set_rng``) and ``fix_mask`` reach every inner layer. ``impl`` sets the
    implementation of every conv inside (the trainer's ``training.impl`` does so too).

    Shape:
        x:   (N, C, H, W) (or (N, F) with an identity shortcut)
        out: (N, C', H', W'), the block's output shape
    """

    def __init__(self, layers, shortcut="identity", shortcut_batch_norm=False, impl=None):
        super().__init__()
        if not isinstance(layers, list) or not layers:
            raise ConfigError(f"layers must be a non-empty list of layers, got {layers!r}")
        if shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        if not isinstance(shortcut_batch_norm, bool):
            raise ConfigError(f"shortcut_batch_norm must be true or false, got {shortcut_batch_norm!r}")
        if shortcut_batch_norm and shortcut != "conv":
            raise ConfigError("shortcut_batch_norm applies to shortcut: conv only")
        if impl not in (None, "fast", "reference"):
            raise ConfigError(f"impl must be one of fast, reference, got {impl!r}")
        self.specs, self.shortcut, self.shortcut_batch_norm, self.impl = layers, shortcut, \
            shortcut_batch_norm, impl
        self.block = None  # a Network of the inner layers, built by from_spec
        self.short_layers: list[Layer] = []  # [] (identity), [conv] or [conv, batch_norm]
        self.in_shape = self.out_shape = None
        self._training = True
        self._needs_input_grad = True

    @classmethod
    def from_spec(cls, spec, in_shape, rng, dtype):
        from cnncli.layers.conv import Conv2D
        from cnncli.layers.norm import BatchNorm
        from cnncli.network import build_network

        check_keys(cls, spec)
        if "layers" not in spec:
            raise ConfigError("missing required key 'layers' (the block: a list of layers)")
        layer = cls(**spec)
        in_shape = tuple(in_shape)
        try:
            layer.block = build_network(layer.specs, in_shape, rng, dtype, impl=layer.impl)
        except ConfigError as exc:
            raise ConfigError(["; ".join(p.replace("network[", "layers[", 1)
                                         for p in exc.problems)]) from None
        out = tuple(layer.block.output_shape)
        if layer.shortcut == "identity":
            if out != in_shape:
                raise ConfigError(f"the block maps its input {_fmt(in_shape)} to {_fmt(out)}, but "
                                  f"the identity shortcut needs both shapes equal; set shortcut: "
                                  f"conv (a 1x1 convolution) or keep the shape")
        else:
            if len(in_shape) != 3 or len(out) != 3:
                raise ConfigError(f"shortcut: conv needs (C, H, W) input and output, but the block "
                                  f"maps {_fmt(in_shape)} to {_fmt(out)}")
            stride = _stride(in_shape[1:], out[1:])
            if stride is None:
                raise ConfigError(f"the block maps its input {_fmt(in_shape)} to {_fmt(out)}, which "
                                  f"no strided 1x1 convolution shortcut can match (pad the block's "
                                  f"convolutions to keep the size, or stride them)")
            conv = Conv2D(in_shape[0], out[0], 1, stride=stride, impl=layer.impl or "fast",
                          init="he", rng=rng, dtype=dtype)
            layer.short_layers = [conv]
            if layer.shortcut_batch_norm:
                layer.short_layers.append(BatchNorm(out[0], dtype=dtype))
        layer.in_shape, layer.out_shape = in_shape, out
        layer._collect()
        return layer

    def _collect(self):
        """params, grads and buffers: the inner layers' arrays under nested names."""
        named = [(f"layers.{i}.", inner) for i, inner in enumerate(self.block.layers)]
        named += list(zip(("shortcut.", "shortcut_bn."), self.short_layers))
        self.params = {p + k: v for p, inner in named for k, v in inner.params.items()}
        self.grads = {p + k: v for p, inner in named for k, v in inner.grads.items()}
        self.buffers = {p + k: v for p, inner in named for k, v in inner.buffers.items()}

    def children(self) -> list[Layer]:
        """Every inner layer: the block's, then the shortcut's."""
        return list(self.block.layers) + list(self.short_layers)

    def config(self):
        cfg = {"layers": self.block.specs if self.block is not None else self.specs}
        if self.shortcut != "identity":
            cfg["shortcut"] = self.shortcut
        if self.shortcut_batch_norm:
            cfg["shortcut_batch_norm"] = True
        return cfg

    def output_shape(self, in_shape):
        if tuple(in_shape) != self.in_shape:
            raise ConfigError(f"expects input {_fmt(self.in_shape)}, got {_fmt(in_shape)}")
        return self.out_shape

    def summary(self, in_shape, prefix: str) -> list[dict]:
        """Rows for ``cnn summary``: one per inner layer (nested blocks expanded), indexed
        ``<prefix>.<i>``, with ``depth`` one more than the block's."""
        rows = []
        for row in self.block.summary():
            rows.append({**row, "index": f"{prefix}.{row['index']}",
                         "depth": row.get("depth", 0) + 1})
        for name, inner in zip(("shortcut", "shortcut_bn"), self.short_layers):
            rows.append({"index": f"{prefix}.{name}", "type": inner.type_name,
                         "output_shape": self.out_shape, "params": inner.num_params(),
                         "buffers": int(sum(b.size for b in inner.buffers.values())),
                         "depth": 1})
        return rows

    # ------------------------------------------------------------ modes, reaching inside
    @property
    def training(self):
        return self._training

    @training.setter
    def training(self, value):
        self._training = bool(value)
        for inner in self.children() if self.block is not None else ():
            inner.training = bool(value)

    @property
    def needs_input_grad(self):
        return self._needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        self._needs_input_grad = bool(value)
        if self.block is not None:
            self.block.input_grad = bool(value)
            for inner in self.short_layers:
                inner.needs_input_grad = bool(value)

    @property
    def fix_mask(self):
        return any(getattr(inner, "fix_mask", False) for inner in self.children())

    @fix_mask.setter
    def fix_mask(self, value):
        for inner in self.children():
            if hasattr(inner, "fix_mask"):
                inner.fix_mask = value

    def set_rng(self, rng):
        self.block.set_rng(rng)

    # ------------------------------------------------------------ arithmetic
    def forward(self, x):
        """x: (N, *in_shape) -> (N, *out_shape)"""
        self.block.input_grad = self._needs_input_grad
        for inner in self.short_layers:
            inner.needs_input_grad = self._needs_input_grad
        out = self.block.forward(x)
        s = x
        for inner in self.short_layers:
            s = inner.forward(s)
        return out + s

    def backward(self, dout):
        """The sum's gradient flows into both branches unchanged: dx = d block(x)/dx^T dout +
        d shortcut(x)/dx^T dout (the identity's is dout)."""
        dx = self.block.backward(dout)
        ds = dout
        for inner in reversed(self.short_layers):
            ds = inner.backward(ds)
        if not self._needs_input_grad:
            return None
        return dx + ds


def _stride(size, out) -> int | None:
    """The stride s of a 1x1 convolution taking H x W to P x Q ((H - 1) // s + 1 == P), or None."""
    (h, w), (p, q) = size, out
    for s in range(1, max(h, w) + 1):
        if (h - 1) // s + 1 == p and (w - 1) // s + 1 == q:
            return s
    return None
