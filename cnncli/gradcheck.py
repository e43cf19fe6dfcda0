"""Central finite-difference checks of every backward pass, in float64.

For a layer and a random upstream gradient ``dout``, the scalar ``f = sum(forward(x) * dout)``
has ``df/dx = backward(dout)`` and ``df/dW = grads["W"]``; each is compared with
``(f(v + eps) - f(v - eps)) / (2 eps)`` entry by entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6


@dataclass
class CheckResult:
    layer: int  # index in the network (-1 for the whole network)
    type: str
    name: str  # "x" (input gradient) or a parameter name
    max_rel_error: float
    checked: int  # entries compared

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= TOLERANCE


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = 1e-8) -> float:
    """max |a - n| over the entries, relative to the largest magnitude of either (or
    ``floor``, when both are smaller)."""
    scale = max(float(np.max(np.abs(analytic), initial=0.0)),
                float(np.max(np.abs(numeric), initial=0.0)), floor)
    return float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale


def _numeric(f, v: np.ndarray, index: np.ndarray, eps: float) -> np.ndarray:
    flat = v.reshape(-1)  # a view: v is contiguous
    out = np.empty(len(index))
    for k, i in enumerate(index):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        out[k] = (plus - minus) / (2 * eps)
    return out


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

    results = []
    idx = _entries(x.size, max_entries, rng)
    numeric = _numeric(f, x, idx, eps)
    results.append(CheckResult(index, layer.type_name, "x",
                               relative_error(dx.reshape(-1)[idx], numeric), len(idx)))
    for name, p in layer.params.items():
        idx = _entries(p.size, max_entries, rng)
        numeric = _numeric(f, p, idx, eps)
        results.append(CheckResult(index, layer.type_name, name,
                                   relative_error(grads[name].reshape(-1)[idx], numeric), len(idx)))
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
        # input by far more than eps so that its check does not sit on a tie.
        nudged = h + rng.uniform(-1e-3, 1e-3, h.shape)
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
        numeric = _numeric(f, p, idx, eps)
        results.append(CheckResult(-1, "network", key,
                                   relative_error(grads[key].reshape(-1)[idx], numeric, floor),
                                   len(idx)))
    return results


def fix_masks(layers) -> None:
    """Dropout draws a new mask on every forward pass; a finite difference needs the same
    mask on both sides, so each dropout layer keeps the mask it draws next (``fix_mask``)."""
    for layer in layers:
        if hasattr(layer, "fix_mask"):
            layer.fix_mask = True


def move_off_kinks(net, x: np.ndarray, rng, scale: float = 1e-2) -> np.ndarray:
    """Finite differences are meaningful only where the network is differentiable. Real images
    have flat regions (MNIST's zero background) that put many ReLU inputs exactly at 0 (zero-
    initialised biases) and many max-pool windows in ties. A small random offset on the inputs
    and on every bias moves the check point off those kinks without changing the formulas being
    checked. Returns the jittered input; the biases are changed in place."""
    for key, p, _ in net.parameters():
        if key.endswith(".b"):
            p += rng.normal(0.0, scale, p.shape)
    return x + rng.uniform(-scale, scale, x.shape)
