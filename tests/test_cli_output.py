"""What ``cnn train`` prints while and after it trains: the progress bar (total, ETA, the
running mean loss weighted by batch size) and the test-accuracy sparkline (scaled to the data,
fitted to the terminal)."""

import io

import numpy as np
import pytest

from cnncli.cli.train import BLOCKS, accuracy_line, sparkline
from helpers import SHAPES


def test_progress_bar_shows_the_total_an_eta_and_the_running_mean_loss():
    from rich.console import Console

    from cnncli.cli.train import _run_epoch
    from cnncli.config import load_config
    from cnncli.train import Trainer

    buf = io.StringIO()
    out = Console(file=buf, force_terminal=True, width=150)
    trainer = Trainer(load_config(SHAPES))
    row = _run_epoch(trainer, out, True)
    text = buf.getvalue()
    assert " 0/21" in text  # the epoch's 21 batches are known before the first one
    assert "ETA" in text and "Elapsed" not in text
    # the last loss shown is the running mean: the epoch's train loss, not the last batch's
    shown = [part.split()[0] for part in text.split("loss ")[1:]]
    assert shown[-1] == f"{row['train_loss']:.4f}"


def test_running_mean_weights_batches_by_size():
    from cnncli.cli.train import RunningMean

    mean = RunningMean()
    mean.add(1.0, 16)
    mean.add(4.0, 4)  # the last, smaller batch
    assert mean.value == pytest.approx((16 + 16) / 20)


def test_sparkline_is_scaled_to_the_data():
    line = sparkline([0.982, 0.985, 0.99, 0.992])
    assert line[0] == BLOCKS[0] and line[-1] == BLOCKS[-1] and len(set(line)) == 4
    assert sparkline([0.5, 0.5, 0.5]) == BLOCKS[-1] * 3  # flat: no division by zero
    text = accuracy_line([0.982, 0.992])
    assert "98.20%..99.20%" in text


def test_sparkline_fits_the_terminal_width():
    accs = list(np.linspace(0.9, 0.99, 500))
    for width in (80, 120, 200):
        line = "Test accuracy by epoch: " + accuracy_line(accs, width)
        assert len(line) <= width, (width, line)
        assert "500 epochs" in line
    short = accuracy_line(accs[:10], 80)
    assert len(short.split()[0]) == 10  # one mark per epoch when it fits
    assert len(accuracy_line(accs, None).split()[0]) == 500  # a pipe gets every epoch
