"""Paths: run directories that cannot be created (under a file, in /proc, on a read-only file
system), paths with spaces and non-ASCII characters, undecodable names on an ASCII terminal,
and relative data paths (relative to the config's folder, to the current folder for --set, and
old runs that stored them as given)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from helpers import (COUNTS, ENV, SHAPES, SHAPES_NET, assert_cli_error, error_line, read_metrics,
                     snapshot, write_config)


def test_run_directory_that_cannot_be_created(cnn, tmp_path):
    """Root ignores permission bits, so "no write permission" is made with a path under a
    regular file (and, in test_read_only_file_system, a read-only mount)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    run = blocker / "run"
    assert_cli_error(cnn("train", SHAPES, "--run-dir", run), run, "cannot create the run directory",
                     "Not a directory")
    assert blocker.read_text() == "I am a file"
    proc_run = Path("/proc/cnncli-run")
    assert_cli_error(cnn("train", SHAPES, "--run-dir", proc_run, "--epochs", 1), proc_run,
                     "cannot create the run directory")


def test_read_only_file_system(cnn, tmp_path, tmpfs, finished_run):
    """A run directory on a file system remounted read-only: a new run and a resume both fail
    in one line before training, and the run's files are untouched."""
    mnt = tmpfs("4m")
    run = mnt / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert_cli_error(cnn("train", SHAPES, "--run-dir", mnt / "new"), mnt / "new",
                     "cannot create the run directory", "Read-only file system")
    assert_cli_error(cnn("train", "--resume", run, "--epochs", 5), run,
                     "cannot write in the run directory", "Read-only file system")
    assert snapshot(run) == before


def test_paths_with_spaces_and_non_ascii(cnn, tmp_path):
    """Config, data, run directory and checkpoint paths with spaces and non-ASCII characters
    work end to end, and errors about them stay one line."""
    base = tmp_path / "dir with spaces" / "données 数据"
    base.mkdir(parents=True)
    data = base / "my shapes ü.npz"
    assert cnn("generate-shapes", "--out", data, "--n", 80).exit_code == 0
    config = write_config(base / "конфиг é.yaml", {
        "data": {"name": "npz", "path": str(data)}, "network": SHAPES_NET,
        "training": {"epochs": 2}})
    run = base / "rün 1 ✓"
    result = cnn("train", config, "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert str(run) in result.output
    assert cnn("eval", run / "best.npz", "--json").exit_code == 0
    result = cnn("train", "--resume", run, "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(read_metrics(run)) == 3
    assert_cli_error(cnn("eval", base / "nö such.npz"), base / "nö such.npz", "no such file")
    COUNTS["hostile"] += 4


def test_undecodable_paths_and_an_ascii_terminal(tmp_path):
    """A run directory whose name is not valid UTF-8, and non-ASCII paths printed to an ASCII
    terminal: training works, and messages are escaped, not a UnicodeEncodeError."""
    base = os.fsencode(tmp_path)
    env = dict(ENV, PYTHONIOENCODING="ascii")
    run = base + b"/r\xff\xfe"
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", str(SHAPES), "--run-dir", run,
                           "--epochs", "2"], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(run + b"/last.npz")
    missing = base + b"/c\xff \xc3\xa9.yaml"
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", missing], capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 1
    err = done.stderr.decode("ascii")
    assert len(err.strip().splitlines()) == 1 and "no such file" in err and "Traceback" not in err
    assert "\\udcff" in err and "\\xe9" in err
    COUNTS["hostile"] += 2


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
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == ["1", "2"]  # it trained on
