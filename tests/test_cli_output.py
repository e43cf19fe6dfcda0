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


def test_table_titles_are_lines_of_their_own_at_80_columns(cnn, tmp_path):
    """A table's title is printed above it, wrapped between words at the terminal's width (not
    squeezed into a narrow table's width, mid-phrase), and headers are whole."""
    from helpers import assert_fits, table_headers
    from conftest import ROOT

    out = tmp_path / "shapes.npz"  # a title longer than 80 characters, a path shorter
    assert len(str(out)) < 80 < len(f"{out}: 335 train, 165 test samples")
    shapes = cnn("generate-shapes", "-o", out, env={"COLUMNS": "80"})
    summary = cnn("summary", ROOT / "configs" / "shapes.yaml", env={"COLUMNS": "80"})
    export = cnn("data", "export", "shapes", "-o", tmp_path / "folder", "--limit", 5,
                 env={"COLUMNS": "80"})
    for result, title, headers in [
            (shapes, f"{out}: 335 train, 165 test samples", ["class", "label", "train", "test"]),
            (summary, f"{ROOT / 'configs' / 'shapes.yaml'} (shapes data, input 1x3x3)",
             ["#", "type", "output shape", "params", "buffers"]),
            (export, f"{tmp_path / 'folder'}: 5 train, 5 test PNGs of 1x3x3",
             ["class folder", "train", "test"])]:
        assert result.exit_code == 0, result.output
        assert_fits(result.output.split("Train on it with")[0])  # that line: a command to copy
        lines = result.output.split("┏")[0].splitlines()
        assert " ".join(line.strip() for line in lines) == title, lines  # broken between words
        assert table_headers(result.output) == headers


def test_the_epoch_line_is_on_screen_before_the_epoch_is_saved_and_drawn(cnn, monkeypatch, tmp_path):
    """On a terminal the bar of an epoch vanishes when it ends (transient): its epoch line must be
    printed and flushed at once, not after the checkpoint is written and the curves drawn (the
    first draw imports matplotlib; in tmux the pane stayed blank for seconds)."""
    from rich.console import Console

    import cnncli.cli.train as cli_train
    import cnncli.fit as fit

    class Screen(io.StringIO):
        shown = ""  # what a terminal shows: the text as of the last flush

        def flush(self):
            self.shown = self.getvalue()

    screen = Screen()
    terminal = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr(cli_train, "console", lambda stderr=False, **kw:
                        terminal if not stderr else Console(stderr=True, **kw))
    seen = []
    real_plot, real_save = fit.plot_run_curves, fit.RunDir.save_epoch

    def save_epoch(self, trainer, *a, **kw):
        seen.append(("save", trainer.epoch, screen.shown))
        return real_save(self, trainer, *a, **kw)

    def plot(path, name, *a, **kw):
        seen.append(("plot", None, screen.shown))
        return real_plot(path, name, *a, **kw)

    monkeypatch.setattr(fit, "plot_run_curves", plot)
    monkeypatch.setattr(fit.RunDir, "save_epoch", save_epoch)
    result = cnn("train", SHAPES, "--epochs", 2, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    saves = [(epoch, shown) for what, epoch, shown in seen if what == "save"]
    assert [epoch for epoch, _ in saves] == [1, 2]
    for epoch, shown in saves:
        assert f"epoch {epoch}/2  train loss" in shown, shown[-500:]
    assert " 0/21" in screen.getvalue()  # the bar was shown too (a terminal)
