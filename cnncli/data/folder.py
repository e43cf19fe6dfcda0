"""Image folders as a dataset: ``path/<class name>/<image files>``, as Keras' and torchvision's
``ImageFolder`` lay them out.

Class names sorted alphabetically become labels 0..K-1; files are read in sorted path order
(class folders are searched recursively, symlinks followed, loops refused). When ``path/train``
and ``path/test`` both exist they are the two splits, each holding the same class folders;
otherwise the one folder is split with ``test_size`` (stratified, from the seed).

The whole folder is decoded once (``cnncli.data.images.decode_image``) into ``(N, C, H, W)``
uint8 and kept in the data cache, keyed by the file list, sizes and modification times and the
options that change decoding; the split and ``limit`` are then drawn from the seed. Before
decoding, the stored size ``N * C * H * W`` bytes is compared with the memory available.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.data.images import IMAGE_EXTENSIONS, BadImage, decode_image, probe_image
from cnncli.errors import DataError

CACHE_FORMAT = 1
CONTENT_HASH_BYTES = 32_000_000  # folders up to this size are fingerprinted by content, not only sizes and times
_MEMO: dict[str, "Decoded"] = {}  # the last folder decoded in this process (a config is checked, then loaded)
SHOWN_NAMES = 5  # skipped files named in the message


@dataclass
class Decoded:
    """A decoded folder, before the split and ``limit``.

    Shape:
        x: (N, C, H, W) uint8
        y: (N,) int64 labels
        is_test: (N,) bool, True for images under ``path/test`` (all False without that layout)
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    is_test: np.ndarray
    class_names: list[str]
    has_test: bool
    skipped: list[str] = field(default_factory=list)
    ignored: int = 0


# ------------------------------------------------------------------ locating files
def cache_dir() -> Path:
    """``$CNNCLI_DATA_DIR/folders``, else ``$XDG_CACHE_HOME/cnncli/folders``, else
    ``~/.cache/cnncli/folders`` (the same root as ``cnncli.data.mnist.cache_dir``)."""
    if os.environ.get("CNNCLI_DATA_DIR"):
        return Path(os.environ["CNNCLI_DATA_DIR"]).expanduser() / "folders"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cnncli" / "folders"
    return Path.home() / ".cache" / "cnncli" / "folders"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _image_files(folder: Path, extensions: tuple[str, ...]) -> tuple[list[tuple[str, os.stat_result]], int]:
    """Image files under ``folder`` (recursively, symlinks followed) in sorted path order, each
    with its stat, and the number of other files ignored. Raises DataError on a symlink loop."""
    found, ignored = [], 0
    seen_dirs: list[tuple[int, int]] = []

    def walk(d: Path, rel: str):
        nonlocal ignored
        try:
            st = d.stat()
        except OSError as exc:
            raise DataError(f"{d}: cannot read the folder ({exc.strerror or exc})") from None
        here = (st.st_dev, st.st_ino)
        if here in seen_dirs:
            raise DataError(f"{d}: a symlink loop (it leads back to a folder it is inside)")
        seen_dirs.append(here)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"{d}: cannot read the folder ({exc.strerror or exc})") from None
        for e in entries:
            if e.name.startswith("."):  # hidden: .DS_Store, macOS AppleDouble ._x.png, .git
                continue
            sub = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir()  # follows links; a link to itself raises ELOOP
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise DataError(f"{d / e.name}: a symlink loop (the link leads back to "
                                    "itself)") from None
                raise DataError(f"{d / e.name}: cannot read ({exc.strerror or exc})") from None
            if is_dir:
                walk(d / e.name, sub)
            elif e.name.rpartition(".")[2].lower() in extensions and "." in e.name:
                found.append((sub, _stat(e)))
            else:
                ignored += 1
        seen_dirs.pop()

    walk(folder, "")
    return found, ignored


def _stat(entry: os.DirEntry):
    try:
        return entry.stat()
    except OSError:
        return None  # a dangling link: reported as unreadable when it is decoded


