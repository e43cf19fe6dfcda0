"""Fashion-MNIST and CIFAR-10: format-exact tiny files (and corrupt, truncated and wrong-checksum
ones), the checked download from a local HTTP server only, offline behaviour, ``limit``,
``cnn data export``/``preview``, and, when ../shared/data holds them, the real sets."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.data import cifar10, fashion_mnist, load_dataset, mnist
from cnncli.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _real(name: str, present) -> Path | None:
    folders = [SHARED / name]
    if os.environ.get("CNNCLI_DATA_DIR"):
        folders.append(Path(os.environ["CNNCLI_DATA_DIR"]).expanduser() / name)
    for f in folders:
        if f.is_dir() and present(f):
            return f
    return None


FASHION_DIR = _real("fashion-mnist", lambda f: not mnist.missing_files(f))
CIFAR_DIR = _real("cifar10", cifar10.has_files)
needs_fashion = pytest.mark.skipif(
    FASHION_DIR is None, reason=f"the four Fashion-MNIST files are in neither {SHARED / 'fashion-mnist'} "
    "nor $CNNCLI_DATA_DIR/fashion-mnist (run: cnn data download fashion_mnist)")
needs_cifar = pytest.mark.skipif(
    CIFAR_DIR is None, reason=f"the CIFAR-10 files are in neither {SHARED / 'cifar10'} nor "
    "$CNNCLI_DATA_DIR/cifar10 (run: cnn data download cifar10)")
runner = CliRunner()


# --------------------------------------------------------------------------- format-exact files
def idx_bytes(a: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def write_fashion(folder: Path, n_train=20, n_test=10, seed=0) -> dict:
    """The four .gz files, small; returns {file name: (array, md5)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test)[::-1] % 10)
    out = {}
    for name, arr in zip(mnist.FILES, arrays):
        data = gzip.compress(idx_bytes(arr.astype(np.uint8)), mtime=0)
        (folder / f"{name}.gz").write_bytes(data)
        out[f"{name}.gz"] = (arr, hashlib.md5(data).hexdigest())
    return out


def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records of the binary format: label byte, then R, G, B planes of 32x32."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = (np.arange(n) + seed) % 10
    raw = b"".join(bytes([int(y[i])]) + x[i].tobytes() for i in range(n))
    return raw, x, y


META = b"".join(f"{n}\n".encode() for n in cifar10.CLASS_NAMES) + b"\n"


