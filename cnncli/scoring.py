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


def scores(net, x_stored: np.ndarray, meta: dict, batch_size: int = 250) -> np.ndarray:
    """The scores of ``net`` (in eval mode; its mode is restored) for images as the dataset
    stores them (e.g. 0-255 for MNIST): each batch is cast to the model's dtype and multiplied
    by ``meta["input_scale"]``, as in training.

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
            outs.append(outputs_to_scores(net.forward(xb), rule))
    n_out = net.output_shape[0] if net.input_shape is not None else 0
    return np.concatenate(outs) if outs else np.zeros((0, n_out), dtype=dtype)


def _dtype(net) -> np.dtype:
    """The dtype of the network's parameters (float64 when it has none)."""
    return next((p.dtype for p in net.params.values()), np.dtype(np.float64))
