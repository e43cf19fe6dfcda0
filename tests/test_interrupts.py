"""A run interrupted: SIGKILL at random moments (during the start, training, and in the middle
of an atomic write) then --resume equals an uninterrupted run; a start killed before config.yaml
leaves a directory that can be trained into; Ctrl-C in the first epoch says nothing was saved,
and later keeps the last epoch and draws curves.png.

Every fault mid-run leaves the run directory loadable and resumable to the result of an
uninterrupted run (the session-scoped ``reference_run`` in conftest).
"""

import os
import signal
import time
from pathlib import Path

import numpy as np

from helpers import (COUNTS, FAULT_ARGS, FAULT_EPOCHS, SHAPES, check_consistent, no_temporary_files,
                     same_run, start_train, train_to_the_end)


def _epoch_lines(run: Path) -> int:
    try:
        return (run / "train.log").read_text(errors="replace").count(f"/{FAULT_EPOCHS}  train loss")
    except OSError:
        return 0


def _writing(run: Path, pid: int) -> bool:
    try:
        return any(name.endswith(f".{pid}.tmp") and not name.startswith(".write-test")
                   for name in os.listdir(run))
    except OSError:
        return False


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, reference_run):
    """A run killed with SIGKILL six times and restarted each time (``--resume`` once
    config.yaml exists): the first kill at a random moment of the start (imports, data, run
    directory), then alternately at a random moment shortly after an epoch of the restarted
    process ended (training, or writing best.npz, last.npz, metrics.csv, train.log, curves.png)
    and the moment a temporary file appears (in the middle of an atomic write). After
    every kill last.npz loads and agrees with metrics.csv, and no finished epoch is lost; the
    last --resume ends with metrics and parameters identical to the uninterrupted run, with no
    temporary file left."""
    run = tmp_path / "killed run"
    rng = np.random.default_rng(7)
    epochs_seen = []
    for i in range(6):
        args = (["--resume", run] if (run / "config.yaml").exists()
                else [SHAPES, "--run-dir", run, *FAULT_ARGS])
        before = _epoch_lines(run)
        proc = start_train(args)
        deadline = time.time() + 60
        if i == 0:
            time.sleep(float(rng.uniform(0.05, 0.9)))
        elif i % 2:
            while _epoch_lines(run) <= before and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.12)))
        else:  # the moment a temporary file appears: in the middle of an atomic write
            while proc.poll() is None and not _writing(run, proc.pid):
                assert time.time() < deadline
        finished = proc.poll() is not None
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, err
        if not finished:
            COUNTS["faults"] += 1
            if run.exists() and any(p.name.endswith(".tmp") for p in run.iterdir()):
                COUNTS["kills during a write"] += 1
        epochs_seen.append(check_consistent(run))
    assert epochs_seen[-1] < FAULT_EPOCHS, "the kills came too late to test anything"
    train_to_the_end(["--resume", run, "--quiet"])
    same_run(run, reference_run)
    no_temporary_files(run)
    assert epochs_seen == sorted(epochs_seen)  # a kill never loses a finished epoch


def test_kill_during_the_first_moments_leaves_a_restartable_directory(cnn, tmp_path):
    """Killed before config.yaml exists, the directory holds at most the lock and temporary
    files: a new ``cnn train --run-dir`` into it is allowed."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("12345\n")
    (run / ".config.yaml.12345.tmp").write_text("seed: 0\n")
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet")
    COUNTS["faults"] += 1
    assert result.exit_code == 0, result.output
    no_temporary_files(run)


def _interrupt_in_epoch(monkeypatch, epoch: int):
    """Make the trainer see Ctrl-C (as the SIGINT handler sets it) at the start of ``epoch``."""
    from cnncli.train import Trainer

    original = Trainer._train_epoch
    pending = [True]  # once

    def train_epoch(self, on_batch):
        if self.epoch + 1 == epoch and pending:
            pending.clear()
            signal.raise_signal(signal.SIGINT)  # the CLI's handler sets stop_requested
        return original(self, on_batch)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(cnn, monkeypatch, tmp_path):
    _interrupt_in_epoch(monkeypatch, 1)
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run)
    assert result.exit_code == 130
    assert "no epoch had finished, so no checkpoint was saved" in result.stderr
    assert "is saved in" not in result.stderr
    assert not (run / "last.npz").exists()
    assert f"cnn train --resume {run}" in result.stderr
    resumed = cnn("train", "--resume", run, "--epochs", 1, "--quiet")  # which works
    assert resumed.exit_code == 0, resumed.output


def test_ctrl_c_later_keeps_the_epoch_and_curves_png_is_drawn_after_epoch_1_and_on_ctrl_c(cnn, monkeypatch, tmp_path):
    from cnncli import plots

    _interrupt_in_epoch(monkeypatch, 4)
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run)
    assert result.exit_code == 130
    assert f"epoch 3 is saved in {run / 'last.npz'}" in result.stderr
    state = plots.draw_stats(run)
    # drawn after epoch 1 (not after 20 s), throttled for the fast epochs 2 and 3, then
    # drawn again on Ctrl-C: the picture holds every finished epoch
    assert state.calls == 3 + 1 and state.draws == 2
    st = os.stat(run / "metrics.csv")
    assert state.stamp == (st.st_mtime_ns, st.st_size)
    assert (run / "curves.png").is_file()
