"""Classification metrics."""

from __future__ import annotations

import numpy as np

# The columns of a run's metrics.csv and of each checkpoint's meta["metrics"], in order.
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                  "learning_rate"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted ones."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def per_class_accuracy(cm: np.ndarray) -> list[float | None]:
    """Each class's accuracy (recall) from a confusion matrix: its diagonal count over its row
    total; None for a class with no sample."""
    totals = cm.sum(axis=1)
    return [float(cm[i, i] / totals[i]) if totals[i] else None for i in range(len(cm))]


def precision_recall_f1(y, predictions, n_classes: int) -> dict:
    """Per-class precision, recall and F1 (scikit-learn's, label order; None where undefined:
    no sample predicted as the class for precision, none of it for recall, neither for F1) and
    their macro means over the classes where each is defined."""
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        p, r, f, support = precision_recall_fscore_support(y, predictions, labels=labels,
                                                           zero_division=0)
    predicted = [int((predictions == k).sum()) for k in labels]
    out = {"precision": [float(p[k]) if predicted[k] else None for k in labels],
           "recall": [float(r[k]) if support[k] else None for k in labels],
           "f1": [float(f[k]) if predicted[k] or support[k] else None for k in labels]}
    for key in ("precision", "recall", "f1"):
        vals = [v for v in out[key] if v is not None]
        out[f"macro_{key}"] = float(sum(vals) / len(vals)) if vals else 0.0
    return out
