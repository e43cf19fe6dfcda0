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


def write_shapes_npz(out, n: int, noise: float, test_size: float, seed: int):
    """``cnn generate-shapes``: the shapes dataset of ``seed`` (as a config's ``data: {name:
    shapes}`` with these values gives it, not stratified) written atomically to the .npz ``out``,
    with x_train, y_train, x_test, y_test and class_names. Returns the Dataset; a DataError when
    the file cannot be written."""
    from cnncli.atomic import atomic_file
    from cnncli.data import load_dataset
    from cnncli.errors import DataError

    ds = load_dataset({"name": "shapes", "n": n, "noise": noise, "test_size": test_size,
                       "stratify": False, "limit": None}, seed)
    try:
        with atomic_file(out) as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test, class_names=np.array(ds.class_names))
    except OSError as exc:
        raise DataError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return ds
