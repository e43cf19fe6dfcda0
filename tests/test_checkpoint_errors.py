"""Damaged, foreign and fake checkpoints: bit flips, truncation, tampered meta and arrays,
files that are not checkpoints at all. ``load_network``, ``cnn eval`` and ``cnn train --resume``
refuse each in one line naming the file, or (a flip in a field nothing reads) load exactly the
same data; a refused resume leaves the run directory byte for byte as it was.

Every hostile input ends in one line naming the file and the problem, exit code 1 and no
traceback (in-process: only a cnncli.errors.CnnError with a one-line message); the CLI's
"unexpected ... (a bug in cnncli ...)" line counts as a failure.
"""

from __future__ import annotations

import collections
import copy
import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnncli.checkpoint import load_checkpoint, load_network
from cnncli.errors import CheckpointError
from helpers import (COUNTS, assert_cli_error, assert_one_line, nest, npy_bytes, read_metrics,
                     snapshot, strip_seconds)


def save_raw(path: Path, arrays: dict, meta) -> Path:
    """An .npz as a checkpoint would be, but with anything as meta (a dict is dumped as JSON;
    a string is stored as is)."""
    payload = dict(arrays)
    if meta is not None:
        payload["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **payload)
    return path


def test_bit_flips_never_load_silently_wrong_data(finished_run, tmp_path):
    """500 single-bit flips and 100 random-byte overwrites anywhere in last.npz: each either
    fails with a one-line CheckpointError naming the file, or (a flip in a field nothing reads,
    such as a zip timestamp) loads the very same arrays and meta."""
    good = (finished_run / "last.npz").read_bytes()
    arrays0, meta0 = load_checkpoint(finished_run / "last.npz")
    rng = np.random.default_rng(1234)
    path = tmp_path / "flipped.npz"
    outcomes = collections.Counter()
    for i in range(600):
        data = bytearray(good)
        if i < 500:
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        else:  # a few bytes overwritten, biased to the headers at the start and the end
            pos = int(rng.integers(600)) if i % 2 else len(data) - 1 - int(rng.integers(300))
            data[pos:pos + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        COUNTS["faults"] += 1
        try:
            net, cfg, meta, arrays = load_network(path)
        except CheckpointError as exc:
            assert_one_line(str(exc))
            assert str(path) in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert meta == meta0
        assert arrays.keys() == arrays0.keys()
        for k in arrays:
            assert arrays[k].tobytes() == arrays0[k].tobytes(), k
    assert outcomes["refused"] > 500, outcomes


def test_bit_flips_through_eval_and_resume(cnn, finished_run, tmp_path):
    """A byte of last.npz inverted: ``cnn eval`` and ``cnn train --resume`` refuse it in one
    line naming the file (resume touching nothing), or, where the flip hit a byte nothing reads,
    give exactly what the intact file gives."""
    good = (finished_run / "last.npz").read_bytes()

    def evaluation(path):  # eval's --json result, without the checkpoint's own path
        result = cnn("eval", path, "--json")
        assert result.exit_code == 0, result.output
        return {k: v for k, v in json.loads(result.stdout).items() if k != "checkpoint"}

    expected = evaluation(finished_run / "last.npz")
    refused = collections.Counter()
    rng = np.random.default_rng(99)
    for i in range(6):
        data = bytearray(good)
        pos = int(rng.integers(len(data)))
        data[pos] ^= 0xFF
        bad = tmp_path / f"flip{i}.npz"
        bad.write_bytes(bytes(data))
        COUNTS["faults"] += 1
        result = cnn("eval", bad)
        if result.exit_code != 0:
            assert_cli_error(result, bad)
            refused["eval"] += 1
        else:  # the flip hit a byte nothing reads: the very same evaluation
            assert evaluation(bad) == expected
        run = tmp_path / f"run{i}"
        shutil.copytree(finished_run, run)
        (run / "last.npz").write_bytes(bytes(data))
        before = snapshot(run)
        result = cnn("train", "--resume", run, "--quiet")
        if result.exit_code != 0:
            assert_cli_error(result, run / "last.npz")
            assert snapshot(run) == before  # nothing touched, the damaged file kept for inspection
            refused["resume"] += 1
        else:  # the 3-epoch run was complete: a resume that accepts the file trains nothing
            assert "already complete" in result.output, result.output
            assert strip_seconds(read_metrics(run)) == strip_seconds(read_metrics(finished_run))
    assert refused["eval"] >= 1 and refused["resume"] >= 1, refused  # the refusals were tried


@pytest.mark.parametrize("tenth", range(10))
def test_truncated_checkpoints(cnn, finished_run, tmp_path, tenth):
    """last.npz cut at every tenth of its length (0: empty): eval and resume refuse it in one
    line, and the run directory is left exactly as it was."""
    good = (finished_run / "last.npz").read_bytes()
    cut = good[: len(good) * tenth // 10]
    bad = tmp_path / "cut.npz"
    bad.write_bytes(cut)
    COUNTS["faults"] += 1
    assert_cli_error(cnn("eval", bad), bad, "is empty" if tenth == 0 else "checkpoint")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "last.npz").write_bytes(cut)
    before = snapshot(run)
    assert_cli_error(cnn("train", "--resume", run, "--epochs", 5), run / "last.npz")
    assert snapshot(run) == before


def _tamper(kind: str, arrays: dict, meta: dict):
    """(arrays, meta) of a damaged or foreign checkpoint; meta may become a string."""
    a, m = dict(arrays), copy.deepcopy(meta)
    if kind == "meta is broken JSON":
        return a, json.dumps(m)[:-7]
    if kind == "meta is a JSON list":
        return a, "[1, 2, 3]"
    if kind == "meta without format_version":
        del m["format_version"]
    elif kind == "format_version is a string":
        m["format_version"] = "1"
    elif kind == "written by a newer cnncli":
        m["format_version"] = 99
    elif kind == "meta names a layer that does not exist":
        m["config"]["network"][3]["type"] = "warp_drive"
    elif kind == "meta config is a list":
        m["config"] = [1, 2]
    elif kind == "meta config nested 900 deep":
        m["config"]["data"] = nest(900)
    elif kind == "epoch is negative":
        m["epoch"] = -3
    elif kind == "epoch is a string":
        m["epoch"] = "3"
    elif kind == "epoch is true":
        m["epoch"] = True
    elif kind == "input_shape is a string":
        m["input_shape"] = "1x3x3"
    elif kind == "input_shape holds a zero":
        m["input_shape"] = [1, 0, 3]
    elif kind == "input_shape is another image size":
        m["input_shape"] = [1, 5, 5]
    elif kind == "class_names is empty":
        m["class_names"] = []
    elif kind == "class_names are numbers":
        m["class_names"] = [1, 2, 3, 4]
    elif kind == "history is a number":
        m["history"] = 7
    elif kind == "history is short":
        m["history"] = m["history"][:1]
    elif kind == "history rows lack metrics":
        m["history"] = [{"epoch": i + 1} for i in range(m["epoch"])]
    elif kind == "best is a string":
        m["best"] = "epoch 2"
    elif kind == "early_stopping is a list":
        m["early_stopping"] = [1]
    elif kind == "rng_state is garbage":
        m["rng_state"] = {"bit_generator": "PCG64", "state": "x"}
    elif kind == "a weight of the wrong shape":
        a["layers.0.W"] = a["layers.0.W"].reshape(-1)
    elif kind == "a weight transposed":
        a["layers.2.W"] = np.ascontiguousarray(a["layers.2.W"].T)
    elif kind == "integer weights":
        a["layers.0.W"] = a["layers.0.W"].astype(np.int64)
    elif kind == "float32 weights in a float64 network":
        a["layers.0.W"] = a["layers.0.W"].astype(np.float32)
    elif kind == "complex weights":
        a["layers.0.W"] = a["layers.0.W"].astype(np.complex128)
    elif kind == "a weight missing":
        del a["layers.4.b"]
    elif kind == "an extra weight":
        a["layers.9.W"] = np.zeros(3)
    elif kind == "momentum of the wrong shape":
        a["optimizer.velocity.layers.0.W"] = np.zeros(5)
    elif kind == "momentum of the wrong dtype":
        a["optimizer.velocity.layers.0.W"] = a["optimizer.velocity.layers.0.W"].astype(np.float32)
    elif kind == "optimizer array of nothing":
        a["optimizer.junk"] = np.ones((2, 2))
    elif kind == "optimizer strings":
        a["optimizer.t"] = np.array("three")
    elif kind == "a string array":
        a["layers.0.W"] = np.array(["a", "b"])
    else:
        raise AssertionError(kind)
    return a, m


# kind: (phrase of `cnn eval`, or None where eval rightly loads the file: it reads no optimizer
#        state; phrase of `cnn train --resume`)
TAMPERED = {
    "meta is broken JSON": ("'meta' is not valid JSON", "'meta' is not valid JSON"),
    "meta is a JSON list": ("no format_version", "no format_version"),
    "meta without format_version": ("no format_version", "no format_version"),
    "format_version is a string": ("format_version must be an integer", "format_version must be an integer"),
    "written by a newer cnncli": ("by a newer cnncli", "by a newer cnncli"),
    "meta names a layer that does not exist": ("unknown layer type 'warp_drive'", "was written by another run"),
    "meta config is a list": ("config must be a mapping", "config must be a mapping"),
    "meta config nested 900 deep": ("nested more than", "nested more than"),
    "epoch is negative": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "epoch is a string": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "epoch is true": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "input_shape is a string": ("input_shape must be a list", "input_shape must be a list"),
    "input_shape holds a zero": ("input_shape must be a list", "input_shape must be a list"),
    "input_shape is another image size": ("in_features is 16, but the previous layer outputs 64",
                                          "was written for 1x5x5 images in 4 classes, but this run's data has 1x3x3"),
    "class_names is empty": ("class_names must be a non-empty list", "class_names must be a non-empty list"),
    "class_names are numbers": ("class_names must be a non-empty list", "class_names must be a non-empty list"),
    "history is a number": ("history must be a list", "history must be a list"),
    "history is short": ("history must be a list of at least epoch (3) rows", "history must be a list"),
    "history rows lack metrics": ("history[0] must be the metrics of epoch 1", "history[0]"),
    "best is a string": ("best must be", "best must be"),
    "early_stopping is a list": ("early_stopping must be", "early_stopping must be"),
    "rng_state is garbage": ("rng_state is not a PCG64 state", "rng_state is not a PCG64 state"),
    "a weight of the wrong shape": ("layers.0.W has shape (16,), the network expects (4, 1, 2, 2)",
                                    "layers.0.W is float64 (16,), the network expects float64 (4, 1, 2, 2)"),
    "a weight transposed": ("layers.2.W has shape (8, 16)", "layers.2.W is float64 (8, 16)"),
    "integer weights": ("layers.0.W has dtype int64, expected floats", "layers.0.W has dtype int64"),
    "float32 weights in a float64 network": ("layers.0.W has dtype float32, the network expects float64",
                                             "layers.0.W is float32 (4, 1, 2, 2), the network expects float64"),
    "complex weights": ("layers.0.W has dtype complex128, expected floats", "complex128"),
    "a weight missing": ("missing ['layers.4.b']", "missing ['layers.4.b']"),
    "an extra weight": ("unexpected ['layers.9.W']", "unexpected ['layers.9.W']"),
    "momentum of the wrong shape": (None, "optimizer.velocity.layers.0.W is float64 (5,), but layers.0.W is float64 (4, 1, 2, 2)"),
    "momentum of the wrong dtype": (None, "optimizer.velocity.layers.0.W is float32"),
    "optimizer array of nothing": (None, "optimizer.junk belongs to no parameter"),
    "optimizer strings": ("optimizer.t has dtype <U5, expected numbers", "optimizer.t has dtype <U5"),
    "a string array": ("layers.0.W has dtype <U1, expected floats", "layers.0.W has dtype <U1"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_damaged_and_foreign_checkpoints(cnn, finished_run, tmp_path, kind):
    """Each damaged checkpoint is refused by ``cnn eval`` and by ``cnn train --resume`` in one
    line naming the file and the problem; the run directory is left exactly as it was."""
    eval_phrase, resume_phrase = TAMPERED[kind]
    arrays, meta = load_checkpoint(finished_run / "last.npz")
    arrays, meta = _tamper(kind, arrays, meta)
    bad = save_raw(tmp_path / "bad.npz", arrays, meta)
    result = cnn("eval", bad)
    if eval_phrase is None:
        assert result.exit_code == 0, result.output  # eval never reads the optimizer state
    else:
        assert_cli_error(result, bad, eval_phrase)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copyfile(bad, run / "last.npz")
    before = snapshot(run)
    result = cnn("train", "--resume", run, "--epochs", 5, "--quiet")
    assert_cli_error(result, run / "last.npz", resume_phrase)
    assert snapshot(run) == before


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("kind,phrase", [
    ("zip of text", "'readme.txt' in the archive is not a NumPy array"),
    ("zip with a text member", "is not a NumPy array"),
    ("npy, not npz", "a single array, not an .npz"),
    ("object arrays", "pickled Python objects"),
    ("pickled meta", "pickled Python objects"),
    ("2-D meta", "'meta' must be a 0-d string array"),
    ("gzip file", "not an .npz archive"),
    ("text file", "not an .npz archive"),
    ("huge announced array shape", "corrupt or truncated checkpoint"),
    ("encrypted-flag zip", "corrupt or truncated checkpoint"),
])
def test_files_that_are_not_checkpoints(cnn, finished_run, tmp_path, kind, phrase):
    bad = tmp_path / "not-a-checkpoint.npz"
    good = (finished_run / "last.npz").read_bytes()
    if kind == "zip of text":
        _zip(bad, {"readme.txt": "hello"})
    elif kind == "zip with a text member":
        _zip(bad, {"meta.npy": npy_bytes(np.array("{}")), "notes.txt": "hi"})
    elif kind == "npy, not npz":
        np.save(bad.with_suffix(".npy"), np.zeros(3))
        bad.with_suffix(".npy").rename(bad)
    elif kind == "object arrays":
        np.savez(bad, meta=np.array("{}"), w=np.array([{"a": 1}], dtype=object))
    elif kind == "pickled meta":
        np.savez(bad, meta=np.array({"format_version": 1}, dtype=object))
    elif kind == "2-D meta":
        np.savez(bad, meta=np.array([["{}"]]))
    elif kind == "gzip file":
        bad.write_bytes(gzip.compress(good))
    elif kind == "text file":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "huge announced array shape":  # a member announcing a 10-billion-value array
        data = bytearray(good)
        header = b"'shape': (4, 1, 2, 2)"
        i = bytes(data).find(header)
        assert i > 0
        data[i:i + len(header)] = b"'shape': (9999999999,)".ljust(len(header))[: len(header)]
        bad.write_bytes(bytes(data))
    elif kind == "encrypted-flag zip":
        data = bytearray(good)
        data[6] |= 1  # general purpose flag bit 0 of the first local header: encrypted
        i = bytes(data).rfind(b"PK\x01\x02")
        data[i + 8] |= 1
        bad.write_bytes(bytes(data))
    COUNTS["faults"] += 1
    assert_cli_error(cnn("eval", bad), bad, phrase)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copyfile(bad, run / "last.npz")
    before = snapshot(run)
    assert_cli_error(cnn("train", "--resume", run), run / "last.npz", phrase)
    assert snapshot(run) == before
