"""Optimizers: they update a network's parameters in place from the gradients of its last
backward (``Network.parameters()`` yields each parameter with its gradient)."""

from __future__ import annotations

import numpy as np

from cnncli.blas import applied, axpy


class SGD:
    """Stochastic gradient descent, optionally with momentum (PyTorch's convention).

    Plain: ``p -= lr * g``. With momentum mu: ``v = mu * v + g``, then ``p -= lr * v``
    (Nesterov: ``p -= lr * (g + mu * v)``). ``weight_decay`` adds ``wd * p`` to g first.
    Each update of p is one in-place pass over it (BLAS axpy: ``p += (-lr) * d``).
    """

    name = "sgd"

    def __init__(self, learning_rate=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity: dict[str, np.ndarray] = {}
        self._buf: dict[str, np.ndarray] = {}

    @applied
    def step(self, network) -> None:
        """Update every parameter of ``network`` in place from its gradient."""
        lr, mu, wd = self.learning_rate, self.momentum, self.weight_decay
        for key, p, g in network.parameters():
            if wd:
                buf = self._scratch(key, p)
                np.multiply(p, wd, out=buf)
                buf += g
                g = buf  # g + wd * p
            if mu:
                v = self.velocity.get(key)
                if v is None:
                    v = self.velocity[key] = np.zeros_like(p)
                v *= mu
                v += g
                if self.nesterov:
                    d = g if wd else self._copy(key, g)  # g in a scratch array
                    axpy(mu, v, d)  # g + mu * v
                    g = d
                else:
                    g = v
            axpy(-lr, g, p)

    def _scratch(self, key, p):
        buf = self._buf.get(key)
        if buf is None:
            buf = self._buf[key] = np.empty_like(p)
        return buf

    def _copy(self, key, g):
        buf = self._scratch(key, g)
        np.copyto(buf, g)
        return buf

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity.{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.velocity = {k[len("velocity."):]: np.array(v) for k, v in state.items()
                         if k.startswith("velocity.")}


class Adam:
    """Adam with bias correction (Kingma and Ba): ``p -= lr * m_hat / (sqrt(v_hat) + eps)``.

    ``weight_decay`` adds ``wd * p`` to the gradient (L2, as ``torch.optim.Adam``).
    """

    name = "adam"

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.learning_rate = float(learning_rate)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    @applied
    def step(self, network) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for key, p, g in network.parameters():
            if self.weight_decay:
                g = g + self.weight_decay * p
            if key not in self.m:
                self.m[key] = np.zeros_like(p)
                self.v[key] = np.zeros_like(p)
            m, v = self.m[key], self.v[key]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = np.sqrt(v / c2)
            denom += self.eps
            p -= (self.learning_rate / c1) * m / denom

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"t": np.array(self.t)}
        state.update({f"m.{k}": a for k, a in self.m.items()})
        state.update({f"v.{k}": a for k, a in self.v.items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state.get("t", 0))
        self.m = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("m.")}
        self.v = {k[2:]: np.array(a) for k, a in state.items() if k.startswith("v.")}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
