"""The run directory's lock: while one ``cnn train`` runs, a second one in the same directory
(a new run or a --resume) refuses in one line, and of two starts racing for one empty directory
exactly one trains.

Every fault mid-run leaves the run directory loadable and resumable to the result of an
uninterrupted run (the session-scoped ``reference_run`` in conftest).
"""

import time

from helpers import (COUNTS, FAULT_ARGS, SHAPES, assert_cli_error, check_consistent, read_metrics,
                     same_run, start_train, strip_seconds)


def test_two_trainings_in_one_run_directory(cnn, tmp_path, reference_run):
    """While one ``cnn train`` runs, a second one in the same directory (a new run or a
    --resume) refuses in one line; the first finishes unharmed, equal to the uninterrupted run.
    Two starts racing for one empty directory: exactly one trains."""
    run = tmp_path / "run"
    first = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS])
    deadline = time.time() + 60
    while not ((run / "metrics.csv").exists() and read_metrics(run)):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.02)
    assert_cli_error(cnn("train", SHAPES, "--run-dir", run, *FAULT_ARGS), run, "exists and is not empty")
    assert_cli_error(cnn("train", "--resume", run), run, "another cnn train is using this run directory")
    second = start_train(["--resume", run])
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and b"is using this run directory" in err, err
    COUNTS["faults"] += 3
    assert first.wait(timeout=120) == 0, first.communicate()
    same_run(run, reference_run)

    race = tmp_path / "race"
    procs = [start_train([SHAPES, "--run-dir", race, *FAULT_ARGS, "--epochs", 3]) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    errs = [p.communicate()[1].decode() for p in procs]
    COUNTS["faults"] += 1
    assert codes == [0, 1], errs
    loser = [e for p, e in zip(procs, errs) if p.returncode == 1][0]
    assert ("is using this run directory" in loser or "exists and is not empty" in loser), loser
    assert check_consistent(race) == 3 and len(read_metrics(race)) == 3
    rows = strip_seconds(read_metrics(race))
    assert rows == strip_seconds(read_metrics(reference_run))[:3]  # the winner trained alone
