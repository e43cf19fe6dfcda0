"""Helpers shared by the test files: one-line error checks, run directory comparisons, config
and data file builders, and the subprocess runs of the fault tests.

COUNTS tallies the hostile inputs tried and the faults injected; conftest prints the tally at
the end of the session (and writes it as JSON to $CNNCLI_FAULT_COUNTS when that is set)."""

from __future__ import annotations

import collections
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, settings

from cnncli.checkpoint import load_checkpoint
from cnncli.config import load_config
from cnncli.errors import CnnError
from conftest import ROOT

SHAPES = ROOT / "configs" / "shapes.yaml"
COUNTS: collections.Counter = collections.Counter()  # "hostile" inputs tried, "faults" injected

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Fixed seed (derandomize) and a bounded example count: every run tries the same cases."""
    return settings(FUZZ, max_examples=examples)


ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200", PYTHONIOENCODING="utf-8")


def assert_one_line(message: str) -> None:
    assert message == message.strip() and message, repr(message)
    assert len(message.splitlines()) == 1, repr(message)
    assert "Traceback" not in message
    assert "a bug in cnncli" not in message, message


def assert_cli_error(result, *phrases, code: int = 1) -> str:
    """A failed invocation: exit ``code``, one line on stderr starting with 'Error:', holding
    each phrase; no traceback; never the catch-all for bugs."""
    COUNTS["hostile"] += 1
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert_one_line(lines[0])
    for phrase in phrases:
        assert str(phrase) in lines[0], (phrase, lines[0])
    return lines[0]


def expect_cnn_error(fn, *args, kind=CnnError, phrases=(), **kw) -> str:
    """Run ``fn``; it must raise ``kind`` with a one-line message holding each phrase."""
    COUNTS["hostile"] += 1
    with pytest.raises(CnnError) as err:
        fn(*args, **kw)
    assert isinstance(err.value, kind), err.value
    msg = str(err.value)
    assert_one_line(msg)
    for phrase in phrases:
        assert str(phrase) in msg, (phrase, msg)
    return msg


def error_line(result, code=1) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def params(path: Path) -> dict:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("layers.")}


def same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same result: metrics (all but seconds) and the final
    parameters, bit for bit."""
    assert strip_seconds(read_metrics(a)) == strip_seconds(read_metrics(b))
    pa, pb = params(a / "last.npz"), params(b / "last.npz")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), k


def no_temporary_files(run: Path) -> None:
    left = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not left, left


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def shapes_raw(**data) -> dict:
    raw = yaml.safe_load(SHAPES.read_text())
    raw["data"].update(data)
    return raw


def nest(n):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


MOMENTUM = "training.optimizer={name: sgd, momentum: 0.9}"


def npy_bytes(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


SHAPES_NET = yaml.safe_load(SHAPES.read_text())["network"]


def npz_arrays(n_train=40, n_test=20, size=(1, 3, 3), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.random((n_train, *size)), "y_train": rng.integers(0, 4, n_train),
            "x_test": rng.random((n_test, *size)), "y_test": rng.integers(0, 4, n_test),
            "class_names": np.array(["a", "b", "c", "d"])}


def npz_config(tmp_path: Path, data_path: Path, **training) -> Path:
    cfg = {"seed": 0, "data": {"name": "npz", "path": str(data_path)}, "network": SHAPES_NET,
           "training": {"epochs": 2, "batch_size": 8, **training}}
    return write_config(tmp_path / "npz.yaml", cfg)


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no mount(8) here
        return False
    return done.returncode == 0


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


# A run whose checkpoints are large (42k parameters + momentum: ~680 KB each, written with
# fsync), so that kills often land while a checkpoint is being written.
FAULT_EPOCHS = 24


FAULT_ARGS = ["--set", "data.n=2000", "--set", "training.shuffle=true", "--set", MOMENTUM,
              "--set", "network.2.out_features=2000", "--epochs", str(FAULT_EPOCHS)]


def start_train(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnncli", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, **kw)


def train_to_the_end(args) -> None:
    """``cnn train ARGS`` in a subprocess, like the faulted runs it is compared with."""
    proc = start_train(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


def check_consistent(run: Path) -> int:
    """After any fault: last.npz (when there) loads, best.npz too, metrics.csv parses and holds
    the epochs of last.npz (or one fewer: a kill between the two writes). Returns the epoch."""
    epoch = 0
    if (run / "last.npz").exists():
        _, meta = load_checkpoint(run / "last.npz")
        epoch = meta["epoch"]
        assert epoch >= 1
        _, best = load_checkpoint(run / "best.npz")
        assert 1 <= best["epoch"]
    if (run / "metrics.csv").exists():
        rows = read_metrics(run)
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        assert len(rows) in (epoch, epoch - 1), (len(rows), epoch)
    if (run / "config.yaml").exists():
        load_config(run / "config.yaml")
    return epoch


def table_headers(output: str) -> list[str]:
    """The column headers of the first boxed Rich table in ``output``, each header's lines
    joined (``learning_`` over ``rate`` -> ``learning_rate``)."""
    lines = output.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    end = next(i for i, line in enumerate(lines[top + 1:]) if line.startswith("┡"))
    rows = [line.strip().strip("┃").split("┃") for line in lines[top + 1:top + 1 + end]]
    return ["".join(part.strip() for part in column) for column in zip(*rows)]


def assert_fits(output: str, width: int = 80) -> None:
    """Nothing cut (no ellipsis) and no line wider than ``width``."""
    assert "…" not in output, output
    assert max(len(line) for line in output.splitlines()) <= width, output


def cli_process(*args, timeout=60):
    """``cnn ARGS`` in a subprocess (a FIFO must not hang the test): (exit code, stdout, stderr)."""
    COUNTS["hostile"] += 1
    p = subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], env=ENV,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr


def one_error_line(code, out, err, *phrases) -> str:
    """The one ``Error:`` line of a subprocess that exited 1, holding every phrase."""
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert_one_line(lines[0])
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]
