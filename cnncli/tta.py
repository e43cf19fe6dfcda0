"""Test-time augmentation: a model's scores averaged over views of each image.

Modes:
    ``flip``: the image and its horizontal mirror (2 views);
    ``flip_shift``: those two, each also shifted by one pixel down-right and by one pixel
    up-left (zero fill), 6 views.
The scores of the views (``cnncli.scoring.tta_scores``: per-class probabilities) are averaged
with equal weights; the prediction is the class of the highest mean score. A mirror image
must still show the same class for this to help (CIFAR-10, Fashion-MNIST: yes; digits and text: no).
"""

from __future__ import annotations

import numpy as np

TTA_MODES = ("flip", "flip_shift")


def describe(mode: str | None) -> str:
    """A phrase for every output that uses TTA."""
    if not mode:
        return "no test-time augmentation"
    if mode == "flip":
        return "TTA flip: the mean score of each image and its horizontal mirror"
    return ("TTA flip_shift: the mean score of each image and its horizontal mirror, each also "
            "shifted by 1 pixel both ways (6 views)")


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """x: (N, C, H, W) moved by (dy, dx) pixels, zero fill."""
    out = np.zeros_like(x)
    h, w = x.shape[2:]
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def views(x: np.ndarray, mode: str) -> list[np.ndarray]:
    """x: (N, C, H, W) -> the views of ``mode``, each (N, C, H, W); the first is x itself."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; one of {', '.join(TTA_MODES)}")
    flipped = x[..., ::-1]
    out = [x, flipped]
    if mode == "flip_shift":
        out += [_shift(v, d, d) for d in (1, -1) for v in (x, flipped)]
    return out

