"""MNIST from the four standard IDX files, read by our own parser, downloaded to a cache on demand.

Where the files come from: ``data.path`` when the config gives one (never downloaded into);
otherwise the cache ``$CNNCLI_DATA_DIR/mnist``, ``$XDG_CACHE_HOME/cnncli/mnist`` or
``~/.cache/cnncli/mnist``, filled from ``MIRRORS`` when files are missing (unless
``CNNCLI_OFFLINE=1``). Every download is checked against ``MD5`` before it enters the cache.

IDX format (big-endian): 2 zero bytes, a dtype byte (0x08 = unsigned byte), a byte with the
number of dimensions, one uint32 per dimension, then the values in row-major order.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

from cnncli.errors import DataError

# The four files, without ".gz": each may sit in a folder compressed or not.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Published MD5 of each .gz file (module-level so tests can swap in their own).
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Tried in order for each file.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

TIMEOUT = 30.0  # seconds, for connecting and for each read
MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest file is 9.9 MB; a mirror sending more is wrong
CHUNK = 1 << 16
MAX_IDX_VALUES = 1 << 31  # 2 GiB; MNIST's largest file holds 47 million
READ_STEP = 1 << 20  # bytes parsed per step (bounds the temporary memory of gzip decompression)
IMAGE_SIZE = (28, 28)
N_CLASSES = 10

_UBYTE = 0x08
_KIND = {1: "labels", 3: "images"}  # dimensions -> what an MNIST file of that magic holds


# --------------------------------------------------------------------------- IDX parsing
def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed when its name ends in ``.gz``).

    Returns a writable uint8 array of the shape the header gives, e.g. (N, 28, 28) for images
    (magic 0x00000803) or (N,) for labels (magic 0x00000801). ``ndim`` demands that many
    dimensions. Raises DataError naming the file for a bad magic number, a truncated file, a
    file with more bytes than its header announces, or a broken gzip stream.
    """
    path = Path(path)
    gz = path.name.endswith(".gz")
    from cnncli.files import FileProblem, check_regular

    try:
        check_regular(path)
        f = gzip.open(path, "rb") if gz else open(path, "rb")
    except FileProblem as exc:
        raise DataError(f"{path}: {exc.problem}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        with f:
            return _parse_idx(f, path, ndim)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip: bad header, CRC, cut-off stream
        what = "not a valid gzip file" if gz else "cannot read"
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError):
            detail = "the compressed stream ends early; the file is truncated"
        raise DataError(f"{path}: {what} ({detail})") from None


def _read_exactly(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _parse_idx(f, path: Path, ndim: int | None) -> np.ndarray:
    head = _read_exactly(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} byte(s), too short for an IDX header")
    magic = int.from_bytes(head, "big")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, not an IDX file (expected "
                        "0x00000801 for labels or 0x00000803 for images)")
    if head[2] != _UBYTE:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}: data type byte is "
                        f"0x{head[2]:02x}, expected 0x08 (unsigned byte)")
    dims_n = head[3]
    if ndim is not None and dims_n != ndim:
        want = 0x0800 + ndim
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{want:08x} "
                        f"({_KIND.get(ndim, f'{ndim}-D data')}: {ndim} dimension(s), got {dims_n})")
    if dims_n == 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}: zero dimensions")
    raw_dims = _read_exactly(f, 4 * dims_n)
    if len(raw_dims) < 4 * dims_n:
        raise DataError(f"{path}: truncated: the header announces {dims_n} dimension(s) but ends "
                        f"after {4 + len(raw_dims)} bytes")
    shape = tuple(int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(dims_n))
    size = math.prod(shape)
    if size > MAX_IDX_VALUES:
        raise DataError(f"{path}: header dimensions {_dims(shape)} = {size:,} values are "
                        f"implausibly many (more than {MAX_IDX_VALUES:,}); a corrupt header")
    data = np.empty(size, dtype=np.uint8)
    view, got = memoryview(data), 0
    while got < size:  # small steps: gzip decompresses each step into a temporary of that size
        n = f.readinto(view[got:got + READ_STEP])
        if not n:
            break
        got += n
    if got < size:
        raise DataError(f"{path}: truncated: the header announces {_dims(shape)} = {size:,} "
                        f"values but only {got:,} follow")
    extra = len(f.read(CHUNK))
    if extra:
        more = "at least " if extra == CHUNK else ""
        raise DataError(f"{path}: wrong count: the header announces {_dims(shape)} = {size:,} "
                        f"values but the file holds {more}{extra:,} byte(s) more")
    return data.reshape(shape)


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)


