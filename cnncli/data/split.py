"""Train/test split from a seeded generator (no global random state)."""

from __future__ import annotations

import numpy as np


def train_test_indices(n: int, test_size: float, rng: np.random.Generator,
                       labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled indices for a split with ``ceil(test_size * n)`` test samples (as scikit-learn).

    With ``labels``, the split is stratified: each class is split in the same proportion.
    """
    n_test = int(np.ceil(test_size * n))
    if labels is None:
        perm = rng.permutation(n)
        return perm[n_test:], perm[:n_test]
    test = []
    classes = np.unique(labels)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(len(members) * test_size))])
    test = np.concatenate(test)
    train = np.setdiff1d(np.arange(n), test)
    return rng.permutation(train), rng.permutation(test)
