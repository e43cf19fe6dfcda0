"""cnn runs: one row per run directory below a folder, each in the right state, never a
traceback."""

import json
import shutil

import pytest
import yaml

from cnncli.config import load_config
from cnncli.run import RunDir, run_meta
from cnncli.train import Trainer
from conftest import ROOT


@pytest.fixture(scope="module")
def folder(cnn, tmp_path_factory):
    """finished, interrupted, running, failed, empty, damaged, foreign and a sweep."""
    root = tmp_path_factory.mktemp("runs")
    base = yaml.safe_load((ROOT / "configs" / "shapes.yaml").read_text())
    base["training"]["epochs"] = 3
    (root.parent / "base.yaml").write_text(yaml.safe_dump(base))
    config = root.parent / "base.yaml"
    assert cnn("train", config, "--run-dir", root / "finished", "-q").exit_code == 0
    # interrupted: 2 of 3 epochs saved, then the process went away
    cfg = load_config(config)
    trainer, run = Trainer(cfg), RunDir.create(root / "interrupted", cfg)
    for _ in range(2):
        row = trainer.train_epoch()
        run.save_epoch(trainer, run_meta(cfg, "base"), trainer.best["epoch"] == row["epoch"])
    run.close()
    shutil.copytree(root / "interrupted", root / "running")
    failed = cnn("train", config, "--run-dir", root / "failed", "--lr", "1e300", "-q")
    assert failed.exit_code == 1 and "diverged" in failed.output
    (root / "empty").mkdir()
    shutil.copytree(root / "finished", root / "damaged")
    (root / "damaged" / "config.yaml").write_text("data: [unclosed\n")
    (root / "photos").mkdir()
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    sweep = root.parent / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "trials": 1, "sampler": "random",
                                     "space": {"training.learning_rate": {"low": 0.1, "high": 0.5}}}))
    result = cnn("sweep", "run", sweep, "--sweep-dir", root / "lr-sweep", "-q")
    assert result.exit_code == 0, result.output
    return root


def test_each_run_directory_is_listed_in_its_state(cnn, folder):
    live = RunDir.open_existing(folder / "running")  # this live process holds its lock
    try:
        result = cnn("runs", folder, "--json")
    finally:
        live.close()
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {n: r["state"] for n, r in rows.items()} == {
        "finished": "finished", "interrupted": "interrupted", "running": "running",
        "failed": "failed", "empty": "empty", "damaged": "damaged", "photos": "foreign",
        "lr-sweep": "finished", "lr-sweep/trials/0": "finished"}
    done = rows["finished"]
    metrics = (folder / "finished" / "metrics.csv").read_text().splitlines()[1:]
    accuracies = [float(line.split(",")[4]) for line in metrics]
    assert (done["dataset"], done["epochs_done"], done["epochs_planned"]) == ("shapes", 3, 3)
    assert done["best_test_accuracy"] == max(accuracies)
    assert done["best_epoch"] == accuracies.index(max(accuracies)) + 1
    assert done["final_test_accuracy"] == accuracies[-1] and done["seconds"] > 0
    assert (rows["interrupted"]["epochs_done"], rows["interrupted"]["epochs_planned"]) == (2, 3)
    assert "cnn train --resume" in rows["interrupted"]["note"]
    assert "diverged" in rows["failed"]["note"]
    assert "config.yaml" in rows["damaged"]["note"]
    assert rows["lr-sweep"]["kind"] == "sweep" and "1 of 1 trials done" in rows["lr-sweep"]["note"]
    assert rows["lr-sweep/trials/0"]["kind"] == "trial"


def test_without_the_lock_a_run_is_no_longer_running(cnn, folder):
    rows = {r["name"]: r for r in json.loads(cnn("runs", folder, "--json").output)}
    assert rows["running"]["state"] == "interrupted"


def test_the_table_and_sorting(cnn, folder):
    result = cnn("runs", folder, "--sort", "best")
    assert result.exit_code == 0 and "Traceback" not in result.output
    for name in ("finished", "interrupted", "failed", "empty", "damaged", "photos", "lr-sweep"):
        assert name in result.output
    rows = json.loads(cnn("runs", folder, "--sort", "best", "--json").output)
    best = [r["best_test_accuracy"] for r in rows if r["best_test_accuracy"] is not None]
    assert best == sorted(best, reverse=True) and rows[-1]["best_test_accuracy"] is None
    bad = cnn("runs", folder, "--sort", "colour")
    assert bad.exit_code == 2 and "--sort: must be one of name, dataset" in bad.output
    missing = cnn("runs", folder / "nowhere")
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_unreadable_files_never_give_a_traceback(cnn, folder, tmp_path):
    root = tmp_path / "odd"
    shutil.copytree(folder / "finished", root / "a")
    (root / "a" / "metrics.csv").write_bytes(b"\xff\xfe garbage")
    shutil.copytree(folder / "finished", root / "b")
    (root / "b" / "config.yaml").write_text("- just a list\n")
    (root / "c").mkdir()
    (root / "c" / "sweep.yaml").write_text("::: not yaml :::\n  - [")
    result = cnn("runs", root, "--json")
    assert result.exit_code == 0, result.output
    assert [r["state"] for r in json.loads(result.output)] == ["damaged"] * 3


def test_the_table_stays_readable_on_an_80_column_terminal(cnn, folder):
    """Every state and the start of every note are on screen at 80 columns (long notes once
    squeezed the name and state columns to nothing)."""
    result = cnn("runs", str(folder), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    rows = json.loads(cnn("runs", folder, "--json").output)
    for r in rows:
        assert r["state"] in result.output
        if r["note"]:
            assert f"{r['name']}: {r['note'][:20]}" in result.output


def test_hidden_folders_are_not_listed(cnn, tmp_path):
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "x").write_text("blob")
    (tmp_path / "mine").mkdir()
    rows = json.loads(cnn("runs", tmp_path, "--json").output)
    assert [r["name"] for r in rows] == ["mine"]
