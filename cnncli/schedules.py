"""Learning-rate schedules, per batch.

Every batch's rate is ``main(step) * warmup(step)``, where ``step`` counts batches from 0 over
the whole run (``(epoch - 1) * n_batches + batch``):

- ``main`` is the configured schedule. ``constant``, ``step`` and ``cosine`` with ``interval:
  epoch`` (the default) change once per epoch and give the rates of
  ``cnncli.train.learning_rate_at``; ``cosine`` with ``interval: step`` is PyTorch's
  ``CosineAnnealingLR(T_max=total_steps, eta_min=min_lr)`` stepped after every batch;
  ``onecycle`` is PyTorch's ``OneCycleLR(max_lr=learning_rate, total_steps, pct_start,
  div_factor, final_div_factor)`` with its cosine anneal (the rates only: momentum is not
  cycled).
- ``warmup`` is PyTorch's ``LinearLR(start_factor=warmup_start_factor, end_factor=1,
  total_iters=W)`` stepped after every batch: the factor rises linearly from
  ``warmup_start_factor`` at step 0 to 1 at step W = round(warmup_epochs * n_batches), and stays
  1 after. It multiplies any schedule (``warmup_epochs`` may be fractional; 0 is off).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

WARMUP_KEYS = ("warmup_epochs", "warmup_start_factor")


def warmup_steps(sched: dict, n_batches: int) -> int:
    """W: the batches of the warm-up (``warmup_epochs`` of ``n_batches`` each, rounded)."""
    return int(round(float(sched.get("warmup_epochs") or 0.0) * n_batches))


def warmup_factor(sched: dict, step: int, n_batches: int) -> float:
    """The warm-up's factor at ``step`` (0-based): LinearLR's closed form."""
    w = warmup_steps(sched, n_batches)
    if w <= 0 or step >= w:
        return 1.0
    f0 = float(sched.get("warmup_start_factor", 0.01))
    return f0 + (1.0 - f0) * step / w


def onecycle_rate(max_lr: float, step: int, total_steps: int, pct_start: float = 0.3,
                  div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """PyTorch's OneCycleLR (two phases, cosine anneal) at ``step`` (0-based)."""
    initial = max_lr / div_factor
    minimum = initial / final_div_factor
    phases = [(float(pct_start * total_steps) - 1, initial, max_lr),
              (total_steps - 1, max_lr, minimum)]
    start_step = 0.0
    for i, (end_step, start_lr, end_lr) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            pct = (step - start_step) / (end_step - start_step) if end_step != start_step else 1.0
            return end_lr + (start_lr - end_lr) / 2.0 * (math.cos(math.pi * pct) + 1)
        start_step = end_step
    raise AssertionError("unreachable")


def main_rate(training: dict, epoch: int, batch: int, n_batches: int,
              per_epoch: Callable[[dict, int], float]) -> float:
    """The configured schedule's rate for ``batch`` (0-based) of ``epoch`` (1-based), before
    warm-up; ``per_epoch`` is ``learning_rate_at`` for the per-epoch schedules."""
    sched = training["schedule"] or {"name": "constant"}
    step = (epoch - 1) * n_batches + batch
    total = training["epochs"] * n_batches
    base = training["learning_rate"]
    if sched["name"] == "onecycle":
        return onecycle_rate(base, min(step, total), max(total, 1), sched["pct_start"],
                             sched["div_factor"], sched["final_div_factor"])
    if sched["name"] == "cosine" and sched.get("interval") == "step":
        lo = sched["min_lr"]
        return lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * step / max(total, 1)))
    return per_epoch(training, epoch)


def batch_rates(training: dict, epoch: int, n_batches: int,
                per_epoch: Callable[[dict, int], float]) -> np.ndarray:
    """(n_batches,) float64: the rate of each batch of ``epoch`` (1-based)."""
    sched = training["schedule"] or {"name": "constant"}
    out = np.empty(n_batches)
    for b in range(n_batches):
        step = (epoch - 1) * n_batches + b
        out[b] = main_rate(training, epoch, b, n_batches, per_epoch) * \
            warmup_factor(sched, step, n_batches)
    return out


def rates_over_run(training: dict, n_batches: int,
                   per_epoch: Callable[[dict, int], float]) -> np.ndarray:
    """(epochs * n_batches,) every batch's rate over the whole run (for plots and tests)."""
    return np.concatenate([batch_rates(training, e, n_batches, per_epoch)
                           for e in range(1, training["epochs"] + 1)])
