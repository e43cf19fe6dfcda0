"""Building the layer stack from config specs, and running forward/backward over it."""

from __future__ import annotations

import numpy as np

from cnncli.errors import CheckpointError, ConfigError
from cnncli.layers.base import LAYERS, Layer, layer_class
from cnncli.layers.base import check_keys
from cnncli.blas import applied


class Network:
    """A stack of layers run in order.

    ``forward(x)`` returns the last layer's output; ``backward(dout)`` gives every layer its
    ``grads`` (the first layer skips the input gradient nobody uses: ``input_grad``).
    A network starts in train mode; ``eval()`` switches batch norm to its running statistics
    and dropout off, ``train()`` back.
    """

    def __init__(self, layers: list[Layer], input_shape: tuple | None = None,
                 specs: list[dict] | None = None):
        self.layers = list(layers)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.specs = specs
        self.input_grad = False

    @property
    def input_grad(self) -> bool:
        """Whether ``backward`` computes the gradient of the network's input too (False by
        default: training never uses it; the seed's reference path and gradient checks do)."""
        return bool(self.layers) and self.layers[0].needs_input_grad

    @input_grad.setter
    def input_grad(self, value: bool) -> None:
        for i, layer in enumerate(self.layers):
            layer.needs_input_grad = i > 0 or bool(value)

    @applied
    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    @applied
    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """dout: the loss gradient of the output, (N, n_outputs). Fills every layer's ``grads``;
        returns the input gradient when ``input_grad`` is set, else None."""
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
            if dout is None:
                break
        return dout

    @applied
    def predict(self, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
        """Forward in chunks of ``batch_size``, in the network's current mode (``eval()``
        first for predictions); returns (N, n_outputs)."""
        outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def train(self) -> "Network":
        """Train mode (the default): batch norm uses batch statistics, dropout drops."""
        for layer in self.layers:
            layer.training = True
        return self

    def eval(self) -> "Network":
        """Eval mode: batch norm uses its running statistics, dropout is the identity."""
        for layer in self.layers:
            layer.training = False
        return self

    @property
    def training(self) -> bool:
        return all(layer.training for layer in self.layers)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Hand ``rng`` to every layer that draws while training (dropout): one generator,
        drawn from in layer order, whose state the trainer saves with each checkpoint."""
        for layer in self.layers:
            layer.set_rng(rng)

    def parameters(self):
        """Yields ``(key, param, grad)`` for every parameter, key ``layers.<i>.<name>``."""
        for i, layer in enumerate(self.layers):
            for name, p in layer.params.items():
                yield f"layers.{i}.{name}", p, layer.grads[name]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Every parameter, keyed ``layers.<i>.<name>`` (without touching the gradients)."""
        return {f"layers.{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in layer.params.items()}

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {key: g for key, _, g in self.parameters()}

    @property
    def buffers(self) -> dict[str, np.ndarray]:
        """State that is saved but never trained (batch norm's running statistics), keyed
        ``layers.<i>.<buffer>``; optimizers never see it."""
        return {f"layers.{i}.{name}": b for i, layer in enumerate(self.layers)
                for name, b in layer.buffers.items()}

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def num_buffers(self) -> int:
        return sum(b.size for b in self.buffers.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as plain arrays (copies), keyed ``layers.<index>.<name>``."""
        return {key: p.copy() for key, p in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy parameters and buffers in place, checking that keys, shapes and dtypes match
        exactly."""
        own = {**self.params, **self.buffers}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise CheckpointError(f"parameters do not match the network: missing {missing or 'none'}, "
                                  f"unexpected {extra or 'none'}")
        for key, p in own.items():
            a = np.asarray(state[key])
            if a.shape != p.shape:
                raise CheckpointError(f"{key} has shape {a.shape}, the network expects {p.shape}")
            if a.dtype != p.dtype:
                raise CheckpointError(f"{key} has dtype {a.dtype}, the network expects {p.dtype}")
        for key, p in own.items():
            p[...] = state[key]

    def summary(self) -> list[dict]:
        """One row per layer: index, type, output shape (per sample), parameter count, buffer
        values (saved, not trained). A residual block's row is followed by rows of its inner
        layers, indexed ``<i>.<j>`` with ``depth`` 1 (2 inside a nested block, ...)."""
        rows, shape = [], self.input_shape
        for i, layer in enumerate(self.layers):
            in_shape = shape
            shape = layer.output_shape(shape) if shape is not None else None
            rows.append({"index": i, "type": layer.type_name, "output_shape": shape,
                         "params": layer.num_params(),
                         "buffers": int(sum(b.size for b in layer.buffers.values()))})
            if hasattr(layer, "summary"):  # a residual block: its inner layers, depth 1 deeper
                rows.extend(layer.summary(in_shape, str(i)))
        return rows

    @property
    def output_shape(self):
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape


def build_network(specs, input_shape, rng=None, dtype=np.float64, impl=None) -> Network:
    """Build a Network from config specs such as ``{"type": "conv2d", "out_channels": 4,
    "kernel_size": 2}``, inferring ``in_channels``/``in_features`` from the previous layer.

    input_shape: one sample's shape, (C, H, W). Every problem is reported at once as a
    ConfigError naming ``network[i] (type)``. ``impl`` sets every conv layer's implementation.
    """
    rng = np.random.default_rng() if rng is None else rng
    dtype = np.dtype(dtype)
    if not isinstance(specs, list) or not specs:
        raise ConfigError("network: must be a non-empty list of layers, got "
                          f"{'an empty list' if specs == [] else repr(specs)}")
    problems, layers, resolved = [], [], []
    shape = tuple(int(d) for d in input_shape)
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            problems.append(f"network[{i}]: must be a mapping like {{type: relu}}, got {spec!r}")
            shape = None
            continue
        kind = spec.get("type")
        where = f"network[{i}] ({kind})" if isinstance(kind, str) else f"network[{i}]"
        if "type" not in spec:
            problems.append(f"{where}: missing key 'type'; known types: {', '.join(sorted(LAYERS))}")
            shape = None
            continue
        args = {k: v for k, v in spec.items() if k != "type"}
        try:
            cls = layer_class(kind)
            if shape is None:  # an earlier layer failed: check the keys only
                check_keys(cls, args)
                continue
            build_args = dict(args)
            if impl is not None and "impl" in cls.spec_keys():
                build_args["impl"] = impl
            layer = cls.from_spec(build_args, shape, rng, dtype)
            shape = layer.output_shape(shape)
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
            shape = None
            continue
        except TypeError as exc:  # a required argument is missing
            problems.append(f"{where}: {_missing_arg(exc)}")
            shape = None
            continue
        layers.append(layer)
        resolved.append({"type": kind, **args, **layer.config()})
    if problems:
        raise ConfigError(problems)
    net = Network(layers, input_shape, resolved)
    problem = misplaced_whiten(net)
    if problem:
        raise ConfigError(problem)
    return net


def named_layers(layers, prefix: str = "network"):
    """Every layer with where the config puts it (``network[2]``, ``network[3].layers[0]`` for
    a residual block's inner layers), in order."""
    for i, layer in enumerate(layers):
        yield f"{prefix}[{i}]", layer
        if hasattr(layer, "block"):
            yield from named_layers(layer.block.layers, f"{prefix}[{i}].layers")


def misplaced_whiten(net: Network) -> str | None:
    """The problem with the network's ``init: whiten`` layers, if any: only the first layer
    may have it (its filters are computed from the input images)."""
    for where, layer in named_layers(net.layers):
        if getattr(layer, "init", None) == "whiten" and layer is not net.layers[0]:
            return (f"{where} ({layer.type_name}): init 'whiten' is for the network's first "
                    f"layer only (its filters are computed from the input images)")
    return None


def _missing_arg(exc: TypeError) -> str:
    text = str(exc)
    if "missing" in text and "argument" in text:
        names = text.split(":", 1)[-1].strip()
        return f"missing required key(s) {names}"
    return text
