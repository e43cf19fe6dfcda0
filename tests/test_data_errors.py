"""Broken data files: ``.npz`` arrays (wrong magic, missing arrays, NaN pixels, bad labels,
mismatched sizes...) and MNIST IDX files (bad magic, truncation, bad labels, broken gzip...),
read directly and through ``cnn train``; random bytes and headers; ``data.limit`` 0 and 1.

Every hostile input ends in one line naming the file and the problem, exit code 1 and no
traceback (in-process: only a cnncli.errors.CnnError with a one-line message); the CLI's
"unexpected ... (a bug in cnncli ...)" line counts as a failure. No run directory is created for broken data.

The random cases use hypothesis with ``derandomize=True`` and bounded example counts, and numpy
Generators with fixed seeds, so every run tries the same cases (helpers.COUNTS counts them; the
count is printed at the end of the session).
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnncli.errors import DataError
from helpers import (COUNTS, SHAPES, assert_cli_error, assert_one_line, expect_cnn_error, npy_bytes,
                     npz_arrays, npz_config, write_config)


def _bad_npz(kind: str, path: Path) -> Path:
    a = npz_arrays()
    if kind == "text file":
        path.write_text("x_train,y_train\n1,2\n")
        return path
    if kind == "npy file":
        with open(path, "wb") as f:
            np.save(f, a["x_train"])
        return path
    if kind == "truncated":
        np.savez(path, **a)
        path.write_bytes(path.read_bytes()[:700])
        return path
    if kind == "text member":
        with zipfile.ZipFile(path, "w") as z:
            for k in ("x_train", "y_train", "x_test"):
                z.writestr(k + ".npy", npy_bytes(a[k]))
            z.writestr("y_test", "0 1 2 3")
        return path
    if kind == "missing y_test":
        del a["y_test"]
    elif kind == "wrong count":
        a["y_train"] = a["y_train"][:-1]
    elif kind == "NaN pixels":
        a["x_train"][3, 0, 1, 1] = np.nan
    elif kind == "inf pixels":
        a["x_test"][0, 0, 0, 0] = -np.inf
    elif kind == "negative label":
        a["y_train"][5] = -1
    elif kind == "label beyond class_names":
        a["y_test"][2] = 7
    elif kind == "label 2**40":
        del a["class_names"]
        a["y_train"][0] = 2**40
    elif kind == "uint64 label beyond int64":
        del a["class_names"]
        a["y_train"] = a["y_train"].astype(np.uint64)
        a["y_train"][0] = 2**64 - 1
    elif kind == "fractional labels":
        a["y_train"] = a["y_train"] + 0.5
    elif kind == "NaN labels":
        a["y_test"] = a["y_test"].astype(float)
        a["y_test"][1] = np.nan
    elif kind == "string labels":
        a["y_train"] = a["y_train"].astype(str)
    elif kind == "bad one-hot":
        y = np.zeros((40, 4))
        y[:, 0] = y[:, 1] = 1
        a["y_train"] = y
    elif kind == "mismatched image sizes":
        a["x_test"] = np.random.default_rng(1).random((20, 1, 4, 4))
    elif kind == "zero training samples":
        a["x_train"], a["y_train"] = a["x_train"][:0], a["y_train"][:0]
    elif kind == "zero test samples":
        a["x_test"], a["y_test"] = a["x_test"][:0], a["y_test"][:0]
    elif kind == "zero-pixel images":
        a["x_train"], a["x_test"] = np.zeros((40, 1, 0, 3)), np.zeros((20, 1, 0, 3))
    elif kind == "5-D images":
        a["x_train"] = a["x_train"][:, None]
    elif kind == "boolean images":
        a["x_train"] = a["x_train"] > 0.5
    elif kind == "complex images":
        a["x_train"] = a["x_train"].astype(complex)
    elif kind == "string images":
        a["x_train"] = np.full((40, 1, 3, 3), "x")
    elif kind == "object arrays":
        a["x_train"] = np.empty(40, dtype=object)
        np.savez(path, **a)  # allow_pickle is the default when saving
        return path
    elif kind == "0-d class_names":
        a["class_names"] = np.array("abcd")
    elif kind == "3 classes for a 4-output network":
        a["y_train"] %= 3
        a["y_test"] %= 3
        a["class_names"] = np.array(["a", "b", "c"])
    elif kind == "1x1 images for a 2x2 kernel":
        a["x_train"], a["x_test"] = np.zeros((40, 1, 1, 1)), np.zeros((20, 1, 1, 1))
    else:
        raise AssertionError(kind)
    np.savez(path, **a)
    return path


NPZ_CASES = {
    "text file": "not a .npz file: no zip archive found",
    "npy file": "is a single .npy array",
    "truncated": "not a .npz file: no zip archive found",
    "text member": "y_test in the archive is not a NumPy array",
    "missing y_test": "missing array(s) y_test",
    "wrong count": "y_train has 39 labels but there are 40 images",
    "NaN pixels": "x_train holds 1 NaN or infinite value(s)",
    "inf pixels": "x_test holds 1 NaN or infinite value(s)",
    "negative label": "y_train holds a negative label (-1)",
    "label beyond class_names": "labels go up to 7, but class_names has only 4 names",
    "label 2**40": "y_train holds the label 1099511627776",
    "uint64 label beyond int64": "y_train holds the label 18446744073709551615",
    "fractional labels": "y_train must hold integer class labels",
    "NaN labels": "y_test must hold integer class labels",
    "string labels": "y_train must hold integer class labels, got dtype <U",
    "bad one-hot": "y_train is 2-D, so it must be one-hot",
    "mismatched image sizes": "x_train images are 1x3x3 but x_test images are 1x4x4",
    "zero training samples": "must each hold at least one image, got 0 and 20",
    "zero test samples": "must each hold at least one image, got 40 and 0",
    "zero-pixel images": "x_train images must hold at least one pixel",
    "5-D images": "x_train must have shape (N, H, W) or (N, C, H, W)",
    "boolean images": "x_train must hold numbers",
    "complex images": "x_train must hold numbers",
    "string images": "x_train must hold numbers",
    "object arrays": "pickled Python objects",
    "0-d class_names": "class_names must be a list of 1 to 100,000 names",
    "3 classes for a 4-output network": "but the npz data has 3 classes",
    "1x1 images for a 2x2 kernel": "kernel_size 2 is larger than its (padded) input 1x1",
}


@pytest.mark.parametrize("kind", sorted(NPZ_CASES))
def test_broken_npz_data(cnn, tmp_path, kind):
    """``cnn train`` on a broken .npz: one line naming the data file and the problem, exit 1,
    and no run directory."""
    data = _bad_npz(kind, tmp_path / "my data.npz")
    config = npz_config(tmp_path, data)
    run = tmp_path / "run"
    # a good file that the config's network does not fit: the config is named
    named = config if kind in ("3 classes for a 4-output network", "1x1 images for a 2x2 kernel") else data
    assert_cli_error(cnn("train", config, "--run-dir", run), named, NPZ_CASES[kind])
    assert not run.exists()


def test_npz_loader_raises_only_data_errors(tmp_path):
    """The same files read directly: only DataError, one line."""
    from cnncli.data.npz import load_npz

    for kind in sorted(NPZ_CASES):
        data = _bad_npz(kind, tmp_path / f"{kind}.npz")
        if kind in ("3 classes for a 4-output network", "1x1 images for a 2x2 kernel"):
            load_npz(data)  # a valid file; only the network does not fit it
            continue
        expect_cnn_error(load_npz, data, kind=DataError, phrases=[data, NPZ_CASES[kind]])


def test_npz_fuzzed_bytes(tmp_path):
    """A good .npz with random bytes overwritten: a DataError, or the same arrays."""
    from cnncli.data.npz import load_npz

    good_path = tmp_path / "good.npz"
    np.savez(good_path, **npz_arrays())
    good = good_path.read_bytes()
    ref = load_npz(good_path)
    rng = np.random.default_rng(5)
    path = tmp_path / "fuzzed.npz"
    for _ in range(150):
        data = bytearray(good)
        pos = int(rng.integers(len(data)))
        data[pos:pos + 2] = rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        COUNTS["hostile"] += 1
        try:
            ds = load_npz(path)
        except DataError as exc:
            assert_one_line(str(exc))
            continue
        for k in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(ds, k), getattr(ref, k))


def test_data_limit_zero_and_one(cnn, tmp_path):
    assert_cli_error(cnn("train", SHAPES, "--run-dir", tmp_path / "r0", "--set", "data.limit=0"),
                     SHAPES, "data.limit: must be an integer >= 1, got 0")
    assert not (tmp_path / "r0").exists()
    result = cnn("train", SHAPES, "--run-dir", tmp_path / "r1", "--set", "data.limit=1",
                 "--epochs", 1, "--quiet")
    COUNTS["hostile"] += 1
    assert result.exit_code == 0, result.output


def idx_bytes(a: np.ndarray, magic: bytes | None = None) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, a.ndim])
    return head + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_mnist(folder: Path, n_train=30, n_test=10, seed=0) -> dict:
    """Four small IDX files (train images gzip-compressed, the others not). Returns the paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train_images": folder / "train-images-idx3-ubyte.gz",
        "train_labels": folder / "train-labels-idx1-ubyte",
        "test_images": folder / "t10k-images-idx3-ubyte",
        "test_labels": folder / "t10k-labels-idx1-ubyte",
    }
    files["train_images"].write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (n_train, 28, 28)))))
    files["train_labels"].write_bytes(idx_bytes(rng.integers(0, 10, n_train)))
    files["test_images"].write_bytes(idx_bytes(rng.integers(0, 256, (n_test, 28, 28))))
    files["test_labels"].write_bytes(idx_bytes(rng.integers(0, 10, n_test)))
    return files


