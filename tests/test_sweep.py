"""cnn sweep on the embedded study: the sweep file's checks, a 2-worker sweep end to end,
determinism, failed and pruned trials, Ctrl-C, SIGKILL at random moments then resume, two
processes on one sweep directory, and optuna-dashboard reading the study."""

import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cnncli.checkpoint import load_checkpoint
from cnncli.errors import ConfigError
from cnncli.sweep.spec import load_sweep
from conftest import ROOT

ENV = {**os.environ, "COLUMNS": "200", "OPENBLAS_NUM_THREADS": "1"}
BASE = yaml.safe_load((ROOT / "configs" / "shapes.yaml").read_text())


def write_sweep(folder: Path, epochs=4, name="s", **sweep) -> Path:
    """A base config (shapes, ``epochs`` epochs) and a sweep file over it, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = {**BASE, "training": {**BASE["training"], "epochs": epochs}}
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "trials": 4, "sampler": "random",
            "space": {"training.learning_rate": {"low": 0.05, "high": 1.0, "log": True},
                      "training.batch_size": {"choices": [8, 16, 32]}}}
    spec.update(sweep)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(run: Path) -> list[dict]:
    return read_csv(run / "metrics.csv")


def cnn_process(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != "Z":
                found.append(int(d.name))
    return found


def check_run_dirs_whole(sweep_dir: Path) -> None:
    """Every file a trial wrote is whole: each checkpoint loads, each metrics.csv parses."""
    for run in (sweep_dir / "trials").iterdir():
        for npz in run.glob("*.npz"):
            load_checkpoint(npz)
        if (run / "metrics.csv").exists():
            for row in metrics(run):
                float(row["test_accuracy"])
        if (run / "config.yaml").exists():
            assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)


# ---------------------------------------------------------------- help, and Optuna optional
def test_help_and_cnn_runs_import_no_optuna(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from cnncli.cli import app; "
            "r = CliRunner(); codes = [r.invoke(app, a).exit_code for a in (['--help'], "
            "['sweep', '--help'], ['sweep', 'run', '--help'], ['runs', '--help'], "
            f"['runs', {str(tmp_path)!r}])]; "
            "print(codes, sorted(m for m in ('optuna', 'sqlalchemy', 'psycopg', "
            "'optuna_dashboard', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         check=True).stdout
    assert out.strip() == "[0, 0, 0, 0, 0] []"


def test_without_optuna_a_sweep_says_what_to_install(tmp_path):
    path = write_sweep(tmp_path)
    code = ("import sys; sys.modules['optuna'] = None; from cnncli.cli import main; "
            f"sys.argv = ['cnn', 'sweep', 'run', {str(path)!r}, '--sweep-dir', "
            f"{str(tmp_path / 'out')!r}]; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.returncode == 1
    assert "cnn sweep needs Optuna" in result.stderr and "pip install 'cnncli[sweep]'" in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the sweep file
def test_the_shipped_sweep_file_is_valid():
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "shapes-lr.yaml")
    assert sweep["trials"] == 12 and sweep["metric"] == "test_accuracy"
    assert sweep["space"]["network.2.out_features"] == {"kind": "int", "low": 4, "high": 32,
                                                        "log": False, "step": 4}
    assert sweep["space"]["training.learning_rate"]["kind"] == "float"
    load_sweep(ROOT / "configs" / "sweeps" / "digits-pruning.yaml")


def test_every_problem_of_a_bad_sweep_file_is_reported_at_once(tmp_path):
    path = write_sweep(tmp_path, trails=3, sampler="grid", space={
        "training.learning_rat": {"choices": [0.1, 1.0]},              # unknown key, close match
        "training.optimizer.momentum": {"low": 0.0, "high": 0.9, "step": 0.3},  # a default: valid
        "training.batch_size": {"low": 32, "high": 8},                  # low > high
        "network.2.out_features": {"low": 8, "high": 8},                # empty range
        "training.epochs": {"low": 0, "high": 5, "log": True},          # log with low <= 0
        "data.noise": {"low": 0.1, "high": 0.3},                        # grid, continuous
        "data.n": {"choices": []},                                      # no choice
        "network.9.out_features": {"low": 1, "high": 3},                # no layer 9
    })
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    problems = "\n".join(info.value.problems)
    assert "trails: unknown key (did you mean 'trials'?)" in problems
    assert "did you mean 'training.learning_rate'?" in problems
    assert "momentum" not in problems
    assert "space.training.batch_size: low (32) is above high (8)" in problems
    assert "space.network.2.out_features: the range is empty" in problems
    assert "space.training.epochs.log: a log range needs low > 0" in problems
    assert "space.data.noise: the grid sampler needs discrete values" in problems
    assert "space.data.n.choices: must be a non-empty list" in problems
    assert "space.network.9.out_features: network is a list of 6" in problems
    assert len(info.value.problems) == 8


def test_a_bad_sweep_file_is_one_line_and_leaves_no_directory(cnn, tmp_path):
    path = write_sweep(tmp_path, metric="test_acc", space={"training.lr": {"low": 1, "high": 2}})
    out = tmp_path / "sweep-out"
    result = cnn("sweep", "run", path, "--sweep-dir", out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "metric: must be one of" in lines[0] and "did you mean 'test_accuracy'" in lines[0]
    assert "space.training.lr: unknown key" in lines[0]
    assert "Traceback" not in result.output and not out.exists()


def test_a_sweep_directory_of_another_sweep_is_refused(cnn, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cnn("sweep", "run", write_sweep(tmp_path), "--sweep-dir", out)
    assert result.exit_code == 1 and "is not a sweep directory" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- a sweep end to end
@pytest.fixture(scope="module")
def six_trials(cnn, tmp_path_factory):
    """A 6-trial shapes sweep run by 2 workers."""
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, epochs=6, trials=6, sampler="tpe", space={
        "training.learning_rate": {"low": 0.05, "high": 1.0, "log": True},
        "training.batch_size": {"choices": [8, 16, 32]},
        "network.2.out_features": {"low": 4, "high": 12, "step": 4}})
    out = folder / "out"
    result = cnn("sweep", "run", path, "--workers", 2, "--sweep-dir", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_two_worker_sweep_makes_exactly_its_trials(cnn, six_trials):
    out, output = six_trials
    runs = sorted((out / "trials").iterdir(), key=lambda p: int(p.name))
    assert [p.name for p in runs] == [str(i) for i in range(6)]
    rows = read_csv(out / "trials.csv")
    assert [r["number"] for r in rows] == [str(i) for i in range(6)]
    assert list(rows[0])[:5] == ["number", "state", "training.learning_rate",
                                 "training.batch_size", "network.2.out_features"]
    for row, run in zip(rows, runs):
        assert row["state"] == "COMPLETE" and row["run_dir"] == f"trials/{run.name}"
        accuracies = [float(m["test_accuracy"]) for m in metrics(run)]
        assert float(row["value"]) == max(accuracies)
        assert int(row["best_epoch"]) == accuracies.index(max(accuracies)) + 1
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["training"]["batch_size"] == int(row["training.batch_size"])
        assert cfg["training"]["learning_rate"] == float(row["training.learning_rate"])
        assert cfg["network"][2]["out_features"] == int(row["network.2.out_features"])
        for name in ("last.npz", "best.npz", "curves.png", "train.log"):
            assert (run / name).is_file(), name
        result = cnn("eval", run / "best.npz")
        assert result.exit_code == 0, result.output
        assert f"accuracy {100 * max(accuracies):.2f}%" in result.output
    assert (out / "sweep.png").stat().st_size > 1000
    assert "Sweep s: 6 trials (6 complete); best: trial" in output
    assert "cnn sweep show" not in output


def test_best_yaml_trains_to_its_trials_metrics(cnn, six_trials, tmp_path):
    out, _ = six_trials
    rows = read_csv(out / "trials.csv")
    best = max(rows, key=lambda r: (float(r["value"]), -int(r["number"])))
    assert f"trial {best['number']}," in (out / "best.yaml").read_text().splitlines()[0]
    again = tmp_path / "again"
    result = cnn("train", out / "best.yaml", "--run-dir", again, "--quiet")
    assert result.exit_code == 0, result.output
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(metrics(again)) == drop(metrics(out / best["run_dir"]))
    # a trial is an ordinary run: cnn train --resume continues it
    import shutil

    copy = tmp_path / "trial-copy"
    shutil.copytree(out / best["run_dir"], copy)
    result = cnn("train", "--resume", copy, "--epochs", 8, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(metrics(copy)) == 8


def test_sweep_show_lists_the_trials(cnn, six_trials):
    out, _ = six_trials
    result = cnn("sweep", "show", out, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [t["number"] for t in shown["trials"]] == list(range(6))
    assert shown["best"]["value"] == max(float(r["value"]) for r in read_csv(out / "trials.csv"))
    table = cnn("sweep", "show", out)
    assert table.exit_code == 0 and "6 of 6 trials done" in table.output


def test_optuna_dashboard_reads_the_study(six_trials, tmp_path):
    out, _ = six_trials
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(dashboard), str(out / "study.journal"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, "optuna-dashboard exited"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["s"]
        sid = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}", timeout=10) as r:
            detail = json.load(r)
        assert sorted(t["number"] for t in detail["trials"]) == list(range(6))
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_on_a_terminal_a_live_table_shows_the_trials(tmp_path):
    import pty
    import select

    path = write_sweep(tmp_path, epochs=2, trials=2)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", "sweep", "run", str(path),
                             "--sweep-dir", str(tmp_path / "out")], stdin=slave, stdout=slave,
                            stderr=slave, env={**ENV, "TERM": "xterm"}, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "s: 2 of 2 trials done" in text and "learning_rate" in text and "┃" in text
    assert "Sweep s: 2 trials (2 complete); best: trial" in text


def test_a_sweep_over_an_image_folder_with_batch_norm_and_dropout(cnn, tmp_path):
    """Trials use the same Trainer as cnn train, so every config works in a sweep: here an
    image folder (with augmentation), batch normalisation and a swept dropout rate."""
    folder = tmp_path / "digits-folder"
    result = cnn("data", "export", "digits", "--out", folder, "--limit", 120)
    assert result.exit_code == 0, result.output
    base = {"seed": 0,
            # relative to the base config's folder, as in any config (the sweep runs elsewhere)
            "data": {"name": "folder", "path": "digits-folder", "augment": {"crop_padding": 1}},
            "network": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3},
                        {"type": "batch_norm"}, {"type": "relu"}, {"type": "flatten"},
                        {"type": "dropout", "p": 0.2},
                        {"type": "dense", "out_features": 10}],
            "training": {"epochs": 2, "batch_size": 16, "loss": "cross_entropy",
                         "drop_last": True}}
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    sweep = {"base": "folder.yaml", "trials": 2, "sampler": "random",
             "space": {"network.4.p": {"low": 0.1, "high": 0.5},
                       "training.learning_rate": {"low": 0.01, "high": 0.2, "log": True}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    out = tmp_path / "out"
    result = cnn("sweep", "run", tmp_path / "sweep.yaml", "--sweep-dir", out, "-q")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:
        cfg = yaml.safe_load((out / r["run_dir"] / "config.yaml").read_text())
        assert cfg["network"][4]["p"] == float(r["network.4.p"])
        assert cnn("eval", out / r["run_dir"] / "best.npz").exit_code == 0
    again = tmp_path / "again"
    assert cnn("train", out / "best.yaml", "--run-dir", again, "-q").exit_code == 0
    best = max(rows, key=lambda r: (float(r["value"]), -int(r["number"])))
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(metrics(again)) == drop(metrics(out / best["run_dir"]))


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("sampler", ["random", "grid"])
def test_same_sweep_same_seed_same_trials(cnn, tmp_path, sampler):
    space = {"training.learning_rate": {"choices": [0.1, 0.3, 0.6]},
             "training.batch_size": {"low": 8, "high": 32, "step": 8}}
    if sampler == "random":
        space["training.learning_rate"] = {"low": 0.05, "high": 1.0, "log": True}
    path = write_sweep(tmp_path, epochs=3, trials=4, sampler=sampler, space=space, seed=7)
    tables = []
    for k in range(2):
        result = cnn("sweep", "run", path, "--sweep-dir", tmp_path / f"out{k}", "--quiet")
        assert result.exit_code == 0, result.output
        tables.append([{c: v for c, v in r.items() if c != "seconds"}
                       for r in read_csv(tmp_path / f"out{k}" / "trials.csv")])
    assert tables[0] == tables[1]
    assert len({(r["training.learning_rate"], r["training.batch_size"]) for r in tables[0]}) > 1


def test_a_grid_with_two_workers_visits_each_point_once(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=2, trials=6, sampler="grid",
                       space={"training.learning_rate": {"low": 0.001, "high": 0.501, "step": 0.1}})
    result = cnn("sweep", "run", path, "--sweep-dir", tmp_path / "out", "--workers", 2, "-q")
    assert result.exit_code == 0, result.output
    lrs = sorted(float(r["training.learning_rate"]) for r in read_csv(tmp_path / "out" / "trials.csv"))
    assert lrs == pytest.approx([0.001, 0.101, 0.201, 0.301, 0.401, 0.501])


def test_resume_with_more_trials_grows_a_finished_sweep(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=2, trials=2)
    out = tmp_path / "out"
    assert cnn("sweep", "run", path, "--sweep-dir", out, "-q").exit_code == 0
    first = read_csv(out / "trials.csv")
    result = cnn("sweep", "resume", out, "--trials", 3, "-q")
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert [r["value"] for r in rows[:2]] == [r["value"] for r in first]  # kept, not re-run
    assert yaml.safe_load((out / "sweep.yaml").read_text())["trials"] == 3


# ---------------------------------------------------------------- failed and pruned trials
def test_invalid_samples_fail_and_the_sweep_goes_on(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=2, trials=3, seed=1,
                       space={"network.2.out_features": {"choices": [0, -1, 8]}})
    out = tmp_path / "out"
    result = cnn("sweep", "run", path, "--sweep-dir", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "trials.csv")
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 3 and failed
    for r in failed:
        assert f"(dense): out_features must be an integer >= 1, got {r['network.2.out_features']}" in r["note"]
    assert all(r["network.2.out_features"] == "8" for r in rows if r["state"] == "COMPLETE")


def test_five_failures_in_a_row_stop_the_sweep(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=2, trials=3,
                       space={"network.2.out_features": {"choices": [0, -1]}})
    out = tmp_path / "out"
    result = cnn("sweep", "run", path, "--sweep-dir", out)
    assert result.exit_code == 1
    assert "5 trials failed in a row, so the sweep stopped; the last: trial 4:" in result.output
    assert f"resume with: cnn sweep resume {out}" in result.output
    assert [r["state"] for r in read_csv(out / "trials.csv")] == ["FAIL"] * 5


def test_pruned_trials_stop_early_and_keep_their_run_directory(cnn, tmp_path):
    # Five good learning rates run first (the median pruner's start-up trials), then three
    # hopeless ones, which fall below the median: queued in that order with Optuna's
    # enqueue_trial before the workers start.
    from cnncli.sweep.driver import open_sweep_study, prepare

    lrs = [0.5, 0.6, 0.7, 0.8, 0.9, 0.001, 0.0011, 0.0012]
    path = write_sweep(tmp_path, epochs=8, trials=8, pruner="median",
                       space={"training.learning_rate": {"choices": lrs}})
    out, sweep = prepare(load_sweep(path), tmp_path / "out", None, None)
    study = open_sweep_study(out, sweep, None)
    for lr in lrs:
        study.enqueue_trial({"training.learning_rate": lr})
    result = cnn("sweep", "resume", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "trials.csv")
    assert [float(r["training.learning_rate"]) for r in rows] == lrs
    assert [r["state"] for r in rows] == ["COMPLETE"] * 5 + ["PRUNED"] * 3
    for r in rows[5:]:
        done = metrics(out / r["run_dir"])
        assert 1 <= len(done) < 8
        assert float(r["value"]) == max(float(m["test_accuracy"]) for m in done)
        assert f"Pruned after epoch {len(done)}" in (out / r["run_dir"] / "train.log").read_text()
        load_checkpoint(out / r["run_dir"] / "last.npz")
    assert "3 pruned" in result.output


# ---------------------------------------------------------------- interruption and resume
def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def done_trials(out: Path) -> int:
    try:
        return sum(r["state"] in ("COMPLETE", "PRUNED") for r in read_csv(out / "trials.csv"))
    except (OSError, KeyError):
        return 0


def test_ctrl_c_stops_the_workers_and_resume_finishes(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=30, trials=4)
    out = tmp_path / "out"
    proc = cnn_process("sweep", "run", path, "--sweep-dir", out, "--workers", 2)
    assert wait_for(lambda: any((out / "trials").glob("*/last.npz")) if (out / "trials").is_dir()
                    else False), proc.communicate()
    workers = children(proc.pid)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"Resume with: cnn sweep resume {out}" in stderr and "Traceback" not in stderr
    assert not any(Path(f"/proc/{pid}").exists() and pid in children(proc.pid) for pid in workers)
    assert not processes_mentioning(str(out))
    # a database URL in the environment does not apply to an embedded sweep
    result = cnn("sweep", "resume", str(out), "--workers", "2", env={"CNNCLI_SWEEP_STORAGE": "postgresql+psycopg://u@127.0.0.1:1/x"})
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "trials.csv")
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4
    interrupted = [r for r in rows if r["state"] == "FAIL"]
    assert interrupted and all("interrupted" in r["note"] for r in interrupted)
    # each interrupted trial's parameters were tried again
    complete = {(r["training.learning_rate"], r["training.batch_size"]) for r in rows
                if r["state"] == "COMPLETE"}
    for r in interrupted:
        assert (r["training.learning_rate"], r["training.batch_size"]) in complete
    check_run_dirs_whole(out)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(cnn, tmp_path):
    path = write_sweep(tmp_path, epochs=25, trials=6)
    out = tmp_path / "out"
    rng = random.Random(13)
    kills = 0
    for round_ in range(4):
        args = ("sweep", "run", path, "--sweep-dir", out) if round_ == 0 else ("sweep", "resume", out)
        before = set((out / "trials").glob("*/last.npz")) if (out / "trials").is_dir() else set()
        proc = cnn_process(*args, "--workers", 2)
        # wait for training to be under way (a new epoch saved), then a random moment more
        wait_for(lambda: proc.poll() is not None or
                 set((out / "trials").glob("*/last.npz")) - before, 60)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        workers = children(proc.pid)
        if round_ % 2 == 1 and workers:
            os.kill(rng.choice(workers), signal.SIGKILL)  # a worker: the others go on
            time.sleep(rng.uniform(0.5, 2.0))
        proc.kill()  # the main process: its workers die with it
        proc.communicate()
        kills += 1
        assert wait_for(lambda: not processes_mentioning(str(out)), 10), "orphan workers"
    assert kills >= 2
    proc = cnn_process("sweep", "resume", out, "--workers", 2)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    rows = read_csv(out / "trials.csv")
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 6
    assert not any(r["state"] == "RUNNING" for r in rows)
    assert len({r["number"] for r in rows}) == len(rows)
    killed = [r for r in rows if r["state"] == "FAIL"]
    assert killed and all(r["note"].startswith("killed") for r in killed)
    for r in rows:
        if r["state"] == "COMPLETE":
            run = out / r["run_dir"]
            assert len(metrics(run)) == 25
            assert float(r["value"]) == max(float(m["test_accuracy"]) for m in metrics(run))
            assert cnn("eval", run / "last.npz").exit_code == 0
    check_run_dirs_whole(out)
    assert not processes_mentioning(str(out))


def test_the_journal_lock_dies_with_its_holder_and_a_half_record_is_cut(tmp_path):
    """optuna#5921: Optuna's own journal locks outlive a killed holder; flock does not. And a
    record cut short by a kill must not make the journal unreadable."""
    from cnncli.sweep.storage import FlockLock, open_storage, open_study

    journal = tmp_path / "study.journal"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cnncli.sweep.storage import FlockLock; "
        f"FlockLock(Path({str(journal)!r})).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    start = time.monotonic()
    lock = FlockLock(journal)
    lock.acquire()
    lock.release()
    assert time.monotonic() - start < 2

    study = open_study(open_storage(None, tmp_path), "s", "maximize", create=True)
    study.tell(study.ask(), 0.5)
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 4, "worker_id": "x", "study_id": 0, "dat')  # a killed writer's half
    study = open_study(open_storage(None, tmp_path), "s", "maximize", create=False)
    study.tell(study.ask(), 0.7)
    again = open_study(open_storage(None, tmp_path), "s", "maximize", create=False)
    assert [t.value for t in again.get_trials()] == [0.5, 0.7]
    assert journal.read_bytes().endswith(b"\n")


def test_two_processes_share_one_sweep_directory(tmp_path):
    path = write_sweep(tmp_path, epochs=4, trials=6)
    out = tmp_path / "out"
    procs = [cnn_process("sweep", "run", path, "--sweep-dir", out, "--workers", 2)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    rows = read_csv(out / "trials.csv")
    assert sum(r["state"] == "COMPLETE" for r in rows) == 6  # exactly: one machine, one lock
    assert sorted(int(r["number"]) for r in rows) == list(range(len(rows)))
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(r["number"] for r in rows)
    # each worker samples with its own seed: no two trials drew the same learning rate
    assert len({r["training.learning_rate"] for r in rows}) == len(rows)


def test_a_joining_process_waits_for_the_trials_others_run(tmp_path):
    """A process that joins when every trial still needed is running elsewhere has nothing to
    train: it waits for those trials and ends with the sweep, exit 0."""
    path = write_sweep(tmp_path, epochs=300, trials=2)
    out = tmp_path / "out"
    first = cnn_process("sweep", "run", path, "--sweep-dir", out, "--workers", 2)
    assert wait_for(lambda: len(list((out / "trials").glob("*/last.npz"))) == 2
                    if (out / "trials").is_dir() else False), first.communicate()
    second = cnn_process("sweep", "run", path, "--sweep-dir", out, "--workers", 1)
    results = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], results
    assert "Sweep s: 2 trials (2 complete)" in results[1][0]
    assert not (out / "trials" / "2").exists()  # the joining process trained nothing
    assert [r["state"] for r in read_csv(out / "trials.csv")] == ["COMPLETE"] * 2

