"""Central finite-difference checks of every backward pass, in float64.

For a layer and a random upstream gradient ``dout``, the scalar ``f = sum(forward(x) * dout)``
has ``df/dx = backward(dout)`` and ``df/dW = grads["W"]``; each is compared with
``(f(v + eps) - f(v - eps)) / (2 eps)`` entry by entry.

Kinks. ReLU at 0 and ties in a max-pool window make ``f`` not differentiable there; when such a
kink lies within ``eps`` of the check point, the central difference straddles it and mixes the
slopes of both sides, so it disagrees with a correct gradient. Such an entry is recognised by
its one-sided differences ``(f(v + eps) - f(v)) / eps`` and ``(f(v) - f(v - eps)) / eps``: they
disagree (by more than twice the tolerance), and the analytic value lies between them (it is the
slope of the side the check point is on). Only an entry that fails the central comparison is
examined so: it is then *skipped at a kink* and counted, not failed. A wrong gradient disagrees
with both one-sided differences, which agree with each other away from kinks, so it still fails.
An array whose sampled entries are all skipped is *unchecked*, which is not a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncli.errors import ConfigError

TOLERANCE = 1e-6
JITTER = 1e-2  # move_off_kinks' offsets on inputs and biases
LAYER_NUDGE = 1e-3  # check_network's offset on each layer's own input


@dataclass
class CheckResult:
    layer: int  # index in the network (-1 for the whole network)
    type: str
    name: str  # "x" (input gradient) or a parameter name
    max_rel_error: float  # over the checked entries; nan when none was checked
    checked: int  # entries compared
    skipped: int = 0  # entries skipped because the check point sat on a kink

    @property
    def unchecked(self) -> bool:
        """Every sampled entry sat on a kink: nothing was compared (not a pass)."""
        return self.checked == 0

    @property
    def passed(self) -> bool:
        return self.checked > 0 and self.max_rel_error <= TOLERANCE


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = 1e-8) -> float:
    """max |a - n| over the entries, relative to the largest magnitude of either (or
    ``floor``, when both are smaller)."""
    scale = max(float(np.max(np.abs(analytic), initial=0.0)),
                float(np.max(np.abs(numeric), initial=0.0)), floor)
    return float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale


def _differences(f, v: np.ndarray, index: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided differences at the entries ``index`` of ``v``: (forward, backward), each
    (len(index),). Their mean is the central difference."""
    flat = v.reshape(-1)  # a view: v is contiguous
    centre = f()
    fwd, bwd = np.empty(len(index)), np.empty(len(index))
    for k, i in enumerate(index):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        fwd[k] = (plus - centre) / eps
        bwd[k] = (centre - minus) / eps
    return fwd, bwd


def compare(layer: int, type_name: str, name: str, analytic: np.ndarray, fwd: np.ndarray,
            bwd: np.ndarray, floor: float = 1e-8) -> CheckResult:
    """Compare analytic gradient entries with finite differences, skipping kinks (module doc).

    analytic, fwd, bwd: (M,) the analytic values and the one-sided differences of M entries.
    Errors are relative to the largest magnitude of either (or ``floor``, when both are
    smaller; see relative_error).
    """
    numeric = (fwd + bwd) / 2  # the central difference
    scale = max(float(np.max(np.abs(analytic), initial=0.0)),
                float(np.max(np.abs(numeric), initial=0.0)), floor)
    err = np.abs(analytic - numeric) / scale
    lo, hi = np.minimum(fwd, bwd), np.maximum(fwd, bwd)
    margin = TOLERANCE * scale + 0.25 * (hi - lo)
    at_kink = ((err > TOLERANCE) & (hi - lo > 2 * TOLERANCE * scale)
               & (analytic >= lo - margin) & (analytic <= hi + margin))
    checked = ~at_kink
    worst = float(np.max(err[checked])) if checked.any() else float("nan")
    return CheckResult(layer, type_name, name, worst, int(checked.sum()), int(at_kink.sum()))


def _entries(size: int, max_entries: int | None, rng) -> np.ndarray:
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def check_layer(layer, x: np.ndarray, rng, eps: float = 1e-6, max_entries: int | None = 200,
                index: int = 0) -> list[CheckResult]:
    """Check the input gradient and every parameter gradient of one layer (float64 arrays),
    in the layer's mode (batch norm in train mode: through the batch statistics)."""
    fix_masks([layer])
    x = np.ascontiguousarray(x, dtype=np.float64).copy()
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    keep = layer.needs_input_grad
    layer.needs_input_grad = True
    try:
        dx = layer.backward(dout)
    finally:
        layer.needs_input_grad = keep
    grads = {k: g.copy() for k, g in layer.grads.items()}

    def f():
        return float(np.sum(layer.forward(x) * dout))

    # A layer made of layers (a residual block) can hold a gradient that is exactly 0 (a conv
    # bias just before batch norm): judged against the resolution of f, as in check_network.
    floor = max(1e-8, 10 * np.finfo(np.float64).eps * max(abs(f()), 1.0) / eps / TOLERANCE) \
        if layer.type_name == "residual" else 1e-8
    results = []
    idx = _entries(x.size, max_entries, rng)
    results.append(compare(index, layer.type_name, "x", dx.reshape(-1)[idx],
                           *_differences(f, x, idx, eps)))
    for name, p in layer.params.items():
        idx = _entries(p.size, max_entries, rng)
        results.append(compare(index, layer.type_name, name, grads[name].reshape(-1)[idx],
                               *_differences(f, p, idx, eps), floor=floor))
    return results


