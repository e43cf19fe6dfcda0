"""A model's scores: one number per class that sums to 1, defined once for `cnn eval`, prediction
and the ONNX export (whose output is exactly these).

How a network's outputs become scores depends on its last layer:

- ``softmax``: the outputs are already probabilities;
- ``sigmoid``: the outputs divided by their sum (each is in (0, 1)); the smallest normal number
  of the dtype is added to each output first, so that outputs that all underflow to 0 give
  equal scores, not 0 / 0 (it changes no other score by a representable amount that matters:
  1e-38 in float32);
- anything else (logits of a dense layer trained with cross-entropy, or any other final layer):
  a softmax of the outputs.
"""

from __future__ import annotations

import numpy as np

from cnncli.modes import eval_mode

SCORE_RULES = {"softmax": "identity", "sigmoid": "normalise"}  # any other last layer: "softmax"


def score_rule(net) -> str:
    """How ``net``'s outputs become scores: "identity", "normalise" or "softmax"."""
    return SCORE_RULES.get(net.layers[-1].type_name, "softmax")


def outputs_to_scores(out: np.ndarray, rule: str) -> np.ndarray:
    """out: (N, K) network outputs -> (N, K) scores, rows summing to 1."""
    if rule == "identity":
        return out
    if rule == "normalise":
        out = out + np.finfo(out.dtype).tiny
        return out / out.sum(axis=1, keepdims=True)
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def scores(net, x_stored: np.ndarray, meta: dict, batch_size: int = 250,
           tta: str | None = None) -> np.ndarray:
    """The scores of ``net`` (in eval mode; its mode is restored) for images as the dataset
    stores them (e.g. 0-255 for MNIST): each batch is cast to the model's dtype and multiplied
    by ``meta["input_scale"]``, as in training. ``tta``: the mean scores of the views of
    ``cnncli.tta`` (``flip``, ``flip_shift``) instead.

    x_stored: (N, C, H, W) -> (N, n_classes)
    """
    from cnncli.checkpoint import input_description

    info = input_description("the checkpoint", meta, ("input_scale",))
    dtype = np.dtype(meta["dtype"]) if "dtype" in meta else _dtype(net)
    scale = np.asarray(info["input_scale"], dtype=dtype)
    rule = score_rule(net)
    outs = []
    # an overflow (a huge input or input_scale) gives non-finite scores, which the caller
    # reports in one line; library code never prints NumPy's RuntimeWarnings
    with eval_mode(net), np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, len(x_stored), batch_size):
            xb = np.asarray(x_stored[i:i + batch_size]).astype(dtype, copy=False)
            if info["input_scale"] != 1.0:
                xb = xb * scale
            if tta:
                outs.append(tta_scores(net, xb, tta, rule))
            else:
                outs.append(outputs_to_scores(net.forward(xb), rule))
    n_out = net.output_shape[0] if net.input_shape is not None else 0
    return np.concatenate(outs) if outs else np.zeros((0, n_out), dtype=dtype)


def tta_scores(net, x: np.ndarray, mode: str, rule: str | None = None,
               first: np.ndarray | None = None) -> np.ndarray:
    """The mean of ``net``'s scores over the views of ``x`` (inputs as the network takes them).

    x: (N, C, H, W) -> (N, K). ``rule``: how outputs become scores (default: ``net``'s own);
    ``first``: the outputs for x itself when already computed (saves one pass).
    """
    from cnncli.tta import views

    rule = rule or score_rule(net)
    total = None
    vs = views(x, mode)
    for i, v in enumerate(vs):
        out = first if (i == 0 and first is not None) else net.forward(np.ascontiguousarray(v))
        s = outputs_to_scores(out, rule)
        total = s.astype(np.float64) if total is None else total + s
    return (total / len(vs)).astype(x.dtype, copy=False)


def _dtype(net) -> np.dtype:
    """The dtype of the network's parameters (float64 when it has none)."""
    return next((p.dtype for p in net.params.values()), np.dtype(np.float64))
