"""The papercuts a newcomer hit (issue 15), one test each: help placeholders and -h, the
progress bar, Ctrl-C in the first epoch, the sparkline, messages for the wrong kind of file,
config-relative data paths, all-at-once validation, resuming a finished run, hostile values
that enter by different doors, pictures that say where they went, and where tests find MNIST."""

import io
import os
import signal

import numpy as np
import pytest
import yaml

from cnncli.cli import app
from cnncli.cli.train import BLOCKS, accuracy_line, sparkline
from conftest import ROOT, find_mnist, mnist_candidates

SHAPES = ROOT / "configs" / "shapes.yaml"


def error_line(result, code=1) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def all_commands():
    import typer

    group = typer.main.get_command(app)
    todo, out = [((), group)], []
    while todo:
        path, cmd = todo.pop()
        if hasattr(cmd, "commands"):
            todo.extend(((*path, name), sub) for name, sub in cmd.commands.items())
        else:
            out.append(path)
    return sorted(out)


# ---------------------------------------------------------------- help
def test_help_shows_plain_placeholders_and_h_works_everywhere(cnn):
    commands = all_commands()
    assert ("eval",) in commands and ("data", "download") in commands
    for path in [(), ("data",), *commands]:
        long, short = cnn(*path, "--help"), cnn(*path, "-h")
        assert long.exit_code == short.exit_code == 0, (path, short.output)
        assert long.output == short.output
        text = long.output
        usage = text.splitlines()[0]
        assert usage.startswith("Usage: ") and "{" not in usage and "<" not in usage, usage
        for bad in ("<path>", "<int", "<float", "<str>", "list[str]", "<list"):
            assert bad not in text, (path, bad, text)
        assert "-h, --help" in text
    assert cnn("eval", "-h").output.splitlines()[0].endswith(" eval [OPTIONS] CHECKPOINT")
    for path in [("train",), ("gradcheck",), ("summary",)]:
        assert "--set KEY=VALUE" in cnn(*path, "-h").output
    assert "--epochs INTEGER" in cnn("train", "-h").output


def test_the_one_file_a_command_writes_is_o_out(cnn):
    for command in ["plot", "show-kernels", "generate-shapes"]:
        assert "-o, --out FILE" in cnn(command, "-h").output, command
    assert "-q, --quiet" in cnn("train", "-h").output
    assert "--plot FILE" in cnn("eval", "-h").output


# ---------------------------------------------------------------- progress and Ctrl-C
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


# ---------------------------------------------------------------- sparkline
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


# ---------------------------------------------------------------- the wrong kind of file
def test_eval_of_a_config_says_it_is_a_config_and_suggests_train(cnn):
    line = error_line(cnn("eval", SHAPES))
    assert "is a YAML config, not a checkpoint" in line and f"cnn train {SHAPES}" in line
    assert "corrupt" not in line
    assert "cnn train" in error_line(cnn("show-kernels", SHAPES))


def test_resume_of_a_checkpoint_file_suggests_its_folder(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet").exit_code == 0
    line = error_line(cnn("train", "--resume", run / "last.npz"))
    assert "is a file" in line and f"cnn train --resume {run}" in line
    assert "no such run directory" not in line


def test_eval_data_that_is_not_a_config_says_data_takes_a_yaml_config(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet").exit_code == 0
    png = tmp_path / "seven.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    line = error_line(cnn("eval", run / "best.npz", "--data", png))
    assert "--data takes a YAML config" in line and str(png) in line


# ---------------------------------------------------------------- data.path
def _npz(path, n=60):
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 3, 3))
    y = np.arange(n) % 4
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    return path


NPZ_CONFIG = """seed: 0
data: {{name: npz, path: {path}}}
network:
  - {{type: flatten}}
  - {{type: dense, out_features: 4}}
training: {{epochs: 1, loss: cross_entropy}}
"""


