"""``cnn train --resume``: a finished run says it is complete and how to train longer, another
run's checkpoint is refused touching nothing, and the temporary files of a killed run are
removed (the user's own ``*.tmp`` files kept)."""

import shutil

from helpers import COUNTS, MOMENTUM, SHAPES, assert_cli_error, snapshot


def test_resuming_a_finished_run_says_it_is_complete_and_how_to_train_longer(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--quiet").exit_code == 0
    result = cnn("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "is already complete: all 2 epochs are trained" in result.output
    assert f"cnn train --resume {run} --epochs" in result.output


def test_resume_refuses_another_runs_checkpoint(cnn, finished_run, tmp_path):
    """A last.npz copied from another run: another network, or the same network trained with
    another seed. --resume refuses it (its config differs from the run's), touching nothing."""
    for name, sets in [("other-network", ["--set", "network.0.out_channels=6", "--set",
                                          "network.2.in_features=24"]),
                       ("other-seed", ["--seed", "7"])]:
        other = tmp_path / name
        result = cnn("train", SHAPES, "--run-dir", other, "--epochs", 2, "--quiet", "--set", MOMENTUM, *sets)
        assert result.exit_code == 0, result.output
        run = tmp_path / f"run-{name}"
        shutil.copytree(finished_run, run)
        shutil.copyfile(other / "last.npz", run / "last.npz")
        before = snapshot(run)
        msg = assert_cli_error(cnn("train", "--resume", run, "--epochs", 5),
                               run / "last.npz", "was written by another run")
        assert ("network" in msg) if name == "other-network" else ("seed: 7 -> 0" in msg)
        assert snapshot(run) == before
        # and eval of that file alone works: it is a good checkpoint, just not this run's
        assert cnn("eval", other / "last.npz").exit_code == 0


def test_resume_removes_temporary_files_of_a_killed_run(cnn, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in (".last.npz.999.tmp", ".metrics.csv.999.tmp", ".curves.png.42.tmp"):
        (run / name).write_bytes(b"half a file")
    (run / "notes.tmp").write_text("mine")  # not ours: kept
    result = cnn("train", "--resume", run, "--epochs", 4, "--quiet")
    COUNTS["faults"] += 3
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]
