"""Checkpoints: one .npz holding the parameters (``layers.<i>.<name>``), the optimizer state
(``optimizer.<...>``) and ``meta``, a 0-d string array of JSON. Written atomically, read with
``allow_pickle=False`` only."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cnncli import __version__
from cnncli.errors import CheckpointError, CnnError

FORMAT_VERSION = 1


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and ``meta`` to ``path`` atomically: a temporary file in the same
    directory, flushed and fsynced, then renamed over the target. A crash at any moment leaves
    either the old file or the new one, never a half-written one."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "cnncli_version": __version__, **meta}
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint: (arrays without meta, meta dict). Any problem is a CheckpointError
    naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint .npz file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty, not a cnncli checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a cnncli checkpoint: corrupt or truncated, or not an "
                              ".npz archive at all")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"{path}: holds object arrays (pickled Python objects), which "
                                  "cnncli never loads") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    meta_arr = arrays.pop("meta", None)
    if meta_arr is None:
        raise CheckpointError(f"{path}: not a cnncli checkpoint (no 'meta' entry)")
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise CheckpointError(f"{path}: 'meta' must be a 0-d string array, got {meta_arr.dtype} {meta_arr.shape}")
    try:
        meta = json.loads(str(meta_arr))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: 'meta' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise CheckpointError(f"{path}: not a cnncli checkpoint ('meta' has no format_version)")
    version = meta["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {version} by a newer cnncli "
                              f"({meta.get('cnncli_version', '?')}); this cnncli {__version__} "
                              f"reads format {FORMAT_VERSION}: upgrade cnncli")
    for key in ("config", "epoch", "input_shape", "class_names"):
        if key not in meta:
            raise CheckpointError(f"{path}: 'meta' lacks {key!r}")
    if not isinstance(meta["epoch"], int) or meta["epoch"] < 0:
        raise CheckpointError(f"{path}: 'meta' epoch must be an integer >= 0, got {meta['epoch']!r}")
    for k, a in arrays.items():
        if a.dtype.kind != "f" and not k.startswith("optimizer."):
            raise CheckpointError(f"{path}: {k} has dtype {a.dtype}, expected floats")
    return arrays, meta


def checkpoint_config(path, meta: dict) -> dict:
    """The checkpoint's resolved config, validated again (it may name an unknown layer)."""
    cfg = meta["config"]
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'meta' config must be a mapping")
    try:
        return validate_stored(cfg, meta)
    except CnnError as exc:
        raise CheckpointError(f"{path}: its config is not valid: {exc}") from None


def validate_stored(cfg: dict, meta: dict) -> dict:
    """Validate a stored config without touching its dataset (which may be absent here)."""
    from cnncli.config import validate

    return validate(cfg, known_data=(tuple(meta["input_shape"]), len(meta["class_names"])))


def load_network(path):
    """Rebuild the network from a checkpoint alone: (network, config, meta, arrays)."""
    from cnncli.network import build_network

    arrays, meta = load_checkpoint(path)
    cfg = checkpoint_config(path, meta)
    try:
        shape = tuple(int(d) for d in meta["input_shape"])
        net = build_network(cfg["network"], shape, np.random.default_rng(0),
                            np.dtype(cfg["training"]["dtype"]))
        net.load_state_dict({k: v for k, v in arrays.items() if k.startswith("layers.")})
    except CnnError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: 'meta' input_shape is not valid ({exc})") from None
    return net, cfg, meta, arrays
