"""Augmentation of training batches: random crop after zero padding, random shift, random
horizontal flip (``data.augment: {crop_padding: P, shift: K, flip: horizontal}``).

Applied in that order, to the training batch only, on the stored images (before scaling).
Each sample of each batch gets its own draws, from a Generator that flows from the config's
seed (stream 3), so runs are deterministic and ``--resume`` (which restores the Generator)
is bit-exact. Everything is vectorised over the batch: no Python loop over samples.

``crop_padding: P`` (torchvision's ``RandomCrop(size, padding=P)``): pad by P zeros on every
side, then crop the original H x W at an offset drawn from [0, 2P] in each direction.
``shift: K`` (Keras' ``RandomTranslation`` in pixels, zero fill): move the image by dy, dx
drawn from [-K, K]. With zero fill, the two are the same transformation (offset = K - shift);
both are offered under the names users know, and they add up when both are set.
``flip: horizontal``: mirror left-right with probability 1/2.
"""

from __future__ import annotations

import numpy as np

from cnncli.schema import Field, SchemaError, choice, integer, optional, validate_section

FIELDS = {
    "crop_padding": Field(0, integer(0, 1024)),
    "shift": Field(0, integer(0, 1024)),
    "flip": Field(None, optional(choice("horizontal"))),
}


def check_spec(v) -> dict | None:
    """Validate ``data.augment``; returns it with defaults filled in (None stays None)."""
    if v is None:
        return None
    problems: list[str] = []
    out = validate_section("augment", v, FIELDS, problems)
    if problems:
        raise SchemaError("; ".join(p[len("augment."):] if p.startswith("augment.") else
                                    p.replace("augment: ", "", 1) for p in problems))
    return out


def is_active(spec: dict | None) -> bool:
    return bool(spec) and bool(spec["crop_padding"] or spec["shift"] or spec["flip"])


def draw(rng: np.random.Generator, n: int, spec: dict) -> dict[str, np.ndarray]:
    """The random choices for a batch of ``n`` samples, in a fixed order (crop, shift, flip;
    only the options that are on draw anything).

    Returns:
        crop:  (n, 2) offsets (dy, dx) in [0, 2P]            when crop_padding P > 0
        shift: (n, 2) translations (dy, dx) in [-K, K]       when shift K > 0
        flip:  (n,) bool                                     when flip is horizontal
    """
    out = {}
    p, k = spec["crop_padding"], spec["shift"]
    if p:
        out["crop"] = rng.integers(0, 2 * p + 1, size=(n, 2))
    if k:
        out["shift"] = rng.integers(-k, k + 1, size=(n, 2))
    if spec["flip"] == "horizontal":
        out["flip"] = rng.random(n) < 0.5
    return out


def apply(x: np.ndarray, draws: dict[str, np.ndarray], spec: dict) -> np.ndarray:
    """x: (N, C, H, W) -> a new (N, C, H, W) array of the same dtype, transformed by ``draws``."""
    fresh = False  # True once x is a new array of our own
    if "crop" in draws:
        x, fresh = _window(x, spec["crop_padding"], draws["crop"]), True
    if "shift" in draws:
        k = spec["shift"]
        x, fresh = _window(x, k, k - draws["shift"]), True  # out[y] = x[y - dy] = padded[y - dy + K]
    if "flip" in draws:
        x = x if fresh else x.copy()
        f = draws["flip"]
        x[f] = x[f][..., ::-1]
    return x


def _window(x: np.ndarray, pad: int, offsets: np.ndarray) -> np.ndarray:
    """Zero-pad x: (N, C, H, W) by ``pad`` on every side and take, for sample i, the H x W
    window whose top-left corner is ``offsets[i]`` (dy, dx) in the padded image."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    # windows: (N, C, 2P+1, 2P+1, H, W); one (dy, dx) per sample -> (N, C, H, W)
    return windows[np.arange(n), :, offsets[:, 0], offsets[:, 1]]


def augment(x: np.ndarray, rng: np.random.Generator, spec: dict) -> np.ndarray:
    """Draw and apply: x: (N, C, H, W) -> (N, C, H, W), a new array (x is left as it is)."""
    if not is_active(spec):
        return x
    return apply(x, draw(rng, len(x), spec), spec)
