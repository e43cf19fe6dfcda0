"""A loss that turns non-finite mid-run: training stops naming the epoch and batch and the last
good checkpoint, which stays finite and resumable to the result of a run that never saw the
fault; non-finite from the first batch says that no checkpoint was written."""

import numpy as np

from cnncli.checkpoint import load_checkpoint
from helpers import (COUNTS, SHAPES_NET, assert_cli_error, no_temporary_files, params, read_metrics,
                     same_run, shapes_raw, write_config)


def test_nan_mid_run_keeps_the_last_good_checkpoints(cnn, tmp_path, monkeypatch):
    """The learning rate jumps to 1e6 at epoch 3 (a fault injected into the schedule): training
    stops with the non-finite-loss message, naming the last good epoch; last.npz and best.npz
    hold epochs <= 2 with finite parameters, metrics.csv has 2 rows. --resume after the fault
    is gone continues to the result of a run that never saw it."""
    import cnncli.train as train_module

    linear = write_config(tmp_path / "linear.yaml", {**shapes_raw(), "network": SHAPES_NET[:-1]})
    normal = train_module.learning_rate_at
    monkeypatch.setattr(train_module, "learning_rate_at",
                        lambda t, epoch: 1e6 if epoch >= 3 else normal(t, epoch))
    run = tmp_path / "run"
    result = cnn("train", linear, "--run-dir", run, "--epochs", 6)
    COUNTS["faults"] += 1
    assert result.exit_code == 1
    line = assert_cli_error(result, "epoch 3, batch", "not finite", "lower learning rate",
                            f"{run / 'last.npz'} keeps epoch 2, the last good one")
    assert "1e+06" in line
    _, last = load_checkpoint(run / "last.npz")
    _, best = load_checkpoint(run / "best.npz")
    assert last["epoch"] == 2 and best["epoch"] <= 2
    for path in (run / "last.npz", run / "best.npz"):
        assert all(np.isfinite(v).all() for v in params(path).values())
    assert len(read_metrics(run)) == 2
    assert "keeps epoch 2" in (run / "train.log").read_text()
    no_temporary_files(run)

    monkeypatch.setattr(train_module, "learning_rate_at", normal)
    assert cnn("train", "--resume", run, "--quiet").exit_code == 0
    clean = tmp_path / "clean"
    assert cnn("train", linear, "--run-dir", clean, "--epochs", 6, "--quiet").exit_code == 0
    same_run(run, clean)

    assert_cli_error(cnn("train", linear, "--run-dir", tmp_path / "at-once", "--lr", "1e6"),
                     "epoch 1, batch", "no epoch had finished, so no checkpoint was written")
    assert not (tmp_path / "at-once" / "last.npz").exists()
