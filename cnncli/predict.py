"""Predictions for new inputs: image files, folders of them, or an ``.npz`` of stored images.

Every input is brought to the model's stored form (what its dataset kept: 0-255 for 8-bit
images and MNIST, 0-16 for digits, 0-1 floats for shapes) and scored with ``cnncli.scoring``,
the same scores ``cnn export``'s ONNX model outputs. Nothing here prints: ``cnn predict``
(``cnncli.cli.predict``) shows the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cnncli.data.images import IMAGE_EXTENSIONS, BadImage, decode_image, resize_stored
from cnncli.errors import CheckpointError, DataError, about_value
from cnncli.npzfile import NpzReadError, read_npz

NPZ_KEYS = ("x", "x_test")  # the array an .npz of images is read from, in this order
MISSING_HINT = {"input_shape": "size and channels", "pixel_max": "pixel_max",
                "input_scale": "input_scale"}  # what supplies each missing key


@dataclass(frozen=True)
class ModelInput:
    """How the model takes its input: what a checkpoint's ``meta`` records (format 2), or what
    the command line supplies for an older checkpoint.

    shape: (C, H, W); pixel_max: the stored value of a full-intensity pixel; input_scale: the
    factor from stored values to network inputs.
    """

    shape: tuple[int, int, int]
    class_names: list[str]
    pixel_max: float
    input_scale: float

    def meta(self, dtype) -> dict:
        """The keys ``cnncli.scoring.scores`` reads."""
        return {"input_scale": self.input_scale, "dtype": np.dtype(dtype).name}


def model_input(path, meta: dict, net, size: tuple[int, int] | None = None,
                channels: int | None = None, pixel_max: float | None = None,
                input_scale: float | None = None) -> ModelInput:
    """The checkpoint's input description, completed or overridden by the command line.

    ``size`` and ``channels`` must agree with the network (they only fill in a description
    that lacks them); ``pixel_max`` and ``input_scale`` replace the recorded values. What is
    still missing is a CheckpointError naming the parameters that supply it (its ``missing``:
    the keys of MISSING_HINT); a value that does not fit is a DataError ``about_value``.
    """
    recorded = tuple(int(d) for d in (meta.get("input_shape") or net.input_shape or ()))
    missing = []
    if len(recorded) == 3:
        shape = recorded
        if size is not None and tuple(size) != shape[1:]:
            raise _bad_value("size", f"{size[0]} {size[1]}",
                             f"the model takes {shape[1]}x{shape[2]} images; give that size, or "
                             "no size (images are resized to the model's size)")
        if channels is not None and channels != shape[0]:
            raise _bad_value("channels", str(channels),
                             f"the model takes {shape[0]}-channel images")
    elif size is not None and channels is not None:
        shape = (int(channels), int(size[0]), int(size[1]))
    else:
        shape = None
        missing.append("input_shape")
    pm = pixel_max if pixel_max is not None else meta.get("pixel_max")
    scale = input_scale if input_scale is not None else meta.get("input_scale")
    if pm is None:
        missing.append("pixel_max")
    if scale is None:
        missing.append("input_scale")
    if missing:
        hint = (f"{', '.join(MISSING_HINT[k] for k in missing)} (e.g. pixel_max 255 and "
                "input_scale 0.00392156862745098 for 8-bit images scaled to 0-1)")
        exc = CheckpointError(
            f"{path}: lacks the input description ({', '.join(missing)}; written in checkpoint "
            f"format {meta.get('format_version')} by cnncli {meta.get('cnncli_version', '?')}): "
            f"give {hint}, or train the model again with this version")
        exc.missing, exc.hint = missing, hint  # the command line words the hint with its options
        raise exc
    names = meta.get("class_names")
    n_out = net.output_shape[0]
    if not isinstance(names, list) or len(names) != n_out:
        names = [str(i) for i in range(n_out)]
    for key, value in (("pixel_max", pm), ("input_scale", scale)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise about_value(DataError(f"{key} must be a positive number, got {value!r}"), key,
                              "", f"must be a positive number, got {value!r}")
    return ModelInput(shape, [str(n) for n in names], float(pm), float(scale))


def _bad_value(param: str, shown: str, problem: str) -> DataError:
    return about_value(DataError(f"{param} {shown}: {problem}"), param, shown, problem)


# ---------------------------------------------------------------- what to predict
@dataclass(frozen=True)
class Item:
    """One input: an image file, or row ``index`` of an .npz's image array."""

    path: Path
    index: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.index is None else f"{self.path}[{self.index}]"


@dataclass
class Inputs:
    """The items to predict, in order, and the .npz arrays they index (loaded once)."""

    items: list[Item]
    arrays: dict[Path, np.ndarray] = field(default_factory=dict)
    ignored: int = 0  # files inside given folders that are not images


