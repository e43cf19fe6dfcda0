"""Loss functions: a scalar for a batch, and its exact gradient with respect to the prediction."""

from __future__ import annotations

import numpy as np


class MSELoss:
    """Mean squared error over every element: ``mean((pred - target)**2)``.

    Shape:
        pred, target: (N, K); target one-hot for classification
    """

    name = "mse"

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        diff = pred - target
        return float(np.vdot(diff, diff) / diff.size)

    def gradient(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """d loss / d pred = 2 * (pred - target) / pred.size"""
        grad = pred - target
        grad *= 2.0 / grad.size
        return grad


class CrossEntropyLoss:
    """Mean negative log-likelihood of the target class over the batch.

    ``from_logits=True`` (the network ends in a linear layer): softmax and the log-likelihood
    are fused as ``logsumexp(z) - z[target]``, stable for logits of any size, with gradient
    ``(softmax(z) - target) / N``. ``from_logits=False`` (the network ends in a softmax layer):
    ``-log(p[target])``, with p clipped away from 0.

    Shape:
        pred, target: (N, K); target one-hot (or any rows of class probabilities)
    """

    name = "cross_entropy"

    def __init__(self, from_logits: bool = True):
        self.from_logits = from_logits

    def __call__(self, pred, target) -> float:
        n = pred.shape[0]
        if self.from_logits:
            z = pred - pred.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        else:
            log_p = np.log(np.clip(pred, np.finfo(pred.dtype).tiny, None))
        return float(-(target * log_p).sum() / n)

    def gradient(self, pred, target):
        n = pred.shape[0]
        if self.from_logits:
            z = pred - pred.max(axis=1, keepdims=True)
            e = np.exp(z)
            grad = e / e.sum(axis=1, keepdims=True)
            grad -= target
            grad /= n
            return grad
        return -target / (np.clip(pred, np.finfo(pred.dtype).tiny, None) * n)
