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