def _scan(folder: Path, extensions) -> tuple[list[str], list[tuple[str, int, os.stat_result]], int]:
    """Class names and (file, label, stat) of one split folder, plus the count of ignored files."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder" if not folder.exists() else
                        f"{folder}: is not a folder; data.path names a folder of class folders")
    try:
        # hidden folders (.ipynb_checkpoints, .git) are not classes
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        top_files = sum(1 for p in folder.iterdir() if not p.is_dir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot read the folder ({exc.strerror or exc})") from None
    if not subdirs:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class name>/<images>)")
    classes, files, ignored = [], [], top_files
    for label, d in enumerate(subdirs):
        found, skipped = _image_files(d, extensions)
        ignored += skipped
        if not found:
            raise DataError(f"{d}: an empty class folder (no {'/'.join(extensions)} images)")
        classes.append(d.name)
        base = str(d)
        files += [(os.path.join(base, rel), label, st) for rel, st in found]  # str: Path is slow
    if len(classes) < 2:
        if classes[0] in ("train", "test"):
            other = "test" if classes[0] == "train" else "train"
            raise DataError(f"{folder}: has {classes[0]}/ but no {other}/; give both (each "
                            f"holding the class folders), or put the class folders in {folder} "
                            "itself and let test_size split them")
        raise DataError(f"{folder}: only one class folder ({classes[0]}); a classifier needs "
                        "at least two")
    return classes, files, ignored


# ------------------------------------------------------------------ decoding
def decode_folder(path, size: tuple[int, int] | None = None, channels: int | None = None,
                  extensions=IMAGE_EXTENSIONS, skip_bad: bool = False, cache: bool = True) -> Decoded:
    """Decode every image of a folder dataset (or read it from the cache).

    ``path`` is already resolved (a config's relative path is resolved by the caller).
    Raises DataError naming the file or folder for every kind of bad input.
    """
    root = Path(path)
    classes, files, is_test, ignored, has_test = _list_files(root, extensions)
    labels = np.array([f[1] for f in files], dtype=np.int64)
    key = _cache_key(root, files, size, channels, skip_bad, has_test)
    cached = (_MEMO.get(key) or _read_cache(key, _Expect(classes, labels, is_test, has_test, size,
                                                         channels))) if cache else None
    if cached is not None:
        cached.ignored = ignored
        _MEMO.clear()
        _MEMO[key] = cached
        return cached
    x, keep, skipped = _decode_all(root, [f[0] for f in files], size, channels, skip_bad)
    if not keep.all():
        x, labels, is_test = x[keep], labels[keep], is_test[keep]
        _check_classes_left(root, classes, labels, is_test, has_test)
    out = Decoded(root.name or str(root), x, labels, is_test, classes, has_test, skipped, ignored)
    if cache:
        _write_cache(key, out)
        _MEMO.clear()
        _MEMO[key] = out
    return out


def _list_files(root: Path, extensions):
    """(class names, [(file, label, stat)], is_test (N,) bool, ignored count, has_test) of a
    folder dataset: ``root/train`` + ``root/test`` when both exist, else ``root``'s classes."""
    extensions = tuple(e.lower().lstrip(".") for e in extensions)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: is not a folder; data.path names a folder of class folders")
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        classes, files, ignored = _scan(root, extensions)
        return classes, files, np.zeros(len(files), dtype=bool), ignored, False
    classes, train, ign_tr = _scan(root / "train", extensions)
    test_classes, test, ign_te = _scan(root / "test", extensions)
    if classes != test_classes:
        only_tr = sorted(set(classes) - set(test_classes))
        only_te = sorted(set(test_classes) - set(classes))
        parts = ([f"only in train/: {', '.join(only_tr)}"] if only_tr else []) + \
                ([f"only in test/: {', '.join(only_te)}"] if only_te else [])
        raise DataError(f"{root}: train/ and test/ must hold the same class folders; "
                        + "; ".join(parts))
    is_test = np.array([False] * len(train) + [True] * len(test))
    return classes, train + test, is_test, ign_tr + ign_te, True


def _decode_all(root: Path, paths: list[str], size, channels, skip_bad):
    """Read every header (modes, sizes), settle channels and size, refuse what would not fit in
    memory, then decode. Returns x: (N, C, H, W) uint8, keep: (N,) bool (False for a skipped
    file) and the skipped files' messages."""
    infos, skipped = [], []
    for p in paths:
        try:
            infos.append(probe_image(p))
        except BadImage as exc:
            if not skip_bad:
                raise
            infos.append(None)
            skipped.append(str(exc))
    ok = [i for i, info in enumerate(infos) if info is not None]
    if not ok:
        raise DataError(f"{root}: none of the {len(paths):,} image files could be read")
    if channels is None:
        channels = 1 if all(infos[i].channels == 1 for i in ok) else 3
    fixed_size = size is not None
    first = infos[ok[0]]
    size = tuple(size) if fixed_size else (first.height, first.width)

    def mixed(i, h, w, how=""):
        return DataError(f"{paths[ok[0]]} is {size[0]}x{size[1]} (HxW) but {paths[i]} is "
                         f"{h}x{w}{how}; set data.size: [H, W] to resize every image to one size")

    if not fixed_size:
        for i in ok:
            if (infos[i].height, infos[i].width) != size:
                raise mixed(i, infos[i].height, infos[i].width)
    _check_memory(root, len(ok), channels, size)
    x = np.empty((len(paths), channels, *size), dtype=np.uint8)
    keep = np.zeros(len(paths), dtype=bool)
    for i in ok:
        try:
            img = decode_image(paths[i], size if fixed_size else None, channels)
        except BadImage as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
            continue
        if img.shape[1:] != size:  # a header that did not tell (a PNG's EXIF after its pixels)
            raise mixed(i, *img.shape[1:], " once decoded")
        x[i], keep[i] = img, True
    return x, keep, skipped


def _check_classes_left(root, classes, labels, is_test, has_test):
    """After skipping bad files, every class must keep an image in each split it had."""
    for split, mask in (("train", ~is_test), ("test", is_test)) if has_test else (("", ~is_test),):
        left = np.bincount(labels[mask], minlength=len(classes))
        empty = [classes[c] for c in np.flatnonzero(left == 0)]
        if empty:
            where = root / split / empty[0] if split else root / empty[0]
            raise DataError(f"{where}: no readable image is left in this class folder after "
                            "skipping the bad files")


def _check_memory(root: Path, n: int, c: int, size) -> None:
    need = n * c * size[0] * size[1]
    have = available_memory()
    if have is not None and need > have:
        raise DataError(f"{root}: the {n:,} images would take {_gb(need)} as {c}x{size[0]}x"
                        f"{size[1]} uint8, more than the {_gb(have)} of memory available; set a "
                        "smaller data.size or use fewer images")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n:,} bytes)" if n >= 1e8 else f"{n / 1e6:.2f} MB ({n:,} bytes)"