def collect(paths: list[Path], shape: tuple[int, int, int],
            extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Inputs:
    """Expand PATHs: an image file is one item; a folder, every image below it (recursively,
    sorted by path); an ``.npz``, every row of its ``x`` (or ``x_test``) array, which must hold
    stored images (N, H, W) or (N, C, H, W) of the model's shape."""
    out = Inputs([])
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        if p.is_dir():
            found, ignored = _images_below(p, extensions)
            if not found:
                raise DataError(f"{p}: no image files below this folder (looked for "
                                f"{', '.join('.' + e for e in extensions)})")
            out.items.extend(Item(f) for f in found)
            out.ignored += ignored
        elif p.suffix.lower() == ".npz":
            if not p.is_file():  # a named pipe would block np.load forever
                raise DataError(f"{p}: not a regular file; an .npz of images must be a file")
            x = _npz_images(p, shape)
            out.arrays[p] = x
            out.items.extend(Item(p, i) for i in range(len(x)))
        else:
            out.items.append(Item(p))
    return out


def _images_below(folder: Path, extensions) -> tuple[list[Path], int]:
    found, ignored, seen = [], 0, set()
    stack = [folder]
    while stack:  # os.walk follows no links; this follows folder links once each (no loops)
        d = stack.pop()
        try:
            real = d.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DataError(f"{d}: a broken or looping folder link") from None
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(d.iterdir())
        except OSError as exc:
            raise DataError(f"{d}: cannot list ({exc.strerror or exc})") from None
        for e in entries:
            if e.name.startswith("."):  # hidden: macOS AppleDouble ._x.png, .DS_Store, .git
                continue
            if e.is_dir():
                stack.append(e)
            elif e.suffix.lower().lstrip(".") in extensions:
                found.append(e)
            else:
                ignored += 1
    return sorted(found), ignored


def _npz_images(path: Path, shape) -> np.ndarray:
    def pick(files):
        key = next((k for k in NPZ_KEYS if k in files), None)
        if key is None:
            raise DataError(f"{path}: holds no image array named {' or '.join(NPZ_KEYS)} "
                            f"(it has: {', '.join(files) or 'nothing'})")
        return [key]

    try:
        (key, x), = read_npz(path, pick).items()
    except NpzReadError as exc:
        if exc.reason == "not_array":
            raise DataError(f"{path}: '{exc.key}' in the archive is not a NumPy array (.npy)") from None
        if exc.cause is None:
            raise DataError(f"{path}: not a readable .npz (a single .npy array, not an archive)") from None
        raise DataError(f"{path}: not a readable .npz ({type(exc.cause).__name__}: "
                        f"{' '.join(str(exc.cause).split())[:160]})") from None
    if x.ndim == 3 and shape[0] == 1:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or x.dtype.kind not in "uif":
        want = "x".join(map(str, shape))
        raise DataError(f"{path}: '{key}' must hold numbers of shape (N, {', '.join(map(str, shape))})"
                        f"{' or (N, H, W)' if shape[0] == 1 else ''} for this {want} model, got "
                        f"{x.dtype} {x.shape}")
    if len(x) == 0:  # one rule with an empty folder: nothing to predict is an error
        raise DataError(f"{path}: '{key}' holds no images (0 rows), so there is nothing to predict")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)  # (N,) rows with NaN or inf
        if bad.any():
            raise DataError(f"{path}[{int(np.argmax(bad))}]: '{key}' holds NaN or infinite values "
                            f"({int(bad.sum())} of its {len(x)} rows do); images must be finite")
    return x


# ---------------------------------------------------------------- decoding and scoring
@dataclass
class Batch:
    """Scored items: stored images (N, C, H, W) and their scores (N, K)."""

    items: list[Item]
    images: np.ndarray
    scores: np.ndarray
    resized: int = 0
    attempted: int = 0  # items tried, skipped ones included (for a progress bar)
    converted: int = 0  # colour files made grayscale for the model, or the reverse


def stored_from_file(path: Path, spec: ModelInput, converted: list | None = None
                     ) -> tuple[np.ndarray, bool]:
    """An image file in the model's stored form (C, H, W): decoded and converted as a folder
    dataset does, resized to the model's size, 8-bit pixels times pixel_max / 255. Also says
    whether it had to be resized; ``converted`` gets True appended when the file's colours had
    to change (a colour image for a grayscale model, or the reverse)."""
    from cnncli.data.images import GRAY_MODES

    c, h, w = spec.shape
    modes: list = []
    img = decode_image(path, channels=c, modes=modes)  # (C, H', W') uint8, 0-255: one read
    if converted is not None and modes:
        converted.append((modes[0] in GRAY_MODES) != (c == 1))
    resized = img.shape[1:] != (h, w)
    if resized:
        img = resize_stored(img, (h, w))
    if spec.pixel_max != 255.0:
        img = img.astype(np.float64) * (spec.pixel_max / 255.0)
    return img, resized


