"""Fine-tuning: start a network from a checkpoint's leading layers (``training.init_from``) and
keep chosen layers unchanged while training (``training.freeze``).

Loading (``init_from_checkpoint``) walks the network's layers in order and takes a layer's
parameters and buffers from the checkpoint's layer of the same index while the two have the same
type and the same arrays (names and shapes); the first that differs, and every layer after it,
starts fresh (its usual initialisation from the config's seed). A checkpoint stored in another
dtype is cast. ``training.init_from_layers: N`` says exactly how many leading layers to load:
each of them must match, or loading stops with one line naming the layer; the rest start fresh.

A frozen layer (``training.freeze``) is one the optimizer never updates (nor weight decay) and
that runs in eval mode while training: batch norm normalises with its running statistics and
leaves them unchanged, dropout is off. So its parameters and buffers stay bit-identical.
Nothing here prints: the trainer keeps the report (``Trainer.init_report``), ``cnn train``
prints it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from cnncli.errors import CheckpointError

@dataclass
class InitReport:
    """Where a network started: ``loaded`` and ``fresh`` list ``(index, type)`` of the layers
    with parameters or buffers (layers without any are not listed)."""

    path: str
    loaded: list = field(default_factory=list)
    fresh: list = field(default_factory=list)

    def meta(self) -> dict:
        """JSON-able, for a checkpoint's meta."""
        d = asdict(self)
        d["loaded"] = [list(x) for x in self.loaded]
        d["fresh"] = [list(x) for x in self.fresh]
        return d

    def line(self) -> str:
        """One line for ``cnn train``."""
        def names(rows):
            return ", ".join(f"{i} ({t})" for i, t in rows) or "none"
        return (f"Initialised from {self.path}: loaded layer(s) {names(self.loaded)}; "
                f"fresh: {names(self.fresh)}")


def _layer_state(layer) -> dict[str, np.ndarray]:
    return {**layer.params, **layer.buffers}


def _grouped(arrays: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """``layers.<i>.<rest>`` arrays by top-level layer index: {i: {rest: array}}."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, a in arrays.items():
        m = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = a
    return out


def _mismatch(layer, kind, theirs: dict[str, np.ndarray]) -> str | None:
    """Why a checkpoint layer (type ``kind``, arrays ``theirs``) cannot load into ``layer``."""
    if kind != layer.type_name:
        return f"it is a {kind} in the checkpoint"
    own = _layer_state(layer)
    if set(own) != set(theirs):
        return (f"it holds {', '.join(sorted(theirs)) or 'no arrays'} in the checkpoint, the network's "
                f"{', '.join(sorted(own)) or 'none'}")
    for key, p in own.items():
        if theirs[key].shape != p.shape:
            return (f"{key} is {'x'.join(map(str, theirs[key].shape))} in the checkpoint, the "
                    f"network's is {'x'.join(map(str, p.shape))}")
    return None


def init_from_checkpoint(net, path, layers: int | None = None) -> InitReport:
    """Load the leading layers of checkpoint ``path`` into ``net`` in place (module doc).

    ``layers``: load exactly this many leading layers (each must match: a CheckpointError names
    the first that does not); None: every leading layer that matches. Returns the report."""
    from cnncli.checkpoint import load_checkpoint

    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"training.init_from: {exc}") from None
    specs = meta["config"].get("network")
    kinds = [s.get("type") if isinstance(s, dict) else None for s in specs] \
        if isinstance(specs, list) else []
    theirs = _grouped(arrays)
    report = InitReport(str(path))
    loading = True
    for i, layer in enumerate(net.layers):
        if layers is not None and i >= layers:
            loading = False
        if loading:
            why = f"the checkpoint has only {len(kinds)} layers" if i >= len(kinds) \
                else _mismatch(layer, kinds[i], theirs.get(i, {}))
            if why is not None:
                if layers is not None:
                    raise CheckpointError(
                        f"training.init_from: {path}: cannot load layer {i} ({layer.type_name}): {why} "
                        f"(training.init_from_layers: {layers} loads layers 0 to {layers - 1})")
                loading = False
        has_state = bool(_layer_state(layer))
        if loading:
            for key, p in _layer_state(layer).items():
                p[...] = theirs[i][key].astype(p.dtype, copy=False)
            if has_state:
                report.loaded.append((i, layer.type_name))
        elif has_state:
            report.fresh.append((i, layer.type_name))
    return report


class Trainable:
    """What the optimizer sees of a network with frozen layers: ``parameters()`` yields only the
    parameters of the layers not frozen (keys as the network's)."""

    def __init__(self, net, frozen: list[int]):
        self.net, self.frozen = net, set(frozen)

    def parameters(self):
        for i, layer in enumerate(self.net.layers):
            if i not in self.frozen:
                for name, p in layer.params.items():
                    yield f"layers.{i}.{name}", p, layer.grads[name]


def skip_frozen_gradients(net, frozen: list[int]) -> None:
    """When layers 0..k are all frozen, nobody needs their gradients: layer k+1 skips its
    input gradient, which ends the backward pass there."""
    k = -1
    while k + 1 in set(frozen):
        k += 1
    if 0 <= k < len(net.layers) - 1:
        net.layers[k + 1].needs_input_grad = False
