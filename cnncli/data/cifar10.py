"""CIFAR-10 (Krizhevsky, Nair and Hinton) from its binary version, read by our own parser.

Files: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (the 50,000 training images, in this order)
and ``test_batch.bin`` (10,000 test images), each a run of 3,073-byte records: 1 label byte
(0..9), then the 32x32 image as 1,024 red, 1,024 green and 1,024 blue bytes (each plane row by
row). ``batches.meta.txt`` holds the class names, one per line. A folder may hold the six
``.bin`` files (directly or in ``cifar-10-batches-bin/``) or the distribution's
``cifar-10-binary.tar.gz``, which is read in place (never unpacked).

Where the files come from: ``data.path`` when the config gives one (never downloaded into);
otherwise the cache ``$CNNCLI_DATA_DIR/cifar10`` (else ``$XDG_CACHE_HOME/cnncli/cifar10``, else
``~/.cache/cnncli/cifar10``), into which the tarball is downloaded from ``MIRRORS`` when no
files are there (unless offline: ``--offline`` or ``CNNCLI_OFFLINE=1``), checked against its
published ``MD5`` first.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np

import cnncli.data.mnist as mnist  # the module only (cnncli.data imports this one)
from cnncli.errors import DataError

NAME = "cifar10"
TITLE = "CIFAR-10"
TARBALL = "cifar-10-binary.tar.gz"
TAR_FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BIN_FILES = (*TRAIN_FILES, TEST_FILE)
META_FILE = "batches.meta.txt"
FILES = ("cifar-10-binary.tar",)  # what a download fetches (mnist.ensure_downloaded adds .gz)
IMAGE_SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32  # 3,073 bytes
N_CLASSES = 10
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
MAX_DOWNLOAD_BYTES = 256 * 2**20  # the tarball is 162 MB
MAX_FILE_BYTES = 2**31  # a batch file is 30.7 MB; far more is not a CIFAR-10 batch

# Published MD5 of the tarball (the dataset's page; torchvision lists the same) and of each
# file in it (as independent projects list them; see docs/cifar10.md).
MD5 = {
    TARBALL: "c32a1d4ab5d03f1284b67883e8d87530",
}
MEMBER_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}

MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]


def cache_dir() -> Path:
    return mnist.cache_dir(NAME)


# --------------------------------------------------------------------------- parsing
def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's bytes -> (images (n, 3, 32, 32) uint8, labels (n,) int64).

    Raises DataError naming ``where`` for an empty file, a size that is not a whole number of
    3,073-byte records (a truncated or foreign file), or a label byte above 9."""
    if len(data) == 0:
        raise DataError(f"{where}: empty; a CIFAR-10 batch holds 3,073-byte records")
    n, rest = divmod(len(data), RECORD)
    if rest:
        raise DataError(f"{where}: truncated or not a CIFAR-10 batch: {len(data):,} bytes are "
                        f"{n:,} whole 3,073-byte record(s) and {rest:,} byte(s) more")
    records = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD)
    labels = records[:, 0]
    if labels.max() >= N_CLASSES:
        i = int(np.argmax(labels >= N_CLASSES))
        raise DataError(f"{where}: label {int(labels[i])} of record {i} is not a class label "
                        f"0..{N_CLASSES - 1} (corrupt or not a CIFAR-10 batch)")
    return records[:, 1:].reshape(n, *IMAGE_SHAPE).copy(), labels.astype(np.int64)


def parse_meta(text: bytes, where: str) -> list[str]:
    """``batches.meta.txt``: ten class names, one per line (blank lines ignored)."""
    try:
        names = [line.strip() for line in text.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start}); expected ten class "
                        "names, one per line") from None
    if len(names) != N_CLASSES or len(set(names)) != N_CLASSES:
        raise DataError(f"{where}: expected {N_CLASSES} different class names, one per line, "
                        f"found {len(names)} ({', '.join(names[:12])[:120]})")
    return names


# --------------------------------------------------------------------------- locating files
def _bin_folder(folder: Path) -> Path | None:
    """``folder`` or ``folder/cifar-10-batches-bin``, the first holding all six .bin files."""
    for candidate in (folder, folder / TAR_FOLDER):
        if all((candidate / f).is_file() for f in BIN_FILES):
            return candidate
    return None


def has_files(folder: Path) -> bool:
    return _bin_folder(folder) is not None or (folder / TARBALL).is_file()