# --------------------------------------------------------------------------- locating files
def cache_dir(name: str = "mnist") -> Path:
    """``$CNNCLI_DATA_DIR/mnist``, else ``$XDG_CACHE_HOME/cnncli/mnist``, else
    ``~/.cache/cnncli/mnist`` (empty variables count as unset); ``name`` replaces ``mnist``
    for the other downloaded datasets (``fashion-mnist``, ``cifar10``)."""
    if os.environ.get("CNNCLI_DATA_DIR"):
        return Path(os.environ["CNNCLI_DATA_DIR"]).expanduser() / name
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cnncli" / name
    return Path.home() / ".cache" / "cnncli" / name


def is_offline(asked: bool = False) -> bool:
    """True when ``asked`` (``--offline``) or when ``CNNCLI_OFFLINE`` is set to 1 (or
    true/yes): never touch the network."""
    return asked or os.environ.get("CNNCLI_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (uncompressed first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_files(folder: Path, files=None) -> list[str]:
    """The base names (no .gz) of the four files (or of ``files``) that are in ``folder`` in
    neither form."""
    return [name for name in (files or FILES) if find_file(folder, name) is None]


def data_folder(path, expected: str, holds: str) -> Path:
    """The folder ``data.path`` names, ``~`` expanded; one line when it is missing (``expected``:
    what it should hold, with the file names) or is a file (``holds``: the short form)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"data.path {folder}: no such directory (expected a folder holding "
                        f"{expected})")
    if not folder.is_dir():
        raise DataError(f"data.path {folder}: is a file; data.path must be the folder that "
                        f"holds {holds}")
    return folder


def _source(source):
    """The module describing a dataset of IDX files: this one (MNIST) unless another is given
    (``cnncli.data.fashion_mnist``); its NAME, TITLE, FILES, MD5, MIRRORS, MAX_DOWNLOAD_BYTES,
    IMAGE_SIZE, N_CLASSES and LABEL_WORD are read at call time (tests swap them)."""
    return source if source is not None else sys.modules[__name__]


NAME = "mnist"  # as `cnn data download NAME` takes it
TITLE = "MNIST"
LABEL_WORD = "digit"


def _where_to_put(folder: Path, missing: list[str], name: str = "mnist") -> str:
    gz = ", ".join(f"{m}.gz" for m in missing)
    how = "" if name == "cifar10" else " (gzip-compressed or not)"
    return (f"missing in {folder}: {gz}. Put the file(s) there{how}: run "
            f"`cnn data download {name}` once the network is reachable (or on another machine, then "
            f"copy the files), or set data.path to a folder that holds all of them")


# --------------------------------------------------------------------------- loading
def load_mnist(path: str | None = None, offline: bool = False, source=None):
    """The MNIST train and test splits.

    Returns (x_train, y_train, x_test, y_test):
        x_train: (60000, 1, 28, 28) uint8 (0..255, kept compact; the Dataset scales batches)
        y_train: (60000,) int64 in 0..9
        x_test:  (10000, 1, 28, 28) uint8
        y_test:  (10000,) int64
    ``path``: a folder holding the four IDX files (used as is, never downloaded into); None
    uses the cache and downloads what is missing there (unless ``offline``). ``source``: another
    dataset of the same format (see ``_source``).
    """
    src = _source(source)
    if path is not None:
        folder = data_folder(path, f"the four {src.TITLE} files {', '.join(src.FILES)}, each "
                                   "optionally .gz", f"the four {src.TITLE} files")
        missing = missing_files(folder, src.FILES)
        if missing:
            raise DataError(f"data.path {folder}: missing {', '.join(missing)} (looked for each "
                            "with and without .gz)")
    else:
        folder = cache_dir(src.NAME.replace("_", "-"))
        ensure_downloaded(folder, offline=offline, source=src)
        try:
            return read_folder(folder, src)
        except DataError as exc:
            raise DataError(f"{exc} (a file in the cache: delete it and it is downloaded "
                            "again)") from None
    return read_folder(folder, src)


def read_folder(folder: Path, source=None):
    """Parse and cross-check the four files in ``folder`` (see ``load_mnist`` for shapes)."""
    x_tr, y_tr = _split(folder, TRAIN_IMAGES, TRAIN_LABELS, _source(source))
    x_te, y_te = _split(folder, TEST_IMAGES, TEST_LABELS, _source(source))
    return x_tr, y_tr, x_te, y_te


def _split(folder: Path, images_name: str, labels_name: str, src=None):
    src = _source(src)
    IMAGE_SIZE, N_CLASSES = src.IMAGE_SIZE, src.N_CLASSES  # noqa: N806
    images_path = find_file(folder, images_name)
    labels_path = find_file(folder, labels_name)
    for name, p in ((images_name, images_path), (labels_name, labels_path)):
        if p is None:
            raise DataError(f"{folder}: missing {name} (with or without .gz)")
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != IMAGE_SIZE:
        raise DataError(f"{images_path}: images are {_dims(images.shape[1:])}, {src.TITLE} images "
                        f"are {_dims(IMAGE_SIZE)}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: wrong count: {len(labels):,} labels, but "
                        f"{images_path.name} holds {len(images):,} images")
    if len(labels) and labels.max() >= N_CLASSES:
        i = int(np.argmax(labels >= N_CLASSES))
        raise DataError(f"{labels_path}: label {int(labels[i])} at index {i} is not a {src.LABEL_WORD} "
                        f"0..{N_CLASSES - 1}")
    return images[:, None], labels.astype(np.int64)


# --------------------------------------------------------------------------- downloading
def ensure_downloaded(folder: Path, progress: bool | None = None, offline: bool = False,
                      source=None) -> list[str]:
    """Download the files missing in ``folder`` (as .gz). Returns the names downloaded.

    Raises DataError when offline or when a file could not be had from any mirror; the message
    lists what is missing and where to put it. ``progress``: draw a Rich bar on stderr
    (default: when stderr is a terminal). ``offline``: never download (see ``is_offline``).
    """
    src = _source(source)
    missing = missing_files(folder, src.FILES)
    if not missing:
        return []
    if is_offline(offline):
        raise DataError(f"{src.TITLE} is not downloaded and CNNCLI_OFFLINE is set (--offline), so "
                        f"nothing was fetched; {_where_to_put(folder, missing, src.NAME)}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the {src.TITLE} cache directory "
                        f"({exc.strerror or exc}); set CNNCLI_DATA_DIR to a writable folder or "
                        f"data.path to a folder holding the files") from None
    if progress is None:
        progress = sys.stderr.isatty()
    dead: dict[str, str] = {}  # mirror -> why it is not tried again
    done = []
    for name in missing:
        gz = f"{name}.gz"
        errors = _download_one(folder, gz, dead, progress, src)
        if errors is not None:
            still = missing_files(folder, src.FILES)
            raise DataError(f"could not download {src.TITLE} {gz} from any mirror "
                            f"({'; '.join(errors)}); {_where_to_put(folder, still, src.NAME)}")
        done.append(gz)
    return done


def _download_one(folder: Path, gz: str, dead: dict, progress: bool,
                  source=None) -> list[str] | None:
    """Fetch ``gz`` into ``folder`` from the first mirror that serves it with the right MD5.
    Returns None on success, else one reason per mirror."""
    src = _source(source)
    import http.client
    import socket
    import urllib.error

    errors = []
    for mirror in src.MIRRORS:
        url = mirror.rstrip("/") + "/" + gz
        if mirror in dead:
            errors.append(f"{url}: {dead[mirror]}")
            continue
        try:
            _fetch(url, folder / gz, src.MD5[gz], progress, src.MAX_DOWNLOAD_BYTES, src.TITLE)
            return None
        except _BadDownload as exc:
            errors.append(f"{url}: {exc}")
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
        except urllib.error.URLError as exc:  # DNS, refused connection, TLS, ...
            reason = exc.reason
            dead[mirror] = ("timed out" if isinstance(reason, (socket.timeout, TimeoutError))
                            else str(getattr(reason, "strerror", None) or reason))
            errors.append(f"{url}: {dead[mirror]}")
        except (socket.timeout, TimeoutError):
            dead[mirror] = f"timed out after {TIMEOUT:g} s"
            errors.append(f"{url}: {dead[mirror]}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    return errors


class _BadDownload(Exception):
    pass


def _fetch(url: str, dest: Path, md5: str, progress: bool, max_bytes: int | None = None,
           title: str = "MNIST") -> None:
    """Stream ``url`` to a temporary file beside ``dest``; move it in only when its MD5 is
    ``md5``. Nothing is left behind on any failure (or Ctrl-C)."""
    import urllib.request

    max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    request = urllib.request.Request(url, headers={"User-Agent": "cnncli"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = _bar(dest.name, total) if progress else None
            got = 0
            try:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > max_bytes:
                        raise _BadDownload(f"sent more than {max_bytes:,} bytes; "
                                             f"not a {title} file")
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar[0].update(bar[1], completed=got)
            finally:
                if bar is not None:
                    bar[0].stop()
            if total is not None and got != total:
                raise _BadDownload(f"connection closed after {got:,} of {total:,} bytes")
        found = digest.hexdigest()
        if found != md5:
            raise _BadDownload(f"MD5 mismatch: got {found}, expected {md5} (corrupt or wrong "
                                 "file; discarded)")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bar(name: str, total: int | None):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    progress = Progress(TextColumn(f"downloading {name}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=False)
    task = progress.add_task("download", total=total)
    progress.start()
    return progress, task