def write_cifar(folder: Path, n=6, meta=True) -> dict:
    """The six .bin files (n records each) and batches.meta.txt; returns {file: (x, y, bytes)}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(cifar10.BIN_FILES):
        raw, x, y = cifar_records(n, i)
        (folder / name).write_bytes(raw)
        out[name] = (x, y, raw)
    if meta:
        (folder / cifar10.META_FILE).write_bytes(META)
    return out


def cifar_tarball(dest: Path, files: dict, meta=True) -> str:
    """A cifar-10-binary.tar.gz of ``files`` under cifar-10-batches-bin/; returns its md5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        items = [(n, v[2]) for n, v in files.items()] + ([(cifar10.META_FILE, META)] if meta else [])
        for name, data in items:
            info = tarfile.TarInfo(f"{cifar10.TAR_FOLDER}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    dest.write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


def one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- a local server only
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (url, folder, requests)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Its own cache, online, no proxies, mirrors that cannot reach the real network."""
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CNNCLI_OFFLINE", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for module in (fashion_mnist, cifar10):
        monkeypatch.setattr(module, "MIRRORS", [closed_port_url()])
    monkeypatch.setattr(mnist, "TIMEOUT", 5.0)


def cfg(name, path=None, limit=None):
    return {"name": name, "path": None if path is None else str(path), "limit": limit}


# --------------------------------------------------------------------------- fashion_mnist
def test_fashion_mnist_from_a_folder_shapes_names_and_limit(tmp_path):
    files = write_fashion(tmp_path / "f")
    ds = load_dataset(cfg("fashion_mnist", tmp_path / "f"), 0)
    assert ds.name == "fashion_mnist" and ds.x_train.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (10, 1, 28, 28) and ds.pixel_max == 255.0
    np.testing.assert_array_equal(ds.x_test[:, 0], files["t10k-images-idx3-ubyte.gz"][0])
    np.testing.assert_array_equal(ds.y_test, files["t10k-labels-idx1-ubyte.gz"][0])
    assert ds.class_names[0] == "t-shirt/top" and ds.class_names[9] == "ankle boot"
    assert len(ds.class_names) == 10
    limited = load_dataset(cfg("fashion_mnist", tmp_path / "f", limit=7), 0)
    assert len(limited.y_train) == 7 and len(limited.y_test) == 10


def test_fashion_mnist_download_checks_the_md5_and_fills_its_own_cache(tmp_path, monkeypatch, served):
    url, root, requests = served
    files = write_fashion(root)
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [url])
    monkeypatch.setattr(fashion_mnist, "MD5", {k: v[1] for k, v in files.items()})
    ds = load_dataset(cfg("fashion_mnist"), 0)
    assert len(ds.y_train) == 20 and len(requests) == 4
    cache = tmp_path / "data" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    assert not (tmp_path / "data" / "mnist").exists()


def test_fashion_mnist_wrong_checksum_names_both_values(tmp_path, monkeypatch, served):
    url, root, _ = served
    files = write_fashion(root)
    md5 = {k: v[1] for k, v in files.items()}
    md5["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [url])
    monkeypatch.setattr(fashion_mnist, "MD5", md5)
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("fashion_mnist"), 0)
    msg = one_line(exc)
    assert "Fashion-MNIST" in msg and "MD5 mismatch" in msg
    assert f"got {files['train-images-idx3-ubyte.gz'][1]}" in msg and f"expected {'0' * 32}" in msg
    assert not any(p.name.startswith("train-images") for p in (tmp_path / "data" / "fashion-mnist").iterdir())


def test_fashion_mnist_offline_never_fetches_and_says_what_to_do(tmp_path, monkeypatch, served):
    url, root, requests = served
    write_fashion(root)
    monkeypatch.setattr(fashion_mnist, "MIRRORS", [url])
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("fashion_mnist"), 0)
    msg = one_line(exc)
    assert "Fashion-MNIST is not downloaded" in msg and "cnn data download fashion_mnist" in msg
    assert str(tmp_path / "data" / "fashion-mnist") in msg and requests == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "labels"])
def test_fashion_mnist_corrupt_files_are_one_line(tmp_path, damage):
    write_fashion(tmp_path / "f")
    if damage == "truncate":
        p = tmp_path / "f" / "train-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[:200])
        want = "truncated"
    elif damage == "garbage":
        (tmp_path / "f" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
        want = "not a valid gzip file"
    else:
        (tmp_path / "f" / "t10k-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.full(10, 12, np.uint8))))
        want = "label 12 at index 0 is not a class label 0..9"
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("fashion_mnist", tmp_path / "f"), 0)
    assert want in one_line(exc)


def test_fashion_mnist_path_missing_files(tmp_path):
    write_fashion(tmp_path / "f")
    (tmp_path / "f" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("fashion_mnist", tmp_path / "f"), 0)
    assert "missing t10k-labels-idx1-ubyte" in one_line(exc)


# --------------------------------------------------------------------------- cifar10
def test_cifar10_bin_files_channel_major_uint8(tmp_path):
    files = write_cifar(tmp_path / "c", n=6)
    ds = load_dataset(cfg("cifar10", tmp_path / "c"), 0)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (6, 3, 32, 32) and ds.y_test.dtype == np.int64
    assert ds.class_names == cifar10.CLASS_NAMES and ds.pixel_max == 255.0
    # record i of data_batch_2: byte 1 + c*1024 + row*32 + col is pixel [c, row, col]
    raw = files["data_batch_2.bin"][2]
    rec = np.frombuffer(raw[3073 * 4:3073 * 5], np.uint8)
    assert ds.y_train[6 + 4] == rec[0]
    assert ds.x_train[6 + 4, 2, 5, 7] == rec[1 + 2 * 1024 + 5 * 32 + 7]
    assert ds.x_train[6 + 4, 0, 31, 0] == rec[1 + 31 * 32]
    np.testing.assert_array_equal(ds.x_test, files["test_batch.bin"][0])
    limited = load_dataset(cfg("cifar10", tmp_path / "c", limit=4), 0)
    assert len(limited.y_train) == 4 and len(limited.y_test) == 6


def test_cifar10_class_names_come_from_the_meta_file(tmp_path):
    write_cifar(tmp_path / "c")
    names = [f"k{i}" for i in range(10)]
    (tmp_path / "c" / cifar10.META_FILE).write_text("\n".join(names) + "\n\n")
    assert load_dataset(cfg("cifar10", tmp_path / "c"), 0).class_names == names
    (tmp_path / "c" / cifar10.META_FILE).write_text("a\nb\n")
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "c"), 0)
    assert "expected 10 different class names" in one_line(exc)


def test_cifar10_tarball_and_subfolder_read_the_same(tmp_path):
    files = write_cifar(tmp_path / "c" / cifar10.TAR_FOLDER)
    cifar_tarball(tmp_path / "t" / cifar10.TARBALL, files)
    a = load_dataset(cfg("cifar10", tmp_path / "c"), 0)
    b = load_dataset(cfg("cifar10", tmp_path / "t"), 0)
    assert a.fingerprint() == b.fingerprint() and b.class_names == cifar10.CLASS_NAMES


@pytest.mark.parametrize("damage,want", [
    ("truncate", "truncated or not a CIFAR-10 batch: 17,437 bytes are 5 whole 3,073-byte record(s) and 2,072 byte(s) more"),
    ("label", "label 200 of record 0 is not a class label 0..9"),
    ("empty", "empty; a CIFAR-10 batch holds 3,073-byte records"),
    ("missing", "missing data_batch_3.bin"),
])
def test_cifar10_corrupt_files_are_one_line(tmp_path, damage, want):
    write_cifar(tmp_path / "c")
    p = tmp_path / "c" / "data_batch_3.bin"
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:-1001])
    elif damage == "label":
        p.write_bytes(bytes([200]) + p.read_bytes()[1:])
    elif damage == "empty":
        p.write_bytes(b"")
    else:
        p.unlink()
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "c"), 0)
    msg = one_line(exc)
    assert want in msg
    if damage != "missing":
        assert "data_batch_3.bin" in msg


def test_cifar10_corrupt_tarball_is_one_line(tmp_path):
    files = write_cifar(tmp_path / "c")
    cifar_tarball(tmp_path / "t" / cifar10.TARBALL, files)
    p = tmp_path / "t" / cifar10.TARBALL
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "t"), 0)
    assert "not a readable .tar.gz" in one_line(exc) and str(p) in str(exc.value)
    p.write_bytes(b"\x1f\x8bnonsense")
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "t"), 0)
    assert "not a readable .tar.gz" in one_line(exc)


def test_cifar10_path_errors(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "nope"), 0)
    assert "no such directory" in one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10", tmp_path / "empty"), 0)
    assert "holds neither the six files" in one_line(exc) and cifar10.TARBALL in str(exc.value)


def test_cifar10_download_checks_the_md5(tmp_path, monkeypatch, served):
    url, root, requests = served
    files = write_cifar(tmp_path / "src")
    md5 = cifar_tarball(root / cifar10.TARBALL, files)
    monkeypatch.setattr(cifar10, "MIRRORS", [url])
    monkeypatch.setattr(cifar10, "MD5", {cifar10.TARBALL: "f" * 32})
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10"), 0)
    msg = one_line(exc)
    assert f"got {md5}, expected {'f' * 32}" in msg and "could not download CIFAR-10" in msg
    assert "cnn data download cifar10" in msg
    monkeypatch.setattr(cifar10, "MD5", {cifar10.TARBALL: md5})
    ds = load_dataset(cfg("cifar10"), 0)
    assert ds.x_train.shape == (30, 3, 32, 32)
    assert [p.name for p in (tmp_path / "data" / "cifar10").iterdir()] == [cifar10.TARBALL]
    load_dataset(cfg("cifar10"), 0)
    assert requests == ["/" + cifar10.TARBALL] * 2  # one failed, one good; then cached


def test_cifar10_offline(tmp_path, monkeypatch, served):
    url, root, requests = served
    monkeypatch.setattr(cifar10, "MIRRORS", [url])
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    with pytest.raises(DataError) as exc:
        load_dataset(cfg("cifar10"), 0)
    msg = one_line(exc)
    assert "CIFAR-10 is not downloaded" in msg and cifar10.TARBALL in msg and requests == []
    assert ".gz.gz" not in msg


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_the_offline_argument_is_honoured_without_the_variable(monkeypatch, served, name):
    """``load_dataset(..., offline=True)`` (``--offline``) never fetches, CNNCLI_OFFLINE unset."""
    url, root, requests = served
    if name == "fashion_mnist":
        write_fashion(root)
    monkeypatch.setattr(fashion_mnist if name == "fashion_mnist" else cifar10, "MIRRORS", [url])
    monkeypatch.delenv("CNNCLI_OFFLINE", raising=False)
    with pytest.raises(DataError) as exc:
        load_dataset(cfg(name), 0, True)
    assert "is not downloaded" in one_line(exc) and requests == []


# --------------------------------------------------------------------------- the CLI
def test_cli_train_with_a_bad_cifar_path_is_one_line(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch.bin").write_bytes(b"\x01" * 100)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "cifar10", "path": str(tmp_path / "c")},
        "network": [{"type": "flatten"}, {"type": "dense", "out_features": 10}],
        "training": {"epochs": 1, "loss": "cross_entropy"}}))
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "test_batch.bin" in lines[0] and "3,073-byte" in lines[0]


def test_cli_download_fashion_and_cifar_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    for name in ("fashion_mnist", "cifar10"):
        result = runner.invoke(app, ["data", "download", name, "--dir", str(tmp_path / name)])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    write_cifar(tmp_path / "have")
    result = runner.invoke(app, ["data", "download", "cifar10", "--dir", str(tmp_path / "have")])
    assert result.exit_code == 0, result.output
    assert "CIFAR-10 (30 training / 6 test images)" in result.output


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_cli_export_and_preview(tmp_path, name):
    cache = tmp_path / "data" / ("fashion-mnist" if name == "fashion_mnist" else "cifar10")
    ds_files = write_fashion(cache) if name == "fashion_mnist" else write_cifar(cache, n=10)
    assert ds_files
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "export", name, "-o", str(out), "--offline"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(cfg(name), 0)
    from cnncli.data.folder import folder_name

    folders = sorted(p.name for p in (out / "train").iterdir())
    assert folders == sorted(folder_name(n) for n in ds.class_names)
    if name == "fashion_mnist":
        assert "t-shirt-top" in folders
    back = load_dataset({"name": "folder", "path": str(out), "size": None, "channels": None,
                         "test_size": 0.2, "extensions": ["png"], "skip_bad": False,
                         "limit": None}, 0)
    assert back.x_train.shape == ds.x_train.shape
    key = lambda x, y, names: sorted(a.tobytes() + folder_name(names[c]).encode()  # noqa: E731
                                     for a, c in zip(x, y))
    assert key(back.x_train, back.y_train, back.class_names) == \
        key(ds.x_train, ds.y_train, ds.class_names)  # lossless: the same images, the same classes
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": name, "augment": {"flip": "horizontal"}},
        "network": [{"type": "flatten"}, {"type": "dense", "out_features": 10}],
        "training": {"loss": "cross_entropy"}}))
    result = runner.invoke(app, ["data", "preview", str(config), "-o", str(tmp_path / "p.png"),
                                 "--per-class", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 0


# --------------------------------------------------------------------------- the real files
@needs_fashion
def test_real_fashion_mnist_counts():
    ds = load_dataset(cfg("fashion_mnist", FASHION_DIR), 0)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


@needs_fashion
def test_real_fashion_mnist_published_md5():
    for name, md5 in fashion_mnist.MD5.items():
        assert hashlib.md5((FASHION_DIR / name).read_bytes()).hexdigest() == md5


@needs_cifar
def test_real_cifar10_counts_and_names():
    ds = load_dataset(cfg("cifar10", CIFAR_DIR), 0)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 3, 32, 32)
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.class_names == cifar10.CLASS_NAMES


@needs_cifar
def test_real_cifar10_published_md5():
    folder = cifar10._bin_folder(CIFAR_DIR)
    if folder is None:
        pytest.skip("the shared CIFAR-10 is a tarball; its members' MD5s are checked on download")
    for name, md5 in cifar10.MEMBER_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == md5


@needs_fashion
@pytest.mark.slow
def test_real_fashion_mnist_export_round_trip_trains_alike(tmp_path, monkeypatch):
    """`cnn data export` then folder training equals built-in training on the same split to the
    tolerance docs/fashion-mnist.md gives: the same images and classes exactly (PNG is lossless),
    a test accuracy within 2 points (a folder is read class by class, so the class numbering and
    the order of the shuffled batches differ)."""
    from cnncli.config import validate
    from cnncli.train import Trainer

    monkeypatch.setenv("CNNCLI_DATA_DIR", str(FASHION_DIR.parent))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    if FASHION_DIR.name != "fashion-mnist":
        pytest.skip("the real files are not in a folder named fashion-mnist")
    out = tmp_path / "fm"
    result = runner.invoke(app, ["data", "export", "fashion_mnist", "-o", str(out), "--limit", "3000"])
    assert result.exit_code == 0, result.output
    net = [{"type": "flatten"}, {"type": "dense", "out_features": 64, "init": "he"},
           {"type": "relu"}, {"type": "dense", "out_features": 10}]
    training = {"epochs": 5, "batch_size": 32, "loss": "cross_entropy", "learning_rate": 0.01,
                "optimizer": {"name": "sgd", "momentum": 0.9}, "dtype": "float32"}
    built_in = Trainer(validate({"data": {"name": "fashion_mnist", "limit": 3000},
                                 "network": net, "training": training}))
    built_in.data.x_test, built_in.data.y_test = built_in.data.x_test[:3000], built_in.data.y_test[:3000]
    folder = Trainer(validate({"data": {"name": "folder", "path": str(out)}, "network": net,
                               "training": training}))
    key = lambda d: sorted(a.tobytes() + d.class_names[c].replace("/", "-").encode()  # noqa: E731
                           for a, c in zip(d.x_test, d.y_test))
    assert key(folder.data) == key(built_in.data)
    for t in (built_in, folder):
        for _ in range(t.epochs):
            t.train_epoch()
    a, b = built_in.history[-1]["test_accuracy"], folder.history[-1]["test_accuracy"]
    assert a >= 0.75 and abs(a - b) <= 0.02, (a, b)


# --------------------------------------------------------------------------- the reference configs
@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/fashion-mnist.yaml", "configs/cifar10.yaml",
                                    "benchmarks/cifar-small.yaml"])
def test_reference_config_trains_one_short_epoch_and_passes_gradcheck(tmp_path, config):
    """The reference configs and the speed benchmark's CIFAR-sized network on format-exact files
    (the full accuracy runs are measured by hand)."""
    folder = tmp_path / "data"
    if "fashion" in config:
        write_fashion(folder, n_train=256, n_test=64)
    else:
        write_cifar(folder, n=50)
    config = ROOT / config
    r = runner.invoke(app, ["train", str(config), "--epochs", "1", "--set", f"data.path={folder}",
                            "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert r.exit_code == 0, r.output
    if "configs/" in str(config):
        assert "with TTA flip (training.tta)" in r.output
    r = runner.invoke(app, ["gradcheck", str(config), "--set", f"data.path={folder}",
                            "--max-entries", "20", "--batch", "2"])
    assert r.exit_code == 0, r.output
    assert "gradients pass" in r.output