def check_network(net, loss, x, target, rng, eps: float = 1e-6,
                  max_entries: int | None = 200) -> list[CheckResult]:
    """Every layer on its own (on the activations it sees in the network), then every
    parameter gradient of the whole network's loss, as backpropagated by ``net.backward``."""
    x = np.asarray(x, dtype=np.float64)
    fix_masks(net.layers)
    results, h = [], x
    for i, layer in enumerate(net.layers):
        # ReLU outputs hold exact zeros, which tie in max-pool windows: nudge each layer's own
        # input by far more than eps so that few of its entries sit on a tie (those that still
        # do are skipped as kinks).
        nudged = h + rng.uniform(-LAYER_NUDGE, LAYER_NUDGE, h.shape)
        results += check_layer(layer, nudged, rng, eps, max_entries, index=i)
        h = layer.forward(h)

    pred = net.forward(x)
    net.backward(loss.gradient(pred, target))
    grads = {key: g.copy() for key, _, g in net.parameters()}

    def f():
        return loss(net.forward(x), target)

    # Some gradients are exactly 0 (a bias just before a batch norm: the normalisation removes
    # it). Finite differences of the loss resolve nothing below ~10 eps_machine |loss| / eps,
    # so a gradient is judged relative to that resolution when it is smaller.
    floor = max(1e-8, 10 * np.finfo(np.float64).eps * max(abs(f()), 1.0) / eps / TOLERANCE)
    for key, p, _ in net.parameters():
        idx = _entries(p.size, max_entries, rng)
        results.append(compare(-1, "network", key, grads[key].reshape(-1)[idx],
                               *_differences(f, p, idx, eps), floor=floor))
    return results


def fix_masks(layers) -> None:
    """Dropout draws a new mask on every forward pass; a finite difference needs the same
    mask on both sides, so each dropout layer keeps the mask it draws next (``fix_mask``)."""
    for layer in layers:
        if hasattr(layer, "fix_mask"):
            layer.fix_mask = True


def move_off_kinks(net, x: np.ndarray, rng, scale: float | None = None) -> np.ndarray:
    """Finite differences are meaningful only where the network is differentiable. Real images
    have flat regions (MNIST's zero background) that put many ReLU inputs exactly at 0 (zero-
    initialised biases) and many max-pool windows in ties. A small random offset on the inputs
    and on every bias moves the check point off those kinks without changing the formulas being
    checked. Returns the jittered input; the biases are changed in place. ``scale``: JITTER
    when None."""
    scale = JITTER if scale is None else scale
    for key, p, _ in net.parameters():
        if key.endswith(".b"):
            p += rng.normal(0.0, scale, p.shape)
    return x + rng.uniform(-scale, scale, x.shape)


class BatchTooSmall(ConfigError):
    """A batch of one sample, where a batch norm layer is checked in train mode."""

    def __init__(self, batch: int):
        self.batch = batch
        super().__init__(f"batch {batch}: batch_norm is checked in train mode, where a batch of "
                         "one sample has no variance; use a batch of 2 or more")


def check_config(cfg: dict, batch: int = 4, impl: str = "fast", max_entries: int | None = 200,
                 offline: bool = False) -> tuple[list[CheckResult], int]:
    """``cnn gradcheck``: the network of resolved config ``cfg`` built in float64 with conv
    implementation ``impl`` (initialised, and its dropout masks drawn, from the training's seed
    streams), checked by ``check_network`` on ``batch`` training samples drawn at random from
    its dataset (``offline``: never downloaded), inputs and biases moved off kinks. Returns the
    results and the number of samples checked. Raises BatchTooSmall for a batch of one with
    batch norm."""
    from cnncli.data import load_dataset, one_hot
    from cnncli.network import build_network
    from cnncli.seeds import rng_stream
    from cnncli.train import make_loss

    ds = load_dataset(cfg["data"], cfg["seed"], offline)
    net = build_network(cfg["network"], ds.input_shape, rng_stream(cfg["seed"], "init"),
                        np.float64, impl=impl)
    net.set_rng(rng_stream(cfg["seed"], "noise"))  # dropout masks: training's stream
    if batch < 2 and any(layer.type_name == "batch_norm" for layer in net.layers):
        raise BatchTooSmall(batch)
    rng = np.random.default_rng(cfg["seed"])
    picked = np.sort(rng.choice(len(ds.y_train), min(batch, len(ds.y_train)), replace=False))
    x = ds.images(ds.x_train[picked], np.float64)
    y = one_hot(ds.y_train[picked], ds.n_classes, np.float64)
    x = move_off_kinks(net, x, rng)
    results = check_network(net, make_loss(cfg["training"], net, ds), x, y, rng, max_entries=max_entries)
    return results, len(x)
