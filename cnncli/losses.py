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

    ``label_smoothing`` eps and ``class_weights`` w (K,) follow PyTorch's
    ``F.cross_entropy(..., weight=w, label_smoothing=eps)``: the target becomes
    ``(1 - eps) * onehot + eps / K``, each class's terms are weighted by w, and the batch mean
    divides by the sum of the weights of the batch's targets, ``sum_i w[y_i]`` (targets must then
    be one-hot).

    Shape:
        pred, target: (N, K); target one-hot (or any rows of class probabilities)
    """

    name = "cross_entropy"

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0,
                 class_weights=None):
        self.from_logits = from_logits
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else np.asarray(class_weights, float)

    @property
    def plain(self) -> bool:
        return not self.label_smoothing and self.class_weights is None

    def _log_p(self, pred):
        if self.from_logits:
            z = pred - pred.max(axis=1, keepdims=True)
            return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return np.log(np.clip(pred, np.finfo(pred.dtype).tiny, None))

    def _weighted_targets(self, target):
        """PyTorch's ``F.cross_entropy(z, y, weight=w, label_smoothing=eps)`` as a weighted
        sum: row i is ``(1 - eps) * w[y_i] * onehot(y_i) + (eps / K) * w`` and the loss is
        ``-sum_i r_i . log p_i / sum_i w[y_i]``. target: (N, K) one-hot -> (r (N, K), W)."""
        k = target.shape[1]
        w = np.ones(k) if self.class_weights is None else self.class_weights
        w = w.astype(target.dtype)
        per_sample = target @ w  # (N,): w[y_i] for one-hot rows
        eps = self.label_smoothing
        r = target * w * (1 - eps) if eps else target * w
        if eps:
            r += (eps / k) * w
        return r, per_sample.sum()

    def __call__(self, pred, target) -> float:
        if not self.plain:
            r, total = self._weighted_targets(target)
            return float(-(r * self._log_p(pred)).sum() / total)
        n = pred.shape[0]
        if self.from_logits:
            z = pred - pred.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        else:
            log_p = np.log(np.clip(pred, np.finfo(pred.dtype).tiny, None))
        return float(-(target * log_p).sum() / n)

    def gradient(self, pred, target):
        if not self.plain:  # d/dz of -r . log softmax(z) = sum(r) softmax(z) - r
            r, total = self._weighted_targets(target)
            if not self.from_logits:
                return -r / (np.clip(pred, np.finfo(pred.dtype).tiny, None) * total)
            z = pred - pred.max(axis=1, keepdims=True)
            e = np.exp(z)
            grad = e / e.sum(axis=1, keepdims=True)
            grad *= r.sum(axis=1, keepdims=True)
            grad -= r
            grad /= total
            return grad
        n = pred.shape[0]
        if self.from_logits:
            z = pred - pred.max(axis=1, keepdims=True)
            e = np.exp(z)
            grad = e / e.sum(axis=1, keepdims=True)
            grad -= target
            grad /= n
            return grad
        return -target / (np.clip(pred, np.finfo(pred.dtype).tiny, None) * n)


# ------------------------------------------------------------------ training.loss in a config
LOSS_NAMES = ("mse", "cross_entropy")


def loss_options(value) -> dict:
    """``training.loss`` as resolved (``"mse"``, ``"cross_entropy"`` or the mapping
    ``{name, label_smoothing, class_weights}``) -> that mapping with defaults filled."""
    if isinstance(value, str):
        return {"name": value, "label_smoothing": 0.0, "class_weights": None}
    return {"label_smoothing": 0.0, "class_weights": None, **value}


def resolve_class_weights(spec, y_train: np.ndarray, class_names: list[str]):
    """``loss.class_weights`` -> (K,) float64 weights, or None when unset.

    ``auto``: inverse class frequency normalised so the training samples' weights average 1,
    ``w_k = N / (K * n_k)`` (scikit-learn's ``balanced``), counted on the training split as
    loaded (after ``limit``). A list gives one weight per class in label order; a mapping
    ``{class name: w}`` gives the named classes theirs and every other class 1. Raises
    ConfigError (one line) for a class with no training samples under ``auto``, a list of the
    wrong length or an unknown class name."""
    from cnncli.errors import ConfigError

    where = "training.loss.class_weights"
    k = len(class_names)
    if spec is None:
        return None
    if spec == "auto":
        counts = np.bincount(y_train, minlength=k).astype(np.float64)
        if (counts == 0).any():
            i = int(np.argmin(counts))
            raise ConfigError(f"{where}: auto weighs each class by the inverse of its number of "
                              f"training samples, but class {class_names[i]!r} has none; give "
                              f"the weights as a list or mapping, or train on more samples")
        return len(y_train) / (k * counts)
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in class_names]
        if unknown:
            raise ConfigError(f"{where}: no class {unknown[0]!r} in the data (its classes: "
                              f"{', '.join(class_names)[:200]})")
        return np.array([float(spec.get(name, 1.0)) for name in class_names])
    if len(spec) != k:
        raise ConfigError(f"{where}: {len(spec)} weight(s) given, but the data has {k} classes "
                          f"(one weight per class, in label order: {', '.join(class_names)[:200]})")
    return np.array(spec, dtype=np.float64)
