"""Your own arrays: a .npz holding x_train, y_train, x_test, y_test (as `cnn generate-shapes` writes)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cnncli.errors import DataError
from cnncli.npzfile import NpzReadError, read_npz

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 100_000  # labels run 0 .. n_classes - 1; a label beyond this is a broken file


def load_npz(path: Path):
    """Load and check the arrays; images (N, H, W) gain a channel axis, one-hot labels become
    integers. Raises DataError naming the file and the problem."""
    from cnncli.data.dataset import Dataset

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .npz file")
    from cnncli.files import FileProblem, check_regular

    try:
        check_regular(path)
        with open(path, "rb") as f:
            head = f.read(6)
    except FileProblem as exc:
        raise DataError(f"{path}: {exc.problem} (a .npz file)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head == b"\x93NUMPY":
        raise DataError(f"{path}: is a single .npy array, expected a .npz with {', '.join(KEYS)}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file: no zip archive found (corrupt, truncated, or "
                        f"another format; it starts with {head!r}); save the arrays with numpy.savez")
    def pick(files):
        missing = [k for k in KEYS if k not in files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found "
                            f"{_names(files) or 'none'}")
        return KEYS + (("class_names",) if "class_names" in files else ())

    try:
        arrays = read_npz(path, pick)
    except NpzReadError as exc:
        if exc.reason == "not_array":
            raise DataError(f"{path}: {exc.key} in the archive is not a NumPy array "
                            "(.npy)") from None
        if exc.reason == "pickled":
            raise DataError(f"{path}: holds object arrays (pickled Python objects), which cnncli "
                            "never loads; save plain numeric arrays") from None
        raise DataError(f"{path}: not a readable .npz file "
                        f"({exc.detail or 'a single array'})") from None
    names = _class_names(path, arrays.pop("class_names", None))

    x_tr, x_te = (_images(path, k, arrays[k]) for k in ("x_train", "x_test"))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{path}: x_train images are {'x'.join(map(str, x_tr.shape[1:]))} but x_test "
                        f"images are {'x'.join(map(str, x_te.shape[1:]))}; they must agree")
    n_classes_hint = len(names) if names else None
    y_tr = _labels(path, "y_train", arrays["y_train"], len(x_tr))
    y_te = _labels(path, "y_test", arrays["y_test"], len(x_te))
    n_classes = int(max(y_tr.max(initial=-1), y_te.max(initial=-1))) + 1
    for key in ("y_train", "y_test"):
        a = arrays[key]
        if a.ndim == 2:
            n_classes = max(n_classes, a.shape[1])
    if n_classes_hint is not None:
        if n_classes > n_classes_hint:
            raise DataError(f"{path}: labels go up to {n_classes - 1}, but class_names has only "
                            f"{n_classes_hint} names")
        n_classes = n_classes_hint
    if len(x_tr) == 0 or len(x_te) == 0:
        raise DataError(f"{path}: x_train and x_test must each hold at least one image, got "
                        f"{len(x_tr)} and {len(x_te)}")
    names = names or [str(i) for i in range(n_classes)]
    eight_bit = x_tr.dtype == np.uint8
    return Dataset(path.stem, x_tr, y_tr, x_te, y_te, names, 1 / 255 if eight_bit else 1.0,
                   255.0 if eight_bit else 1.0)


def write_npz(path, ds) -> None:
    """Write dataset ``ds`` to ``path`` atomically as the .npz ``load_npz`` reads (x_train,
    y_train, x_test, y_test, class_names): ``cnn generate-shapes``. A DataError when it cannot
    be written."""
    from cnncli.atomic import atomic_file

    try:
        with atomic_file(path) as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test, class_names=np.array(ds.class_names))
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _names(keys) -> str:
    return ", ".join(k if k.isprintable() else repr(k) for k in list(keys)[:20])


def _class_names(path, a):
    if a is None:
        return None
    if a.ndim != 1 or not 1 <= len(a) <= MAX_CLASSES or a.dtype.kind not in "USiu":
        raise DataError(f"{path}: class_names must be a list of 1 to {MAX_CLASSES:,} names "
                        f"(strings), got dtype {a.dtype} shape {a.shape}")
    return [str(s) for s in a]


def _images(path, key, a):
    if a.dtype.kind not in "uif" or a.dtype == np.float16:
        raise DataError(f"{path}: {key} must hold numbers (uint8, integers or floats), got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{path}: {key} must have shape (N, H, W) or (N, C, H, W), got {a.shape}")
    if 0 in a.shape[1:]:
        raise DataError(f"{path}: {key} images must hold at least one pixel, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise DataError(f"{path}: {key} holds {bad} NaN or infinite value(s)")
    if a.dtype.kind in "iu" and a.dtype != np.uint8:
        a = a.astype(np.float64)
    return a


def _labels(path, key, a, n):
    if a.ndim == 2:  # one-hot
        if not 1 <= a.shape[1] <= MAX_CLASSES:
            raise DataError(f"{path}: {key} is 2-D, so it must be one-hot with 1 to "
                            f"{MAX_CLASSES:,} columns, got shape {a.shape}")
        if a.dtype.kind not in "uifb" or not np.isfinite(a).all() or not np.isin(a, (0, 1)).all() \
                or not (a.sum(axis=1) == 1).all():
            raise DataError(f"{path}: {key} is 2-D, so it must be one-hot (0/1, one 1 per row)")
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise DataError(f"{path}: {key} must have shape (N,) or (N, classes), got {a.shape}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not (a == np.round(a)).all():
            raise DataError(f"{path}: {key} must hold integer class labels, found non-integer values")
    elif a.dtype.kind not in "iu":
        raise DataError(f"{path}: {key} must hold integer class labels, got dtype {a.dtype}")
    if len(a) != n:
        raise DataError(f"{path}: {key} has {len(a)} labels but there are {n} images")
    if len(a) and a.min() < 0:
        raise DataError(f"{path}: {key} holds a negative label ({a.min()}); labels must be 0, 1, ...")
    if len(a) and a.max() >= MAX_CLASSES:
        raise DataError(f"{path}: {key} holds the label {a.max()}; labels must be class numbers "
                        f"0, 1, ... below {MAX_CLASSES:,}")
    return a.astype(np.int64)
