"""Datasets. Every loader returns a ``Dataset``, so the rest of the tool never knows where data
came from. A config's ``data:`` section names one of ``DATASETS`` and sets its keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnncli.data.augment import check_spec as check_augment
from cnncli.data.dataset import Dataset
from cnncli.data.images import IMAGE_EXTENSIONS
from cnncli.errors import DataError
from cnncli.schema import (REQUIRED, SHAPES_MAX_N, SHAPES_MAX_NOISE, Field, SchemaError, boolean,
                           choice, integer, number, optional, string)
from cnncli.seeds import rng_stream


def one_hot(labels: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    """labels: (N,) -> (N, n_classes)"""
    out = np.zeros((len(labels), n_classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def _fraction(v):
    return number(0.0, strict=True, maximum=1.0, max_strict=True)(v)


def _path(v):
    string(v)
    return v


@dataclass(frozen=True)
class DatasetKind:
    fields: dict[str, Field]
    describe: Callable[[dict], tuple[tuple, int]]  # (C, H, W) and the number of classes, cheaply
    load: Callable[[dict, int, bool], Dataset]  # (section, seed, offline)
    help: str


def _rng(seed: int) -> np.random.Generator:
    return rng_stream(seed, "data")


# ---------------------------------------------------------------- shapes
def _load_shapes(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from cnncli.data.shapes import CLASS_NAMES, make_shapes
    from cnncli.data.split import train_test_indices

    rng = _rng(seed)
    x, y = make_shapes(cfg["n"], cfg["noise"], rng)
    tr, te = train_test_indices(len(y), cfg["test_size"], rng, y if cfg["stratify"] else None)
    return Dataset("shapes", x[tr], y[tr], x[te], y[te], list(CLASS_NAMES))


# ---------------------------------------------------------------- digits
def _load_digits(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from sklearn.datasets import load_digits

    from cnncli.data.split import train_test_indices

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    tr, te = train_test_indices(len(y), cfg["test_size"], _rng(seed), y)
    return Dataset("digits", x[tr], y[tr], x[te], y[te], [str(d) for d in range(10)], 1 / 16, 16.0)


# ---------------------------------------------------------------- mnist
def _load_mnist(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from cnncli.data.mnist import load_mnist

    x_tr, y_tr, x_te, y_te = load_mnist(cfg["path"], offline=offline)
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, [str(d) for d in range(10)], 1 / 255, 255.0)


# ---------------------------------------------------------------- fashion_mnist, cifar10
def _load_fashion_mnist(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from cnncli.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    x_tr, y_tr, x_te, y_te = load_fashion_mnist(cfg["path"], offline)
    return Dataset("fashion_mnist", x_tr, y_tr, x_te, y_te, list(CLASS_NAMES), 1 / 255, 255.0)


def _load_cifar10(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from cnncli.data.cifar10 import load_cifar10

    x_tr, y_tr, x_te, y_te, names = load_cifar10(cfg["path"], offline)
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, names, 1 / 255, 255.0)


# ---------------------------------------------------------------- npz
def _describe_npz(cfg: dict):
    ds = _load_npz(cfg, 0)
    return ds.input_shape, ds.n_classes


def _load_npz(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    from cnncli.data.npz import load_npz

    return load_npz(Path(cfg["path"]))


# ---------------------------------------------------------------- folder
def _size(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise SchemaError(f"must be [H, W], two integers >= 1, got {v!r}"[:120])
    return [integer(1, 65535)(d) for d in v]


def _extensions(v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(e, str) and e.strip(".")
                                                            for e in v):
        raise SchemaError(f"must be a list of file extensions like [png, jpg], got {v!r}"[:120])
    return [e.lower().lstrip(".") for e in v]


def _decoded_folder(cfg: dict):
    from cnncli.data.folder import decode_folder

    return decode_folder(Path(cfg["path"]).expanduser(), tuple(cfg["size"]) if cfg["size"] else None,
                         cfg["channels"], tuple(cfg["extensions"]), cfg["skip_bad"])


def _describe_folder(cfg: dict):
    d = _decoded_folder(cfg)
    return tuple(d.x.shape[1:]), len(d.class_names)


def _load_folder(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    """The decoded folder split: ``path/train`` and ``path/test`` when both exist, else a
    stratified split with ``test_size``; ``limit`` then draws a stratified subset of the
    training images (both from the seed's data stream)."""
    from cnncli.data.folder import notes, stratified_subset
    from cnncli.data.split import train_test_indices

    d = _decoded_folder(cfg)
    rng = _rng(seed)
    if d.has_test:
        tr, te = np.flatnonzero(~d.is_test), np.flatnonzero(d.is_test)
    else:
        tr, te = train_test_indices(len(d.y), cfg["test_size"], rng, d.y)
    if cfg.get("limit") is not None:
        tr = tr[stratified_subset(d.y[tr], cfg["limit"], rng)]
    return Dataset(d.name, d.x[tr], d.y[tr], d.x[te], d.y[te], list(d.class_names), 1 / 255,
                   255.0, notes(d))


DATASETS: dict[str, DatasetKind] = {
    "shapes": DatasetKind(
        {"n": Field(500, integer(2, SHAPES_MAX_N)),
         "noise": Field(0.25, number(0.0, strict=False, maximum=SHAPES_MAX_NOISE)),
         "test_size": Field(0.33, _fraction), "stratify": Field(False, boolean)},
        lambda cfg: ((1, 3, 3), 4), _load_shapes,
        "the seed's four 3x3 shapes plus uniform noise, generated from the seed"),
    "digits": DatasetKind(
        {"test_size": Field(0.25, _fraction)},
        lambda cfg: ((1, 8, 8), 10), _load_digits,
        "scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn)"),
    "mnist": DatasetKind(
        {"path": Field(None, optional(_path))},
        lambda cfg: ((1, 28, 28), 10), _load_mnist,
        "MNIST 28x28 digits from the four IDX files (downloaded to the cache when missing)"),
    "fashion_mnist": DatasetKind(
        {"path": Field(None, optional(_path))},
        lambda cfg: ((1, 28, 28), 10), _load_fashion_mnist,
        "Fashion-MNIST 28x28 clothing pictures from the four IDX files (downloaded to the cache "
        "when missing)"),
    "cifar10": DatasetKind(
        {"path": Field(None, optional(_path))},
        lambda cfg: ((3, 32, 32), 10), _load_cifar10,
        "CIFAR-10 32x32 colour photos from the binary version's six .bin files or its .tar.gz "
        "(downloaded to the cache when missing)"),
    "npz": DatasetKind(
        {"path": Field(REQUIRED, _path)},
        _describe_npz, _load_npz,
        "your own arrays: x_train, y_train, x_test, y_test in a .npz"),
    "folder": DatasetKind(
        {"path": Field(REQUIRED, _path), "size": Field(None, optional(_size)),
         "channels": Field(None, optional(choice(1, 3))), "test_size": Field(0.2, _fraction),
         "extensions": Field(list(IMAGE_EXTENSIONS), _extensions), "skip_bad": Field(False, boolean)},
        _describe_folder, _load_folder,
        "your own images: path/<class name>/<image files> (or path/train/... and path/test/...)"),
}

COMMON_FIELDS = {"limit": Field(None, optional(integer(1))),
                 "augment": Field(None, check_augment)}


def dataset_fields(name: str) -> dict[str, Field]:
    return {**DATASETS[name].fields, **COMMON_FIELDS}


def load_dataset(cfg: dict, seed: int, offline: bool = False) -> Dataset:
    """cfg: the resolved ``data:`` section. ``limit`` keeps the first N training samples (a
    folder dataset draws a stratified subset itself). ``offline``: never download (MNIST,
    Fashion-MNIST, CIFAR-10)."""
    ds = DATASETS[cfg["name"]].load(cfg, seed, offline)
    limit = cfg.get("limit")
    if limit is not None:
        ds.x_train, ds.y_train = ds.x_train[:limit], ds.y_train[:limit]
    if len(ds.y_train) == 0 or len(ds.y_test) == 0:
        raise DataError(f"data ({cfg['name']}): the train and test splits must each hold at least "
                        f"one sample, got {len(ds.y_train)} and {len(ds.y_test)}")
    return ds


__all__ = ["Dataset", "DATASETS", "load_dataset", "one_hot", "dataset_fields", "SchemaError"]