# ------------------------------------------------------------------ the cache
def _cache_key(root: Path, files, size, channels, skip_bad, has_test) -> str:
    import PIL

    cut = len(str(root)) + 1
    listing = [[p[cut:], label] + ([st.st_size, st.st_mtime_ns] if st else [None, None])
               for p, label, st in files]
    if sum(st.st_size for _, _, st in files if st) <= CONTENT_HASH_BYTES:
        # a small folder: its content too, so that an image edited in place with its size and
        # time restored is not served from the cache (a large one: sizes and times only)
        for entry, (p, _, st) in zip(listing, files):
            entry.append(_content_hash(p) if st else None)
    blob = json.dumps({"format": CACHE_FORMAT, "pillow": PIL.__version__, "root": str(root.resolve()),
                       "size": list(size) if size else None, "channels": channels,
                       "skip_bad": skip_bad, "has_test": has_test, "files": listing})
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()


def _content_hash(path: str) -> str | None:
    from cnncli.files import read_regular

    try:
        return hashlib.sha256(read_regular(path, CONTENT_HASH_BYTES)).hexdigest()
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is decoded
        return None


def _cache_path(key: str) -> Path:
    return cache_dir() / f"{key[:32]}.npz"


@dataclass
class _Expect:
    """What a cache entry must hold to be used: the folder as listed now, and the settings."""

    classes: list
    labels: np.ndarray
    is_test: np.ndarray
    has_test: bool
    size: tuple | None
    channels: int | None


