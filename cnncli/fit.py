"""The epoch loop of ``cnn train`` and of every sweep trial: train an epoch, save it in the run
directory (``cnncli.run``), refresh its curves.png (``cnncli.plots``)."""

from __future__ import annotations

import numpy as np

from cnncli.plots import plot_run_curves
from cnncli.run import RunDir, run_meta


def train_epochs(trainer, run: RunDir, config_name: str, run_epoch=None, on_epoch=None,
                 cfg: dict | None = None) -> None:
    """Train until the planned epoch count (or early stopping), saving each epoch through
    ``run.save_epoch`` and refreshing curves.png. The loop ``cnn train`` and every sweep trial run.

    ``run_epoch(trainer) -> row`` trains one epoch (default ``trainer.train_epoch()``);
    ``on_epoch(row)`` is called after the epoch is saved (an exception there stops training,
    the epoch kept). ``cfg``: the config the checkpoints record (default ``trainer.cfg``).
    Raises what the trainer raises (``Interrupted``, ``TrainingError``).
    """
    meta = run_meta(cfg if cfg is not None else trainer.cfg, config_name)
    # A diverging run overflows on its way to the non-finite loss that stops it: no warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while trainer.epoch < trainer.epochs and not trainer.should_stop_early():
            row = run_epoch(trainer) if run_epoch is not None else trainer.train_epoch()
            is_best = trainer.best["epoch"] == row["epoch"]
            run.save_epoch(trainer, meta, is_best)
            plot_run_curves(run.path, config_name)
            if on_epoch is not None:
                on_epoch(row)