def predict_batches(net, spec: ModelInput, inputs: Inputs, batch_size: int = 256,
                    skip_bad: bool = False, skipped: list | None = None,
                    tta: str | None = None) -> Iterator[Batch]:
    """Score ``inputs`` in batches of ``batch_size`` (labels never depend on it). An image that
    cannot be decoded raises BadImage naming it, or with ``skip_bad`` is appended to
    ``skipped`` as ``(item, message)`` and left out."""
    from cnncli.scoring import scores

    dtype = next((p.dtype for p in net.params.values()), np.dtype(np.float64))
    meta = spec.meta(dtype)
    items = inputs.items
    for start in range(0, len(items), batch_size):
        chunk, imgs, resized, converted = [], [], 0, []
        for item in items[start:start + batch_size]:
            if item.index is not None:
                imgs.append(inputs.arrays[item.path][item.index])
                chunk.append(item)
                continue
            try:
                img, was_resized = stored_from_file(item.path, spec, converted)
            except BadImage as exc:
                if not skip_bad:
                    raise
                if skipped is not None:
                    skipped.append((item, str(exc)))
                continue
            imgs.append(img)
            chunk.append(item)
            resized += was_resized
        attempted = len(items[start:start + batch_size])
        if not chunk:
            yield Batch([], np.zeros((0, *spec.shape)), np.zeros((0, len(spec.class_names))), 0,
                        attempted)
            continue
        x = np.stack([np.asarray(i, dtype=np.result_type(*imgs)) for i in imgs])
        yield Batch(chunk, x, scores(net, x, meta, batch_size=len(x), tta=tta), resized, attempted,
                    sum(converted))


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best classes per row, best first (ties: the lower label first, as argmax).

    scores: (N, K) -> labels (N, k), their scores (N, k)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def records(batch: Batch, class_names: list[str], k: int) -> list[dict]:
    """One JSON-able dict per item: path, label, class, score and the top k."""
    bad = ~np.isfinite(batch.scores).all(axis=1)
    if bad.any():  # an overflow (scoring.scores keeps NumPy quiet about it): never NaN in --json
        first = batch.items[int(np.argmax(bad))]
        raise DataError(f"{first.name}: the model's scores are not finite (the input times the "
                        "input scale overflows the network); check the input scale and the "
                        "input's values")
    labels, top_scores = top_k(batch.scores, k)
    out = []
    for item, ls, ss in zip(batch.items, labels, top_scores):
        top = [{"label": int(lab), "class": class_names[lab], "score": float(s)}
               for lab, s in zip(ls, ss)]
        out.append({"path": item.name, "label": top[0]["label"], "class": top[0]["class"],
                    "score": top[0]["score"], "top": top})
    return out


def run(net, spec: ModelInput, inputs: Inputs, k: int = 2, batch_size: int = 256,
        skip_bad: bool = False, on_batch: Callable[[int], None] | None = None,
        keep_images: int = 0, tta: str | None = None):
    """Predict every item: (records, skipped, resized count, the first ``keep_images`` stored
    images for a picture, the count of image files whose colours were converted). ``tta``:
    score with test-time augmentation (``cnncli.tta``)."""
    rows, skipped, resized, kept, converted = [], [], 0, [], 0
    for batch in predict_batches(net, spec, inputs, batch_size, skip_bad, skipped, tta):
        rows.extend(records(batch, spec.class_names, k))
        resized += batch.resized
        converted += batch.converted
        if len(kept) < keep_images:
            kept.extend(batch.images[:keep_images - len(kept)])
        if on_batch is not None:
            on_batch(batch.attempted)
    return rows, skipped, resized, kept, converted


CSV_FIXED = ["path", "label", "class", "score"]


def csv_text(rows: list[dict], k: int) -> str:
    """The records as CSV: path, label, class, score, then top<i>_label/_class/_score."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    k = max((len(r["top"]) for r in rows), default=k)
    tta = any("tta" in r for r in rows)  # scored with test-time augmentation: a column says so
    w.writerow(CSV_FIXED + [f"top{i}_{f}" for i in range(1, k + 1) for f in ("label", "class", "score")]
               + (["tta"] if tta else []))
    for r in rows:
        cells = [r["path"], r["label"], r["class"], repr(r["score"])]
        for t in r["top"]:
            cells += [t["label"], t["class"], repr(t["score"])]
        w.writerow(cells + ([r.get("tta", "")] if tta else []))
    return buf.getvalue()