def _read_cache(key: str, expect: _Expect | None = None) -> Decoded | None:
    """The cache entry of ``key``, or None (then the folder is decoded again) when there is none
    or it does not match ``expect``: an entry damaged or edited by hand is checked like any
    input (dtypes, shapes, labels in range, the listing's labels and splits)."""
    from cnncli.files import is_regular

    path = _cache_path(key)
    if not is_regular(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if meta.get("key") != key:
                return None
            d = Decoded(meta["name"], f["x"], f["y"], f["is_test"], meta["class_names"],
                        meta["has_test"], meta["skipped"])
        if expect is not None and not _cache_fits(d, expect, meta.get("sha256")):
            return None
        return d
    except Exception:  # noqa: BLE001 - a damaged cache entry is decoded again
        return None


def _arrays_hash(x, y, t) -> str:
    h = hashlib.sha256()
    for a in (x, y, t):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _cache_fits(d: Decoded, e: _Expect, digest=None) -> bool:
    x, y, t = d.x, d.y, d.is_test
    if digest is None or digest != _arrays_hash(x, y, t):  # edited by hand (or by another tool)
        return False
    if not (isinstance(d.name, str) and isinstance(d.skipped, list) and d.has_test == e.has_test
            and list(d.class_names) == list(e.classes)):
        return False
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or 0 in x.shape[1:]:
        return False
    if e.channels is not None and x.shape[1] != e.channels:
        return False
    if e.size is not None and tuple(x.shape[2:]) != tuple(e.size):
        return False
    if y.dtype.kind not in "iu" or y.shape != (len(x),) or t.dtype != bool or t.shape != (len(x),):
        return False
    if len(y) and (y.min() < 0 or y.max() >= len(e.classes)):
        return False
    if len(x) + len(d.skipped) != len(e.labels):
        return False
    return bool(d.skipped) or (np.array_equal(y, e.labels) and np.array_equal(t, e.is_test))


def _write_cache(key: str, d: Decoded) -> None:
    """Store a decoded folder (atomically); a cache that cannot be written is only a lost speedup."""
    from cnncli.atomic import atomic_file

    meta = {"key": key, "name": d.name, "class_names": d.class_names, "has_test": d.has_test,
            "skipped": d.skipped, "sha256": _arrays_hash(d.x, d.y, d.is_test)}
    path = _cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, x=d.x, y=d.y, is_test=d.is_test, meta=np.array(json.dumps(meta)))
    except OSError:
        pass


# ------------------------------------------------------------------ split and limit
def stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` samples drawn without replacement, each class in proportion to
    its share (largest remainders get the leftover places)."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n - take.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
             for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks))


def notes(d: Decoded) -> list[str]:
    """Lines for the user: files ignored (other extensions) and bad files skipped."""
    out = []
    if d.ignored:
        out.append(f"{d.name}: ignored {d.ignored:,} file(s) that are not images by their extension")
    if d.skipped:
        shown = "; ".join(d.skipped[:SHOWN_NAMES]) + (" ..." if len(d.skipped) > SHOWN_NAMES else "")
        out.append(f"{d.name}: skipped {len(d.skipped):,} unreadable image(s) (skip_bad): {shown}")
    return out


# ------------------------------------------------------------------ writing a folder
def folder_name(class_name: str) -> str:
    """The folder a class is exported to: its name with ``/`` as ``-`` (Fashion-MNIST's
    ``t-shirt/top`` becomes ``t-shirt-top``)."""
    return class_name.replace("/", "-")


def export_folder(ds, out, limit: int | None = None, on_image=None) -> dict[str, np.ndarray]:
    """Write a Dataset as ``out/train/<class>/<i>.png`` and ``out/test/<class>/<i>.png``
    (8-bit, ``x * 255 / pixel_max`` rounded and clipped; ``i`` is the index in the split, at
    most ``limit`` per split). Everything goes to a temporary folder beside ``out`` that is
    renamed to ``out`` at the end: a failed or killed export leaves no half folder. ``out``
    must not exist or be empty. ``on_image(done, total)`` is called as images are written.
    Returns the images written per split and class."""
    import shutil

    from cnncli.data.images import to_eight_bit, write_png

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create its folder ({exc.strerror or exc})") from None
    folders = [folder_name(n) for n in ds.class_names]
    bad = [n for n in folders if not n or n in (".", "..") or "/" in n or "\0" in n]
    if bad or len(set(folders)) < len(folders):
        raise DataError(f"{ds.name}: the class name {(bad or folders)[0]!r} cannot be a folder "
                        "name")
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    counts = {}
    sizes = {s: len(ds.split(s)[1]) if limit is None else min(limit, len(ds.split(s)[1]))
             for s in ("train", "test")}
    done, total = 0, sum(sizes.values())
    try:
        for split, n in sizes.items():
            x, y = ds.split(split)
            width = max(5, len(str(n - 1)))
            for name in folders:
                (tmp / split / name).mkdir(parents=True)
            for i in range(n):
                write_png(tmp / split / folders[y[i]] / f"{i:0{width}d}.png",
                          to_eight_bit(x[i], ds.pixel_max))
                done += 1
                if on_image is not None and (done % 100 == 0 or done == total):
                    on_image(done, total)
            counts[split] = np.bincount(y[:n], minlength=ds.n_classes)
        if out.exists():
            out.rmdir()  # empty (checked above); rename needs the name free
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{out}: cannot write the folder ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
