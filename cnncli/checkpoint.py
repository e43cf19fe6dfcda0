"""Checkpoints: one .npz holding the parameters and buffers (``layers.<i>.<name>``), the
optimizer state (``optimizer.<...>``) and ``meta``, a 0-d string array of JSON. Written
atomically, read with ``allow_pickle=False`` only.

Format 2 added buffers (batch norm's running statistics) and the input description in ``meta``
(``dtype``, ``input_scale``, ``pixel_max`` beside ``input_shape`` and ``class_names``) and the
dropout generator's state (``noise_rng_state``). Format 1 files still load: they have no
buffers, and the commands that need the input description say what is missing."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from cnncli import __version__
from cnncli.atomic import atomic_file
from cnncli.errors import CheckpointError, CnnError
from cnncli.npzfile import NpzReadError, read_npz
from cnncli.schema import short_repr
from cnncli.text import one_line

FORMAT_VERSION = 2
INPUT_KEYS = ("input_shape", "class_names", "dtype", "input_scale", "pixel_max")


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and ``meta`` to ``path`` atomically: a temporary file in the same
    directory, flushed and fsynced, then renamed over the target. A crash at any moment leaves
    either the old file or the new one, never a half-written one."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "cnncli_version": __version__, **meta}
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps(meta))
    with atomic_file(path) as f:
        np.savez(f, **payload)
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
    from cnncli.files import FileProblem, check_regular

    try:
        size = check_regular(path)
    except FileProblem as exc:
        raise CheckpointError(f"{path}: {exc.problem} (a checkpoint .npz)") from None
    if size == 0:
        raise CheckpointError(f"{path}: is empty, not a cnncli checkpoint")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise CheckpointError(f"{path}: not a cnncli checkpoint (a single array, not an .npz)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a cnncli checkpoint: corrupt or truncated, or not an "
                              ".npz archive at all")
    try:
        arrays = read_npz(path)
    except NpzReadError as exc:
        raise CheckpointError(f"{path}: " + {
            "single": "not a cnncli checkpoint (a single array, not an .npz)",
            "not_array": f"not a cnncli checkpoint: {short_repr(exc.key)} in the archive is not a "
                         "NumPy array (.npy)",
            "pickled": "holds object arrays (pickled Python objects), which cnncli never loads",
            "value": f"corrupt checkpoint ({exc.detail})",
            "broken": f"corrupt or truncated checkpoint ({exc.detail})",
        }[exc.reason]) from None
    meta_arr = arrays.pop("meta", None)
    if meta_arr is None:
        raise CheckpointError(f"{path}: not a cnncli checkpoint (no 'meta' entry)")
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise CheckpointError(f"{path}: 'meta' must be a 0-d string array, got {meta_arr.dtype} {meta_arr.shape}")
    try:
        meta = json.loads(str(meta_arr))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: 'meta' is not valid JSON ({one_line(exc)})") from None
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise CheckpointError(f"{path}: not a cnncli checkpoint ('meta' has no format_version)")
    version = meta["format_version"]
    if not _is_int(version):
        raise CheckpointError(f"{path}: format_version must be an integer, got {short_repr(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {version} by a newer cnncli "
                              f"({short_repr(meta.get('cnncli_version', '?'))}); this cnncli "
                              f"{__version__} reads format {FORMAT_VERSION}: upgrade cnncli")
    for key in ("config", "epoch", "input_shape", "class_names"):
        if key not in meta:
            raise CheckpointError(f"{path}: 'meta' lacks {key!r}")
    problem = _meta_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: 'meta' {problem}")
    for k, a in arrays.items():
        if a.dtype.kind != "f" and not k.startswith("optimizer."):
            raise CheckpointError(f"{path}: {_name(k)} has dtype {a.dtype}, expected floats")
        if a.dtype.kind not in "fiu" or a.dtype.itemsize > 8:
            raise CheckpointError(f"{path}: {_name(k)} has dtype {a.dtype}, expected numbers")
    return arrays, meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _name(key: str) -> str:
    """An archive member's name as printed: as is, or quoted when it holds odd characters."""
    return key if key.isprintable() and len(key) <= 100 else short_repr(key, 100)


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with the types of a checkpoint's ``meta`` (None when nothing is): every
    field a reader uses is checked here, so a damaged or hand-edited file fails on load, by name,
    and never later with a TypeError."""
    from cnncli.config import structure_problems
    from cnncli.metrics import METRIC_COLUMNS

    if not isinstance(meta["config"], dict):
        return f"config must be a mapping, got {short_repr(meta['config'])}"
    nested = structure_problems(meta["config"])
    if nested:
        return f"config is not valid: {nested[0]}"
    if not _is_int(meta["epoch"]) or meta["epoch"] < 0:
        return f"epoch must be an integer >= 0, got {short_repr(meta['epoch'])}"
    shape = meta["input_shape"]
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 \
            or not all(_is_int(d) and 1 <= d <= 2**31 for d in shape):
        return f"input_shape must be a list of 1 to 4 positive integers, got {short_repr(shape)}"
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"class_names must be a non-empty list of strings, got {short_repr(names)}"
    history = meta.get("history")
    if history is not None:
        if not isinstance(history, list) or len(history) < meta["epoch"]:
            return (f"history must be a list of at least epoch ({meta['epoch']}) rows, got "
                    f"{short_repr(history)}")
        for i, row in enumerate(history[: meta["epoch"]]):
            if not isinstance(row, dict) or row.get("epoch") != i + 1 \
                    or not all(_is_num(row.get(c)) for c in METRIC_COLUMNS):
                return (f"history[{i}] must be the metrics of epoch {i + 1} "
                        f"({', '.join(METRIC_COLUMNS)}), got {short_repr(row)}")
    best = meta.get("best")
    if best is not None and not (isinstance(best, dict) and _is_int(best.get("epoch"))
                                 and _is_num(best.get("test_accuracy"))):
        return f"best must be {{epoch, test_accuracy}}, got {short_repr(best)}"
    early = meta.get("early_stopping")
    if early is not None and not (isinstance(early, dict) and _is_num(early.get("best_loss"))
                                  and _is_int(early.get("bad_epochs"))):
        return f"early_stopping must be {{best_loss, bad_epochs}}, got {short_repr(early)}"
    for key in ("rng_state", "noise_rng_state", "augment_rng_state"):
        state = meta.get(key)
        if state is not None:
            try:  # the shuffling, dropout and augmentation generators are PCG64s (numpy's default)
                np.random.PCG64().state = state
            except Exception:  # noqa: BLE001 - numpy raises TypeError, ValueError or KeyError here
                return f"{key} is not a PCG64 state, got {short_repr(state)}"
    fp = meta.get("data_fingerprint")
    if fp is not None and not (isinstance(fp, str) and 0 < len(fp) <= 128):
        return f"data_fingerprint must be a short string, got {short_repr(fp)}"
    if "dtype" in meta and meta["dtype"] not in ("float32", "float64"):
        return f"dtype must be float32 or float64, got {short_repr(meta['dtype'])}"
    for key in ("input_scale", "pixel_max"):
        if key in meta and not (_is_num(meta[key]) and 0 < meta[key] < float("inf")):
            return f"{key} must be a positive number, got {short_repr(meta[key])}"
    return None


def input_description(path, meta: dict, needed: tuple = INPUT_KEYS) -> dict:
    """The checkpoint's record of how to feed its model (``INPUT_KEYS``); a CheckpointError
    naming what is missing when an older checkpoint lacks some of ``needed``."""
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(
            f"{path}: lacks the input description {', '.join(missing)} (written in checkpoint "
            f"format {meta.get('format_version')} by cnncli {meta.get('cnncli_version', '?')}; "
            f"format {FORMAT_VERSION} records it): train the model again, or resume its run "
            "for one more epoch (--epochs), to write a checkpoint that has it")
    return {k: meta[k] for k in needed}


def check_resumable(path, arrays: dict[str, np.ndarray], params: dict[str, np.ndarray],
                    buffers: dict[str, np.ndarray] | None = None) -> None:
    """Refuse a checkpoint whose parameters, buffers or optimizer state do not fit a network
    with ``params`` and ``buffers`` (``layers.<i>.<name>`` -> array): every key, shape and
    dtype must match, and every optimizer array must belong to a parameter (or be an integer
    counter such as Adam's ``t``)."""
    layer_keys = {k for k in arrays if k.startswith("layers.")}
    own = {**params, **(buffers or {})}
    missing, extra = sorted(set(own) - layer_keys), sorted(layer_keys - set(own))
    if missing or extra:
        raise CheckpointError(f"{path}: its parameters do not match the network: missing "
                              f"{short_repr(missing or 'none', 120)}, unexpected "
                              f"{short_repr(extra or 'none', 120)}")
    for key, p in own.items():
        a = arrays[key]
        if a.shape != p.shape or a.dtype != p.dtype:
            raise CheckpointError(f"{path}: {_name(key)} is {a.dtype} {a.shape}, the network "
                                  f"expects {p.dtype} {p.shape}")
    for key, a in arrays.items():
        if not key.startswith("optimizer."):
            continue
        # the longest match: layers.1.W also ends layers.3.layers.1.W (a residual block's)
        owner = max((k for k in params if key.endswith("." + k)), key=len, default=None)
        if owner is None:
            if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
                raise CheckpointError(f"{path}: {_name(key)} belongs to no parameter and is not a "
                                      f"counter (got {a.dtype} {a.shape})")
        elif a.shape != params[owner].shape or a.dtype != params[owner].dtype:
            raise CheckpointError(f"{path}: {_name(key)} is {a.dtype} {a.shape}, but {owner} is "
                                  f"{params[owner].dtype} {params[owner].shape}")


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


def load_model(path):
    """A checkpoint's network, in eval mode, and its ``meta``: ``cnncli.load_checkpoint``.

    ``meta["input_scale"]`` (format 2) is the factor that turns stored values (0-255 pixels,
    say) into the network's inputs; ``cnncli.scores`` applies it."""
    net, _, meta, _ = load_network(path)
    return net, meta


def load_network(path):
    """Rebuild the network from a checkpoint alone, in eval mode: (network, config, meta,
    arrays)."""
    from cnncli.network import build_network

    arrays, meta = load_checkpoint(path)
    cfg = checkpoint_config(path, meta)
    try:
        shape = tuple(int(d) for d in meta["input_shape"])
        net = build_network(cfg["network"], shape, np.random.default_rng(0),
                            np.dtype(cfg["training"]["dtype"]), impl=cfg["training"]["impl"])
        # the weights' moving average when the run kept one (training.ema), else the weights
        ema = {k[len("ema."):]: v for k, v in arrays.items() if k.startswith("ema.layers.")}
        net.load_state_dict(ema or {k: v for k, v in arrays.items() if k.startswith("layers.")})
        net.eval()
    except CnnError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: 'meta' input_shape is not valid ({exc})") from None
    return net, cfg, meta, arrays
