"""Named pipes and devices (issue 24, item 13): cnncli reads only regular files, with a size
limit, everywhere it reads a file (cnncli.files). A FIFO or a device as a config, a checkpoint,
an .npz, or as any file of a run folder that ``cnn runs`` reads: one line (or, for ``cnn runs``,
the run listed as damaged), no hang. Each command runs in a subprocess with a timeout."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from cnncli.errors import CnnError
from cnncli.files import FileProblem, check_regular, read_regular
from helpers import SHAPES, cli_process as cli
from helpers import one_error_line as error_line


def test_the_helper_refuses_fifos_devices_directories_and_large_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    for path, phrase in ((fifo, "named pipe"), ("/dev/zero", "character device"),
                         ("/dev/urandom", "character device"), (tmp_path, "directory")):
        with pytest.raises(FileProblem, match=phrase):
            read_regular(path, 100)
        with pytest.raises(FileProblem, match=phrase):
            check_regular(path)
    with pytest.raises(FileProblem, match="at most 100"):
        read_regular(big, 100)
    assert read_regular(big, 101) == b"x" * 101
    assert isinstance(FileProblem(big, "x"), CnnError)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "/dev/urandom"])
def test_a_special_file_as_config_checkpoint_or_npz_is_one_line(tmp_path, target, finished_run):
    path = tmp_path / "special"
    if target == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(target, path)
    kind = "named pipe" if target == "fifo" else "character device"
    for args in (("train", path), ("summary", path), ("eval", path), ("export", path,
                                                                       "-o", tmp_path / "m.onnx")):
        error_line(*cli(*args), kind)
    npz = tmp_path / "x.npz"
    os.symlink(path, npz)
    error_line(*cli("predict", finished_run / "best.npz", npz), "regular file")
    cfg = yaml.safe_load(SHAPES.read_text())
    cfg["data"] = {"name": "npz", "path": str(npz)}
    (tmp_path / "npz.yaml").write_text(yaml.safe_dump(cfg))
    error_line(*cli("train", tmp_path / "npz.yaml"), kind)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    code, out, err = cli("train", SHAPES, "--run-dir", folder / "run", "--epochs", 1, "-q",
                         timeout=300)
    assert code == 0, err
    return folder / "run"


@pytest.mark.parametrize("name", ["config.yaml", "metrics.csv", "train.log", ".lock", "last.npz"])
def test_a_fifo_in_a_run_folder_does_not_hang_cnn_runs(finished_run, tmp_path, name):
    root = tmp_path / "runs"
    run = root / "r"
    shutil.copytree(finished_run, run)
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    code, out, err = cli("runs", root, "--json")
    assert code == 0, err
    row = json.loads(out)[0]
    if name in ("config.yaml", "metrics.csv"):
        assert row["state"] == "damaged" and "named pipe" in row["note"], row
    if name in ("last.npz",):
        error_line(*cli("eval", run / name), "named pipe")
