"""An exponential moving average of a network's weights (``training.ema``), for evaluation.

After every optimizer step, each parameter the optimizer trains and each buffer (batch norm's
running statistics) of a layer not frozen (``training.freeze``) moves toward the network's:
``avg = d * avg + (1 - d) * p``, with ``d = min(decay, (1 + t) / (10 + t))`` and t the number of updates before this one (TensorFlow's
``ExponentialMovingAverage(decay, num_updates=t)`` rule: early on, when the average would
still be mostly the random initial weights, it follows the network closely). The average
starts as a copy of the initial weights (after ``training.init_from``); a frozen layer's arrays
never change, so the average keeps them exactly. The test metrics of every epoch, ``best.npz``'s
choice, and everything that loads a checkpoint for inference (``cnn eval``, ``predict``,
``export``) use the average; training itself and ``--resume`` continue from the network's own
weights, and the average's arrays and t are in every checkpoint, so resuming is bit-exact.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

PREFIX = "ema."  # checkpoint keys: ema.layers.<i>.<name>


class EMA:
    """The average of ``net``'s state: ``state`` maps ``layers.<i>.<name>`` to arrays of the
    network's shapes and dtypes; ``updates`` counts the updates made."""

    def __init__(self, decay: float, net, trainable=None):
        """``trainable``: what the optimizer steps (``net`` itself, or a
        ``cnncli.finetune.Trainable`` leaving frozen layers out); only its parameters and the
        buffers of the layers it trains are averaged."""
        self.decay = float(decay)
        self.updates = 0
        self.state = net.state_dict()  # copies
        trained = [key for key, _, _ in (trainable or net).parameters()]
        frozen = tuple(f"layers.{i}." for i in getattr(trainable, "frozen", ()))
        self.keys = trained + [key for key in net.buffers if not key.startswith(frozen)]

    def factor(self) -> float:
        """d for the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, net) -> None:
        """avg = d * avg + (1 - d) * p for every trained parameter and floating-point buffer
        (others are copied), in place; frozen layers' arrays are left as they are."""
        d = self.factor()
        live = {**net.params, **net.buffers}
        for key in self.keys:
            p, avg = live[key], self.state[key]
            if avg.dtype.kind != "f":
                np.copyto(avg, p)
                continue
            avg *= avg.dtype.type(d)
            avg += avg.dtype.type(1 - d) * p
        self.updates += 1

    @contextmanager
    def applied(self, net):
        """Within the block, ``net`` holds the average; its own weights come back after,
        exactly."""
        live = net.state_dict()
        net.load_state_dict(self.state)
        try:
            yield net
        finally:
            net.load_state_dict(live)

    def arrays(self) -> dict[str, np.ndarray]:
        return {PREFIX + k: v.copy() for k, v in self.state.items()}

    def load(self, arrays: dict[str, np.ndarray], updates: int) -> None:
        """Restore from a checkpoint's ``ema.*`` arrays (missing ones keep their value: a
        checkpoint from a run without an average restarts it from the network's weights)."""
        for k in self.state:
            if PREFIX + k in arrays:
                self.state[k] = np.array(arrays[PREFIX + k], dtype=self.state[k].dtype)
        self.updates = int(updates)
