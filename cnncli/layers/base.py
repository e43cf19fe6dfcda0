"""The layer contract and the registry that maps a config's ``type:`` to a layer class."""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from cnncli.errors import ConfigError
from cnncli.text import did_you_mean

LAYERS: dict[str, type["Layer"]] = {}


def register(name: str):
    """Class decorator: make a layer buildable from a spec ``{type: name, ...}``."""

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"@register({name!r}) needs a subclass of cnncli.layers.Layer, got {cls!r}")
        if name in LAYERS:
            raise ValueError(f"layer type {name!r} is already registered")
        LAYERS[name] = cls
        cls.type_name = name
        return cls

    return add


def layer_class(name) -> type["Layer"]:
    """The registered class for ``name``; an unknown name lists the known ones."""
    if isinstance(name, str) and name in LAYERS:
        return LAYERS[name]
    known = ", ".join(sorted(LAYERS))
    hint = did_you_mean(str(name), LAYERS)
    raise ConfigError(f"unknown layer type {name!r}{hint}; known types: {known}")


class Layer:
    """One step of the network.

    ``params`` and ``grads`` are plain dicts with the same keys and shapes: ``backward(dout)``
    returns the input gradient and writes the gradient of every parameter into ``grads``;
    optimizers read ``grads`` and update ``params`` in place. Layers know nothing of learning
    rates or optimizers. ``buffers`` hold state that is saved and restored but
    never trained (batch norm's running statistics): optimizers and weight decay never see
    them. ``training`` is the mode (``Network.train()`` / ``Network.eval()``): layers such as
    batch norm and dropout behave differently in the two. Shapes given without the batch axis
    (``in_shape``) describe one sample.
    """

    type_name = "layer"
    # False on a network's first layer, whose input gradient nobody uses
    # (``Network.input_grad``).
    needs_input_grad: bool = True
    training: bool = True

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def set_rng(self, rng: np.random.Generator) -> None:
        """Hand the layer the generator it draws from while training (dropout's masks);
        layers that draw nothing ignore it."""

    @classmethod
    def from_spec(cls, spec: dict, in_shape: tuple, rng: np.random.Generator, dtype) -> "Layer":
        """Build from a config spec (without ``type``), given the previous output shape."""
        check_keys(cls, spec)
        return cls(**spec)

    @classmethod
    def spec_keys(cls) -> list[str]:
        """The keys a spec for this layer may hold (its constructor's arguments)."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p not in ("self", "rng", "dtype")]

    def output_shape(self, in_shape: tuple) -> tuple:
        """Per-sample output shape for a per-sample input shape (no batch axis)."""
        return tuple(in_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def config(self) -> dict:
        """The spec that rebuilds this layer (hyperparameters only)."""
        return {}

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def check_keys(cls, spec: dict, extra: tuple = ()) -> None:
    """Refuse keys the layer does not take, suggesting the closest known key."""
    known = list(cls.spec_keys()) + list(extra)
    for key in spec:
        if key not in known:
            hint = did_you_mean(str(key), known)
            allowed = ", ".join(known) if known else "none"
            raise ConfigError(f"unknown key {key!r}{hint}; {cls.type_name} takes: {allowed}")


def check_int(name: str, value, minimum: int) -> int:
    """An integer >= minimum (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite real number > minimum (or >= minimum when not strict)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        rel = ">" if strict else ">="
        raise ConfigError(f"{name} must be a number {rel} {minimum:g}, got {value!r}")
    return float(value)


INITS = ("normal", "he", "xavier")
CONV_INITS = INITS + ("dirac", "whiten")


def check_init(init, std, allowed=INITS) -> tuple[str, float | None]:
    if init not in allowed:
        hint = did_you_mean(str(init), allowed)
        raise ConfigError(f"init must be one of {', '.join(allowed)}, got {init!r}{hint}")
    if std is not None:
        if init != "normal":
            raise ConfigError(f"std applies to init 'normal' only, not {init!r}")
        std = check_float("std", std)
    return init, std


def init_weights(rng, shape, fan_in, fan_out, init, std, default_std, dtype):
    """Draw a weight array. ``normal``: N(0, std^2) (the seed's scheme); ``he`` (and the conv
    layer's ``dirac`` and ``whiten``, which write their filters over these): N(0, 2/fan_in);
    ``xavier``: N(0, 2/(fan_in + fan_out))."""
    if init == "normal":
        scale = default_std if std is None else std
    elif init in ("he", "dirac", "whiten"):
        scale = np.sqrt(2.0 / fan_in)
    else:
        scale = np.sqrt(2.0 / (fan_in + fan_out))
    return (rng.standard_normal(shape) * scale).astype(dtype, copy=False)


def init_bias(rng, shape, init, std, default_std, dtype):
    """The seed draws biases like weights (``normal``); ``he`` and ``xavier`` start them at 0."""
    if init == "normal":
        scale = default_std if std is None else std
        return (rng.standard_normal(shape) * scale).astype(dtype, copy=False)
    return np.zeros(shape, dtype=dtype)
