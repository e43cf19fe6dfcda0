"""A reader that stops early (``cnn runs --json | head -c 10``): the command exits 0 with nothing
on stderr, as command-line tools do, whether the pipe closed before the first write or after
some bytes."""

import fcntl
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ENV

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def run_into_closed_pipe(args, read: int) -> tuple[int, bytes, bytes]:
    """``cnn ARGS`` with stdout a pipe (shrunk to one page) whose reader takes ``read`` bytes and
    then closes it; (exit code, what was read, stderr)."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    except OSError:
        pass
    if read == 0:
        os.close(r)
    proc = subprocess.Popen([sys.executable, "-m", "cnncli", *map(str, args)], stdout=w,
                            stderr=subprocess.PIPE, env=ENV)
    os.close(w)
    got = b""
    if read:
        while len(got) < read:
            chunk = os.read(r, read - len(got))
            if not chunk:
                break
            got += chunk
        os.close(r)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, got, err


@pytest.fixture(scope="module")
def many_runs(finished_run, tmp_path_factory):
    """A folder of 30 copies of a run: cnn runs --json writes more than the pipe holds."""
    folder = tmp_path_factory.mktemp("runs")
    for i in range(30):
        shutil.copytree(finished_run, folder / f"run-{i}")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("x") / "x.npz"
    np.savez(path, x=np.random.default_rng(0).random((300, 3, 3)))
    return path


@pytest.mark.parametrize("read", [0, 10])
def test_runs_predict_and_eval_json_into_a_reader_that_stops(finished_run, many_runs, images, read):
    best = finished_run / "best.npz"
    for args in (["runs", many_runs, "--json"], ["predict", best, images, "--json", "-q"],
                 ["eval", best, "--json"]):
        code, got, err = run_into_closed_pipe(args, read)
        assert (code, err.decode()) == (0, ""), args
        assert len(got) == read, args
        if read:
            assert got.startswith(b"[" if args[0] != "eval" else b"{"), got
