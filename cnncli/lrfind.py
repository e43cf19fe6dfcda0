"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): a short run over
exponentially growing rates, from a copy of the config's initial weights, recording the loss.

Nothing of a run is touched: the network, optimizer and random streams are built fresh from
the config (as ``cnn train`` would start) and thrown away afterwards. Nothing here prints.

The suggestion is **a suggestion**, made by one stated rule (``SUGGESTION_RULE``): the rate at
the minimum of the smoothed loss, divided by 10. Rates near the minimum already train
unstably; a tenth of it is the classic rule of thumb (fastai's ``lr_min``). Range tests are
noisy: a suggestion from a run that never showed a clear dip says so (``note``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SUGGESTION_RULE = "the rate at the minimum of the smoothed loss, divided by 10"
SMOOTHING = 0.98  # exponential moving average of the batch losses, bias-corrected (fastai's)
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRFindResult:
    """rates, losses (raw), smoothed: (steps_done,) each; ``suggestion`` per SUGGESTION_RULE."""

    rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float | None
    min_rate: float | None
    stopped: str  # why the run ended
    notes: list[str] = field(default_factory=list)


def rate_at(step: int, steps: int, start: float, end: float) -> float:
    """Exponentially growing: start at step 0, end at step ``steps - 1``."""
    return start * (end / start) ** (step / max(steps - 1, 1))


def lr_find(cfg: dict, start: float = 1e-7, end: float = 10.0, steps: int = 100,
            data=None, on_step=None) -> LRFindResult:
    """Train ``steps`` batches of ``cfg`` (a resolved config), batch i at ``rate_at(i)``, from
    the initial weights of ``cfg``'s seed; returns the losses. Batches are drawn as training
    draws them (shuffled, augmented), starting a new epoch when one is used up. ``data``: an
    already loaded Dataset (else the config's is loaded)."""
    from cnncli.data.augment import augment
    from cnncli.train import Trainer, blas_threads

    trainer = Trainer(cfg, data)
    t = cfg["training"]
    with blas_threads(t.get("threads")):
        return _run(trainer, t, start, end, steps, augment, on_step)


def _run(trainer, t, start, end, steps, augment, on_step) -> LRFindResult:
    x, y = trainer.data.x_train, trainer.data.y_train
    bs = t["batch_size"]
    targets = np.eye(trainer.data.n_classes, dtype=trainer.dtype)
    sizes = trainer.batch_sizes()
    order, b = None, len(sizes)
    rates, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, f"all {steps} steps done"
    trainer.net.train()
    for k in trainer.frozen:  # frozen layers (training.freeze): eval mode, as in training
        trainer.net.layers[k].training = False
    for i in range(steps):
        if b >= len(sizes):  # a new epoch
            order = trainer.shuffle_rng.permutation(len(y)) if t["shuffle"] else np.arange(len(y))
            b = 0
        idx = order[b * bs:b * bs + sizes[b]]
        b += 1
        xb = x[idx]
        if trainer.augment is not None:
            xb = augment(xb, trainer.augment_rng, trainer.augment)
        xb = trainer.data.images(xb, trainer.dtype)
        target = targets[y[idx]]
        lr = rate_at(i, steps, start, end)
        trainer.optimizer.learning_rate = lr
        out = trainer.net.forward(xb)
        loss = trainer.loss(out, target)
        if not math.isfinite(loss):
            stopped = f"the loss became {loss} at step {i + 1} (rate {lr:.3g})"
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        s = avg / (1 - SMOOTHING ** (i + 1))
        rates.append(lr)
        losses.append(loss)
        smoothed.append(s)
        if on_step is not None:
            on_step(i + 1, steps)
        if s > DIVERGE * best:
            stopped = (f"the smoothed loss passed {DIVERGE:g}x its minimum at step {i + 1} "
                       f"(rate {lr:.3g})")
            break
        best = min(best, s)
        trainer.net.backward(trainer.loss.gradient(out, target))
        trainer.optimizer.step(trainer._trainable)  # frozen layers stay unchanged
    return _result(np.array(rates), np.array(losses), np.array(smoothed), stopped)


def _result(rates, losses, smoothed, stopped) -> LRFindResult:
    notes = []
    if len(rates) < 5:
        return LRFindResult(rates, losses, smoothed, None, None, stopped,
                            ["too few steps finished to suggest a rate; start lower"])
    i = int(np.argmin(smoothed))
    min_rate = float(rates[i])
    if i == len(rates) - 1:
        notes.append("the loss was still falling at the last rate tried: try a larger end rate")
    if smoothed[i] > 0.9 * smoothed[0]:
        notes.append("the loss never fell by 10% or more: no clear dip, so treat the suggestion "
                     "with extra care (more steps or another range may help)")
    return LRFindResult(rates, losses, smoothed, min_rate / 10, min_rate, stopped, notes)


def plot_lr_find(path, result: LRFindResult, title: str):
    """Loss (raw and smoothed) against the rate on a log axis, the minimum and the suggestion
    marked and labelled. Written atomically; returns the path."""
    from cnncli.plots import new_figure, save_figure

    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    if len(result.rates):
        ax.plot(result.rates, result.losses, color="0.75", lw=0.8, label="batch loss")
        ax.plot(result.rates, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
        lo = float(np.min(result.smoothed))
        hi = float(np.max(result.smoothed[: max(1, int(np.argmin(result.smoothed)) + 1)]))
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-12), hi + 0.4 * (hi - lo + 1e-12))
    if result.min_rate is not None:
        ax.axvline(result.min_rate, color="C3", ls=":", lw=1.2,
                   label=f"minimum of the smoothed loss: {result.min_rate:.3g}")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C2", ls="--", lw=1.5,
                   label=f"suggested rate {result.suggestion:.3g} (a suggestion: minimum / 10)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # plain text, no mathtext
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.25)
    return save_figure(fig, path)