MNIST_NET = [{"type": "conv2d", "out_channels": 2, "kernel_size": 4, "stride": 4},
             {"type": "flatten"}, {"type": "dense", "out_features": 10}]


def _damage_idx(kind: str, files: dict) -> Path:
    """Damage one file; return it (the file the error must name)."""
    rng = np.random.default_rng(3)

    def raw(key):
        data = files[key].read_bytes()
        return gzip.decompress(data) if files[key].name.endswith(".gz") else data

    def put(key, data):
        files[key].write_bytes(gzip.compress(data) if files[key].name.endswith(".gz") else data)
        return files[key]

    if kind == "wrong magic":
        return put("test_images", b"\x12\x34" + raw("test_images")[2:])
    if kind == "float data type byte":
        return put("test_labels", b"\x00\x00\x0d\x01" + raw("test_labels")[4:])
    if kind == "labels with an images magic":
        return put("test_labels", b"\x00\x00\x08\x03" + raw("test_labels")[4:])
    if kind == "zero dimensions":
        return put("train_labels", b"\x00\x00\x08\x00")
    if kind == "header cut short":
        return put("train_labels", raw("train_labels")[:6])
    if kind == "data cut short":
        return put("test_images", raw("test_images")[:-100])
    if kind == "extra bytes":
        return put("test_labels", raw("test_labels") + b"\x00\x01")
    if kind == "count mismatch":
        return put("test_labels", idx_bytes(rng.integers(0, 10, 9)))
    if kind == "label 10":
        return put("train_labels", idx_bytes(np.r_[rng.integers(0, 10, 29), 10]))
    if kind == "label 255":
        return put("test_labels", idx_bytes(np.r_[255, rng.integers(0, 10, 9)]))
    if kind == "14x14 test images":
        return put("test_images", idx_bytes(rng.integers(0, 256, (10, 14, 14))))
    if kind == "zero samples":
        put("train_images", idx_bytes(np.zeros((0, 28, 28))))
        return put("train_labels", idx_bytes(np.zeros(0)))
    if kind == "huge announced count":
        return put("test_images", b"\x00\x00\x08\x03" + struct.pack(">III", 2**32 - 1, 2**16, 2**16))
    if kind == "corrupt gzip":
        data = bytearray(files["train_images"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        files["train_images"].write_bytes(bytes(data))
        return files["train_images"]
    if kind == "truncated gzip":
        data = files["train_images"].read_bytes()
        files["train_images"].write_bytes(data[: len(data) // 2])
        return files["train_images"]
    if kind == "gzip that is not gzip":
        files["train_images"].write_bytes(b"not gzip at all")
        return files["train_images"]
    raise AssertionError(kind)


IDX_CASES = {
    "wrong magic": "bad magic number 0x12340803",
    "float data type byte": "data type byte is 0x0d",
    "labels with an images magic": "expected 0x00000801",
    "zero dimensions": "expected 0x00000801",
    "header cut short": "truncated",
    "data cut short": "truncated",
    "extra bytes": "wrong count",
    "count mismatch": "wrong count: 9 labels",
    "label 10": "label 10 at index 29 is not a digit",
    "label 255": "label 255 at index 0 is not a digit",
    "14x14 test images": "images are 14x14, MNIST images are 28x28",
    "zero samples": "must each hold at least one sample, got 0",
    "huge announced count": "implausibly many",
    "corrupt gzip": "",
    "truncated gzip": "truncated",
    "gzip that is not gzip": "not a valid gzip file",
}


@pytest.mark.parametrize("kind", sorted(IDX_CASES))
def test_broken_idx_files(cnn, tmp_path, kind):
    """MNIST from a data.path folder whose files are damaged: read_idx/load_mnist raise a
    one-line DataError naming the file; ``cnn train`` exits 1 with that line and creates no run
    directory. (IDX pixels are bytes: they cannot be NaN or infinite.)"""
    from cnncli.data.mnist import load_mnist

    folder = tmp_path / "mnist files"
    files = write_mnist(folder)
    damaged = _damage_idx(kind, files)
    phrase = IDX_CASES[kind]
    named = "data (mnist)" if kind == "zero samples" else damaged
    if kind != "zero samples":
        expect_cnn_error(load_mnist, str(folder), kind=DataError, phrases=[damaged, phrase])
    cfg = write_config(tmp_path / "mnist.yaml", {
        "data": {"name": "mnist", "path": str(folder)}, "network": MNIST_NET,
        "training": {"epochs": 1, "loss": "cross_entropy"}})
    run = tmp_path / "run"
    assert_cli_error(cnn("train", cfg, "--run-dir", run, "--offline"), named, phrase)
    assert not run.exists()


def test_good_idx_files_train(cnn, tmp_path):
    """The control: the undamaged small MNIST folder trains."""
    folder = tmp_path / "mnist"
    write_mnist(folder)
    cfg = write_config(tmp_path / "mnist.yaml", {
        "data": {"name": "mnist", "path": str(folder)}, "network": MNIST_NET,
        "training": {"epochs": 1, "loss": "cross_entropy"}})
    result = cnn("train", cfg, "--run-dir", tmp_path / "run", "--offline", "--quiet")
    assert result.exit_code == 0, result.output


def test_read_idx_fuzzed_headers(tmp_path):
    """read_idx on 300 files with random headers and lengths: a DataError or an array whose
    size matches its header."""
    from cnncli.data.mnist import read_idx

    rng = np.random.default_rng(11)
    path = tmp_path / "fuzz-idx3-ubyte"
    for i in range(300):
        ndim = int(rng.integers(0, 5))
        head = bytes([0, 0, 0x08 if i % 3 else int(rng.integers(256)), ndim])
        dims = rng.integers(0, 6, ndim) if i % 2 else rng.integers(0, 2**32, ndim, dtype=np.uint64)
        body = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        path.write_bytes(head + b"".join(struct.pack(">I", int(d)) for d in dims) + body)
        COUNTS["hostile"] += 1
        try:
            a = read_idx(path)
        except DataError as exc:
            assert_one_line(str(exc))
            assert str(path) in str(exc)
            continue
        assert a.dtype == np.uint8 and a.shape == tuple(int(d) for d in dims)
        assert a.size == len(body)