def test_relative_data_path_in_a_config_is_relative_to_the_config_folder(cnn, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    _npz(project / "data" / "d.npz")
    config = project / "exp.yaml"
    config.write_text(NPZ_CONFIG.format(path="data/d.npz"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cnn("train", config, "--run-dir", "run", "--quiet")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((elsewhere / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(project / "data" / "d.npz")  # absolute
    # so eval and resume find the data from any folder
    monkeypatch.chdir(tmp_path)
    assert cnn("eval", elsewhere / "run" / "best.npz").exit_code == 0
    assert cnn("train", "--resume", elsewhere / "run", "--epochs", 2, "--quiet").exit_code == 0
    # the error names the path that was tried
    config.write_text(NPZ_CONFIG.format(path="data/missing.npz"))
    line = error_line(cnn("summary", config))
    assert str(project / "data" / "missing.npz") in line


def test_data_path_given_with_set_is_relative_to_the_current_folder(cnn, tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    _npz(tmp_path / "here" / "d.npz")
    config = tmp_path / "configs" / "exp.yaml"
    config.parent.mkdir()
    config.write_text(NPZ_CONFIG.format(path="nowhere.npz"))
    monkeypatch.chdir(tmp_path / "here")
    result = cnn("train", config, "--set", "data.path=d.npz", "--run-dir", "run", "--quiet")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "here" / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(tmp_path / "here" / "d.npz")


def test_old_runs_with_a_relative_data_path_still_eval_and_resume(cnn, tmp_path, monkeypatch):
    """Runs written before: config.yaml and the checkpoints hold the path as given, relative to
    the folder training ran in; from that folder they still evaluate and resume."""
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path / "d.npz")
    config = tmp_path / "exp.yaml"
    config.write_text(NPZ_CONFIG.format(path="d.npz"))
    assert cnn("train", config, "--run-dir", "run", "--quiet").exit_code == 0
    # make it an old run: the relative path as older versions saved it
    from cnncli.checkpoint import load_checkpoint, save_checkpoint

    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    stored["data"]["path"] = "d.npz"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    for name in ("best.npz", "last.npz"):
        arrays, meta = load_checkpoint(tmp_path / "run" / name)
        meta["config"]["data"]["path"] = "d.npz"
        save_checkpoint(tmp_path / "run" / name, arrays, meta)
    result = cnn("eval", "run/best.npz")
    assert result.exit_code == 0, result.output
    result = cnn("train", "--resume", "run", "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- validation
def test_every_problem_is_reported_at_once(cnn, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {name: shapes, nosie: 0.1}\nnetwork:\n  - {type: conv2d, out_channels: 4, kernel_size: 2}\n"
                      "  - {type: flaten}\n  - {type: dense, out_features: 4}\n"
                      "training: {epochs: 0}\n")
    line = error_line(cnn("summary", config))
    assert "data.nosie: unknown key (did you mean 'noise'?)" in line
    assert "unknown layer type 'flaten' (did you mean 'flatten'?)" in line
    assert "training.epochs" in line
    config.write_text("data: {name: shapez}\nnetwork:\n  - {type: flaten}\n  - {type: dense, out_featurs: 4}\n")
    line = error_line(cnn("summary", config))
    assert "data.name" in line and "'flaten'" in line and "'out_featurs'" in line


def test_cosine_min_lr_must_be_below_the_learning_rate(cnn, tmp_path):
    line = error_line(cnn("summary", SHAPES, "--set", "training.schedule={name: cosine, min_lr: 5}"))
    assert "training.schedule.min_lr: must be below training.learning_rate (0.1)" in line
    assert cnn("summary", SHAPES, "--set", "training.schedule={name: cosine, min_lr: 0.01}").exit_code == 0


def test_hostile_shapes_values_get_the_same_limits_by_every_door(cnn, tmp_path):
    line = error_line(cnn("summary", SHAPES, "--set", "data.noise=1e308"))
    assert "data.noise: must be a number >= 0 and <= 1000" in line and "OverflowError" not in line
    line = error_line(cnn("train", SHAPES, "--set", "data.n=100000000", "--run-dir", tmp_path / "r"))
    assert "data.n: must be an integer >= 2 and <= 10000000" in line
    for option, value, limit in [("--n", "100000000", "10000000"), ("--noise", "1e308", "1000")]:
        result = cnn("generate-shapes", "-o", tmp_path / "s.npz", option, value)
        line = error_line(result, code=2)
        assert option in line and limit in line
    assert not (tmp_path / "s.npz").exists()


def test_summary_takes_set(cnn):
    result = cnn("summary", SHAPES, "--set", "network.0.out_channels=8")
    assert result.exit_code == 0, result.output
    assert "8x2x2" in result.output


# ---------------------------------------------------------------- resume of a finished run
def test_resuming_a_finished_run_says_it_is_complete_and_how_to_train_longer(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--quiet").exit_code == 0
    result = cnn("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "is already complete: all 2 epochs are trained" in result.output
    assert f"cnn train --resume {run} --epochs" in result.output


# ---------------------------------------------------------------- pictures say where they went
def test_every_command_that_writes_a_picture_prints_where(cnn, tmp_path):
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert f"Curves: {run / 'curves.png'}" in result.output
    for args, out in [(["eval", run / "best.npz", "--plot", tmp_path / "e.png"], tmp_path / "e.png"),
                      (["generate-shapes", "-o", tmp_path / "s.npz", "--preview", tmp_path / "p.png"], tmp_path / "p.png"),
                      (["plot", run, "-o", tmp_path / "c.png"], tmp_path / "c.png"),
                      (["show-kernels", run / "best.npz", "-o", tmp_path / "k.png"], tmp_path / "k.png")]:
        result = cnn(*args)
        assert result.exit_code == 0, result.output
        assert f"Wrote {out}" in result.output and out.is_file(), args


# ---------------------------------------------------------------- where tests find MNIST
def test_tests_find_mnist_in_cnncli_data_dir_and_the_cache(tmp_path, monkeypatch):
    from cnncli.data.mnist import FILES

    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folders = mnist_candidates()
    assert tmp_path / "data" / "mnist" in folders and tmp_path / "cache" / "cnncli" / "mnist" in folders
    assert find_mnist([tmp_path / "data" / "mnist"]) is None
    for folder in (tmp_path / "data" / "mnist", tmp_path / "cache" / "cnncli" / "mnist"):
        folder.mkdir(parents=True)
        for name in FILES:
            (folder / f"{name}.gz").write_bytes(b"")
    assert find_mnist([tmp_path / "nowhere", *folders[1:]]) == tmp_path / "data" / "mnist"
    assert find_mnist([tmp_path / "cache" / "cnncli" / "mnist"]) == tmp_path / "cache" / "cnncli" / "mnist"
