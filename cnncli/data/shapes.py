"""The seed post's synthetic dataset: four 3x3 shapes plus uniform noise."""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ["v_line", "h_line", "cross", "diamond"]

TEMPLATES = np.array([
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],  # v_line
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],  # h_line
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],  # cross = clip(v_line + h_line, 0, 1)
    [[0, 1, 0], [1, 0, 1], [0, 1, 0]],  # diamond
], dtype=np.float64)


def make_shapes(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n samples: a uniformly chosen template plus noise drawn uniformly from [-noise, noise].

    Returns:
        x: (n, 1, 3, 3) float64
        y: (n,) int64 labels 0-3, in the order of CLASS_NAMES
    """
    y = rng.integers(0, len(TEMPLATES), size=n)
    x = TEMPLATES[y][:, None] + rng.uniform(-noise, noise, size=(n, 1, 3, 3))
    return x, y.astype(np.int64)
