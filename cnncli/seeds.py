"""The random streams of a run. Each draws from its own generator, seeded with the run's seed
and the stream's number, so that one stream's use never shifts another's: the same seed gives
the same data, weights, batches, augmentations and dropout masks, bit for bit."""

from __future__ import annotations

import numpy as np

STREAMS = {"data": 0, "init": 1, "shuffle": 2, "augment": 3, "noise": 4}
"""Stream numbers (never renumber one: every stored run's results depend on them). ``data``:
generated datasets, splits and subsets; ``init``: weight initialisation; ``shuffle``: batch
order; ``augment``: augmentation; ``noise``: dropout masks."""


def rng_stream(seed: int, name: str) -> np.random.Generator:
    """The generator of stream ``name`` (a key of STREAMS) for ``seed``."""
    return np.random.default_rng([seed, STREAMS[name]])