def _missing_message(folder: Path) -> str:
    present = [f for f in BIN_FILES if (folder / f).is_file()]
    missing = [f for f in BIN_FILES if not (folder / f).is_file()]
    if present:
        return f"missing {', '.join(missing)} (have {', '.join(present)})"
    return f"holds neither the six files {', '.join(BIN_FILES)} nor {TARBALL}"


def read_folder(folder: Path):
    """(x_train, y_train, x_test, y_test, class_names) from the .bin files in ``folder`` (or
    ``folder/cifar-10-batches-bin``), else from ``folder/cifar-10-binary.tar.gz``."""
    bins = _bin_folder(folder)
    if bins is not None:
        def read(name):
            path = bins / name
            try:
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    raise DataError(f"{path}: {size:,} bytes, far more than a CIFAR-10 batch")
                return path.read_bytes(), str(path)
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
        meta = bins / META_FILE
        meta = (read(META_FILE) if meta.is_file() else None)
        return _assemble(read, meta)
    tar = folder / TARBALL
    if tar.is_file():
        return _read_tarball(tar)
    raise DataError(f"{folder}: {_missing_message(folder)}")


def _read_tarball(path: Path):
    try:
        with tarfile.open(path, "r:gz") as tf:
            members = {}
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in (*BIN_FILES, META_FILE):
                    if m.size > MAX_FILE_BYTES:
                        raise DataError(f"{path}: member {m.name} is {m.size:,} bytes, far more "
                                        "than a CIFAR-10 batch")
                    members[base] = tf.extractfile(m).read()
    except DataError:
        raise
    except (OSError, EOFError, tarfile.TarError) as exc:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError):
            detail = "the compressed stream ends early; the file is truncated"
        raise DataError(f"{path}: not a readable .tar.gz ({detail})") from None
    missing = [f for f in BIN_FILES if f not in members]
    if missing:
        raise DataError(f"{path}: the archive lacks {', '.join(missing)}")

    def read(name):
        return members[name], f"{path}:{TAR_FOLDER}/{name}"
    return _assemble(read, read(META_FILE) if META_FILE in members else None)


def _assemble(read, meta):
    x_tr, y_tr = [], []
    for name in TRAIN_FILES:
        x, y = parse_batch(*read(name))
        x_tr.append(x)
        y_tr.append(y)
    x_te, y_te = parse_batch(*read(TEST_FILE))
    names = parse_meta(*meta) if meta is not None else list(CLASS_NAMES)
    return np.concatenate(x_tr), np.concatenate(y_tr), x_te, y_te, names


# --------------------------------------------------------------------------- loading
def load_cifar10(path: str | None = None, offline: bool = False):
    """The CIFAR-10 train and test splits and the class names.

    Returns (x_train, y_train, x_test, y_test, class_names):
        x_train: (50000, 3, 32, 32) uint8 (channel-major: R, G, B planes; 150 MB in all)
        y_train: (50000,) int64 in 0..9
        x_test:  (10000, 3, 32, 32) uint8
        y_test:  (10000,) int64
        class_names: the ten names of batches.meta.txt (airplane, ..., truck), or those
            names when the folder has no batches.meta.txt
    ``path``: a folder holding the files (used as is, never downloaded into); None uses the
    cache and downloads the tarball there when it holds no files (unless ``offline``).
    """
    if path is not None:
        folder = mnist.data_folder(path, f"the CIFAR-10 files {', '.join(BIN_FILES)}, or {TARBALL}",
                                   "the CIFAR-10 files")
        if not has_files(folder):
            raise DataError(f"data.path {folder}: {_missing_message(folder)}")
        return read_folder(folder)
    folder = cache_dir()
    ensure_downloaded(folder, offline=offline)
    try:
        return read_folder(folder)
    except DataError as exc:
        raise DataError(f"{exc} (a file in the cache: delete it and it is downloaded "
                        "again)") from None


def ensure_downloaded(folder: Path, progress: bool | None = None,
                      offline: bool = False) -> list[str]:
    """Download the tarball into ``folder`` unless it holds the files (in either form); returns
    the names downloaded. Offline, or when no mirror serves it with the published MD5, a
    DataError says what is missing and where to put it. ``offline``: never download (see
    ``mnist.is_offline``)."""
    if has_files(folder):
        return []
    return mnist.ensure_downloaded(folder, progress, offline, source=sys.modules[__name__])
