"""A full disk: writes that fail with EFBIG (RLIMIT_FSIZE) or ENOSPC (a full tmpfs) while
writing each file of a run directory and in the middle of a run give one line naming the file,
keep the previous version intact and leave no temporary file; the run then resumes to the
uninterrupted result.

Every fault mid-run leaves the run directory loadable and resumable to the result of an
uninterrupted run (the session-scoped ``reference_run`` in conftest).
"""

import json
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np

from cnncli.checkpoint import load_checkpoint, save_checkpoint
from helpers import (COUNTS, ENV, FAULT_ARGS, FAULT_EPOCHS, SHAPES, assert_one_line, check_consistent,
                     no_temporary_files, read_metrics, same_run, start_train, train_to_the_end)


FSIZE_SCRIPT = r"""
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from cnncli.checkpoint import save_checkpoint
from cnncli.errors import CnnError
from cnncli.run import RunDir


class Trainer:  # what RunDir.save_epoch asks of a trainer
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0,
                "test_accuracy": 0.5, "seconds": 0.1, "learning_rate": 0.1}]

    def state(self):
        return {"layers.0.W": np.zeros(5000)}, {"epoch": 2, "history": self.history * 2}


d = Path(sys.argv[1])
run = RunDir(d)
meta = {"config": {}, "epoch": 1, "input_shape": [1], "class_names": ["a"]}
save_checkpoint(d / "last.npz", {"layers.0.W": np.ones(10)}, meta)
run.write("metrics.csv", "epoch\n1\n")
run.log("line one")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
out = {}
for name, write in [
    ("last.npz", lambda: save_checkpoint(d / "last.npz", {"layers.0.W": np.zeros(5000)}, dict(meta, epoch=2))),
    ("metrics.csv", lambda: run.write("metrics.csv", "epoch\n" + "2\n" * 5000)),
    ("train.log", lambda: run.log("x" * 10000)),
    ("save_epoch", lambda: run.save_epoch(Trainer(), {"config": {}, "input_shape": [1], "class_names": ["a"]}, True)),
]:
    try:
        write()
        out[name] = "written"
    except CnnError as exc:
        out[name] = str(exc)
    except OSError as exc:
        out[name] = "OSError " + str(exc)
print(json.dumps(out))
"""


def test_full_disk_while_writing_each_file(tmp_path):
    """RLIMIT_FSIZE (writes beyond 4 KB fail with EFBIG, as on a full disk) while writing a
    checkpoint, metrics.csv, train.log and a whole epoch's files: a one-line error naming the
    file, the previous version intact byte for byte, and no temporary file left."""
    d = tmp_path / "run"
    d.mkdir()
    done = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(d)], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    COUNTS["faults"] += len(out)
    for name, msg in out.items():
        assert_one_line(msg)
        assert "File too large" in msg, (name, msg)
    assert out["last.npz"].startswith("OSError")  # the library call; RunDir words it (save_epoch)
    assert "metrics.csv: cannot write (File too large); the previous version is intact" in out["metrics.csv"]
    assert "train.log: cannot write (File too large)" in out["train.log"]
    assert "best.npz: cannot write the checkpoint" in out["save_epoch"]  # best first, then last
    arrays, meta = load_checkpoint(d / "last.npz")
    assert meta["epoch"] == 1 and np.all(arrays["layers.0.W"] == 1)
    assert not (d / "best.npz").exists()
    assert (d / "metrics.csv").read_text() == "epoch\n1\n"
    assert (d / "train.log").read_text() == "line one\n"  # not half a line more
    no_temporary_files(d)


def test_full_disk_mid_run_then_resume(tmp_path, reference_run):
    """A training run under RLIMIT_FSIZE set so that its checkpoint outgrows the limit a few
    epochs in: it stops with a one-line error naming the checkpoint; last.npz, best.npz and
    metrics.csv hold the last good epoch, no temporary file is left; without the limit,
    --resume finishes with the uninterrupted run's result."""
    arrays, meta = load_checkpoint(reference_run / "last.npz")
    probe = tmp_path / "probe.npz"
    sizes = []
    for k in (3, 4):
        m = dict(meta, epoch=k, history=meta["history"][:k])
        save_checkpoint(probe, arrays, {key: v for key, v in m.items() if key not in ("format_version", "cnncli_version")})
        sizes.append(probe.stat().st_size)
    limit = (sizes[0] + sizes[1]) // 2  # between the sizes at epochs 3 and 4
    run = tmp_path / "run"

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS], preexec_fn=limited)
    _, err = proc.communicate(timeout=120)
    COUNTS["faults"] += 1
    err = err.decode()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ".npz: cannot write the checkpoint (File too large); the previous one is intact" in lines[0]
    epoch = check_consistent(run)
    assert 2 <= epoch < FAULT_EPOCHS, epoch
    assert len(read_metrics(run)) == epoch
    no_temporary_files(run)
    train_to_the_end(["--resume", run, "--quiet"])
    same_run(run, reference_run)


def test_full_tmpfs_mid_run_then_resume(tmp_path, tmpfs, reference_run):
    """The same on a real full file system (a 1.8 MB tmpfs: ENOSPC): a clear error, every file
    complete, and the run, copied to a roomier disk, resumes to the uninterrupted result."""
    mnt = tmpfs("1800k")  # room for two checkpoints and a bit: full at epoch 2
    run = mnt / "run"
    proc = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS])
    _, err = proc.communicate(timeout=120)
    COUNTS["faults"] += 1
    err = err.decode()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0], lines[0]
    check_consistent(run)
    no_temporary_files(run)
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    train_to_the_end(["--resume", moved, "--quiet"])
    same_run(moved, reference_run)
