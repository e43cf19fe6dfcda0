"""Pictures: training curves, dataset previews, evaluation plots and conv kernels.

matplotlib is imported inside the functions only (never when this module is imported), and only
through its object-oriented API (``Figure`` + the Agg canvas): no pyplot, no GUI backend, so it
works without a display whatever MPLBACKEND says. Every picture is written atomically (a
temporary file in the same directory, then ``os.replace``), so a reader never sees half a PNG.
Nothing here prints; problems are raised as CnnError subclasses naming the file.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cnncli.atomic import atomic_file
from cnncli.errors import CnnError, RunDirError

DPI = 100
CURVES_NAME = "curves.png"

# ---------------------------------------------------------------- throttling per-epoch drawing
RATIO = 20.0
"""Redraw a run's curves only when at least RATIO times the last draw's cost has passed since it
ended, so drawing takes at most 1 / (RATIO + 1), under 5%, of the wall time between draws."""
@dataclass
class DrawState:
    """What plot_run_curves remembers about one run directory, in this process.

    last_end: clock time when the last draw ended
    last_cost: seconds the last draw took
    stamp: (mtime_ns, size) of metrics.csv when it was last drawn, or None
    calls, draws, seconds: how often plot_run_curves was called, how often it drew, and the total
    seconds spent drawing (reading metrics.csv, drawing and writing curves.png)
    """

    last_end: float
    last_cost: float
    stamp: tuple | None = None
    calls: int = 0
    draws: int = 0
    seconds: float = 0.0


_STATES: dict[str, DrawState] = {}
_clock = time.perf_counter  # tests may replace it


def draw_stats(run_path) -> DrawState | None:
    """The drawing state of ``run_path`` in this process (None if never called for it)."""
    return _STATES.get(os.path.abspath(run_path))


def should_draw(state: DrawState, now: float, ratio: float = RATIO) -> bool:
    """True when the time since the last draw is at least ``ratio`` times that draw's cost."""
    return now - state.last_end >= ratio * state.last_cost


def plot_run_curves(run_path, name: str, force: bool = False) -> Path | None:
    """Draw ``curves.png`` in a run directory from its ``metrics.csv``, if it is time to.

    Called after every epoch; cheap (a clock read) when it does not draw. It draws on its first
    call for a directory (after the first epoch, so a picture is there at once), then when the
    time since its last draw for this directory is at least RATIO times what that draw cost (see
    DrawState), or when ``force`` is true (call it so after the last epoch and on Ctrl-C). It
    never redraws when metrics.csv has not changed since the last draw and curves.png is still
    there.

    Returns the path written, or None when it did not draw.
    """
    key = os.path.abspath(run_path)
    now = _clock()
    state = _STATES.get(key)
    if state is None:
        state = _STATES[key] = DrawState(last_end=now, last_cost=0.0)
    state.calls += 1
    if not force and state.draws and not should_draw(state, now):
        return None
    run_path = Path(run_path)
    metrics = run_path / "metrics.csv"
    out = run_path / CURVES_NAME
    try:
        st = os.stat(metrics)
        stamp = (st.st_mtime_ns, st.st_size, name)  # a new title (pruned) draws again
    except OSError:
        stamp = None
    if stamp is not None and stamp == state.stamp and out.exists():
        return None
    from cnncli.run import read_metrics

    start = _clock()
    rows = read_metrics(run_path)
    fig = curves_figure([(rows, name)], title=f"{name}: {_epochs(len(rows))}")
    save_figure(fig, out, error=RunDirError)
    end = _clock()
    state.last_cost = end - start
    state.last_end = end
    state.stamp = stamp
    state.draws += 1
    state.seconds += end - start
    return out


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


# ---------------------------------------------------------------- figures and saving
def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib Figure on an Agg canvas (no pyplot, no GUI). Sizes in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _drawable(s: str) -> str:
    """``s`` with what a font cannot draw (an undecodable file name's surrogates) as U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def short_name(s, limit: int = 30) -> str:
    """A class name as a picture's label: at most ``limit`` characters (a 255-character folder
    name squeezed the axes to nothing), cut with "…"."""
    s = str(s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _literal_text(fig) -> None:
    """Class, folder and file names are the user's: every text of ``fig`` is drawn as it is
    ("$5" is not TeX), and what no font can draw is replaced, tick labels included."""
    from matplotlib.axes import Axes
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
        if isinstance(text.get_text(), str):
            text.set_text(_drawable(text.get_text()))
    for ax in fig.findobj(Axes):  # subfigures' axes too
        for axis in (ax.xaxis, ax.yaxis):
            _plain_log_ticks(axis)
            labels = [t.get_text() for t in axis.get_majorticklabels()]
            drawable = [_drawable(t) for t in labels]
            if drawable != labels:  # names as tick labels (a confusion matrix)
                axis.set_ticks(axis.get_majorticklocs(), drawable)


def _plain_log_ticks(axis) -> None:
    """A log axis labelled by plain numbers (0.01, 0.1, 1), its minor ticks labelled only when it
    spans at most two decades: its default labels are TeX (``$\\mathdefault{10^{-2}}$``), which
    _literal_text would show as raw text."""
    from matplotlib.ticker import FuncFormatter, LogFormatterMathtext

    if axis.get_scale() != "log":
        return

    def minor(x, pos):  # every minor tick within a decade, 2 and 5 within two
        lo, hi = sorted(axis.get_view_interval())
        if lo <= 0 or hi > 100 * lo:
            return ""
        lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
        return f"{x:g}" if hi < 10 * lo or lead in (2, 5) else ""

    if isinstance(axis.get_major_formatter(), LogFormatterMathtext):
        axis.set_major_formatter(FuncFormatter(lambda x, pos: f"{x:g}"))
    if isinstance(axis.get_minor_formatter(), LogFormatterMathtext):
        axis.set_minor_formatter(FuncFormatter(minor))


def picture_format(path: Path) -> str:
    """The format matplotlib writes for ``path``'s suffix (png when it has none)."""
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    known = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in known:
        raise CnnError(f"{path}: cannot write a .{suffix} picture; use .png, .svg, .pdf or .jpg")
    return suffix


def save_figure(fig, path, error: type[CnnError] = CnnError) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file in the same directory + rename)."""
    path = Path(path)
    fmt = picture_format(path)
    if path.is_dir():
        raise error(f"{path}: is a directory; give a file name such as {path / 'plot.png'}")
    parent = path.parent
    if not parent.is_dir():
        raise error(f"{path}: cannot write: the directory {parent} does not exist")
    _literal_text(fig)
    import warnings

    try:
        with atomic_file(path) as f, warnings.catch_warnings():
            # library code never prints: a layout Matplotlib cannot fit is drawn as it comes
            warnings.simplefilter("ignore", UserWarning)
            fig.savefig(f, format=fmt, dpi=DPI)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        # A Figure holds reference cycles that only the cycle collector frees; in a long training
        # run the figures of earlier draws piled up (~35 MiB on MNIST). Free this one now.
        fig.clear()
        gc.collect()
    return path


# ---------------------------------------------------------------- curves
def _run_colors(n: int) -> list:
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def best_epoch(rows: list[dict]) -> dict:
    """The row with the highest test accuracy (the first such, as the trainer keeps best.npz)."""
    best = rows[0]
    for row in rows[1:]:
        if row["test_accuracy"] > best["test_accuracy"]:
            best = row
    return best


def curves_figure(runs: list[tuple[list[dict], str]], title: str):
    """Loss and accuracy against epoch, train and test, for one run or several.

    runs: (metrics rows, label) per run. One run: train and test in two colours, the best
    test-accuracy epoch marked on both panels. Several runs: one colour per run, train solid and
    test dashed, each run's best test accuracy marked with a star.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    single = len(runs) == 1
    fig = new_figure(11, 4.4, layout=None)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.84, wspace=0.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = ["C0"] if single else _run_colors(len(runs))
    for (rows, label), color in zip(runs, colors):
        epochs = [r["epoch"] for r in rows]
        marker = "o" if len(rows) <= 25 else None
        best = best_epoch(rows)
        if single:
            styles = [("train", "train_", "C0", "-"), ("test", "test_", "C1", "-")]
        else:
            styles = [(None, "train_", color, "-"), (None, "test_", color, "--")]
        for part, prefix, c, ls in styles:
            for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
                ax.plot(epochs, [r[prefix + what] for r in rows], color=c, ls=ls, marker=marker,
                        ms=3, lw=1.5, label=part)
        if single:
            for ax in (ax_loss, ax_acc):
                ax.axvline(best["epoch"], color="0.4", ls=":", lw=1.2)
            ax_acc.plot([best["epoch"]], [best["test_accuracy"]], "*", color="C3", ms=13, zorder=5,
                        label=f"best test {best['test_accuracy']:.2%} (epoch {best['epoch']})")
        else:
            ax_acc.plot([best["epoch"]], [best["test_accuracy"]], "*", color=color, ms=12,
                        mec="black", mew=0.6, zorder=5)
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_title(what)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=percent_decimals(ax_acc.get_yticks())))
    if single:
        ax_loss.legend(loc="best", fontsize=9)
        ax_acc.legend(loc="best", fontsize=9)
    else:
        style_keys = [Line2D([], [], color="0.3", ls="-", label="train"),
                      Line2D([], [], color="0.3", ls="--", label="test"),
                      Line2D([], [], color="0.3", ls="", marker="*", ms=10, label="best test")]
        ax_loss.legend(handles=style_keys, loc="best", fontsize=9)
        run_keys = [Line2D([], [], color=c, lw=2.5, label=label) for (_, label), c in zip(runs, colors)]
        ax_acc.legend(handles=run_keys, loc="best", fontsize=9,
                      ncols=1 if len(runs) <= 8 else 2)
    fig.suptitle(title, fontsize=13)
    return fig


def percent_decimals(ticks) -> int:
    """Decimals that tell ticks (fractions, 0.99 = 99%) apart: 0 for a step of 10%, 1 for 0.2%,
    2 for 0.05%."""
    import numpy as np

    steps = np.diff(np.asarray(ticks, dtype=np.float64)) * 100
    steps = steps[steps > 0]
    if not len(steps):
        return 0
    return int(min(max(0, -math.floor(math.log10(float(steps.min())) + 1e-9)), 6))


def run_labels(paths: list[Path]) -> list[str]:
    """Legend labels: each run directory's name (``<sweep> trial <n>`` for a sweep's trial), or
    the path as given where names collide."""
    names = [_run_name(Path(p)) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def _run_name(path: Path) -> str:
    path = path.resolve()
    if path.parent.name == "trials" and (path.parent.parent / "sweep.yaml").is_file():
        return f"{path.parent.parent.name} trial {path.name}"
    return path.name or str(path)


def pruned_after(run_dir: Path) -> int | None:
    """The epoch after which a sweep's pruner stopped this run (its train.log says so), else
    None."""
    try:
        with open(Path(run_dir) / "train.log", "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip().startswith("Pruned after epoch "):
            digits = line.strip().removeprefix("Pruned after epoch ").split()[0]
            return int(digits) if digits.isdigit() else None
    return None


def plot_runs(out, run_dirs: list[Path]) -> Path:
    """``cnn plot``: the curves of several runs in one figure, written to ``out``.

    Every directory is checked first; all problems are reported in one RunDirError."""
    from cnncli.run import read_metrics

    rows, problems = [], []
    for d in run_dirs:
        try:
            rows.append(read_metrics(d))
        except RunDirError as exc:
            problems.append(str(exc))
    if problems:
        raise RunDirError("; ".join(problems))
    labels = run_labels(run_dirs)
    if len(labels) == 1:
        title = f"{labels[0]}: {_epochs(len(rows[0]))}"
        pruned = pruned_after(run_dirs[0])
        if pruned is not None:
            title += f" (pruned after epoch {pruned})"
    else:
        title = f"{len(labels)} runs"
    fig = curves_figure(list(zip(rows, labels)), title)
    return save_figure(fig, out)


# ---------------------------------------------------------------- dataset preview
def _as_picture(img, lo: float, hi: float):
    """img: (C, H, W) floats -> (H, W) for a grey map, or (H, W, 3) in [0, 1] for C == 3."""
    import numpy as np

    if img.shape[0] == 3:
        span = hi - lo if hi > lo else 1.0
        return np.clip((np.moveaxis(img, 0, -1) - lo) / span, 0.0, 1.0)
    return img[0]


def plot_dataset_preview(path, ds, per_class: int = 8, transform=None) -> Path:
    """A grid of training samples: one row per class (labelled with its name), up to
    ``per_class`` samples each, the first ones of that class (from the test split when the
    training split has too few). All images share one grey scale, so noise levels compare.
    ``transform``: applied to each row's stored images (N, C, H, W) before scaling (the
    training augmentation, for ``cnn data preview``)."""
    import numpy as np

    picks = []
    for c in range(ds.n_classes):
        got = [ds.x_train[np.flatnonzero(ds.y_train == c)[:per_class]]]
        have = len(got[0])
        if have < per_class:
            got.append(ds.x_test[np.flatnonzero(ds.y_test == c)[:per_class - have]])
        got = np.concatenate(got)
        picks.append(ds.images(transform(got) if transform is not None else got, np.float64))
    shown = [p for p in picks if len(p)]
    lo = float(min(p.min() for p in shown)) if shown else 0.0
    hi = float(max(p.max() for p in shown)) if shown else 1.0
    cols, rows = per_class, ds.n_classes
    cell = min(0.9, 28.0 / max(rows, 1))
    fig = new_figure(1.6 + cols * cell, 0.9 + rows * cell)
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, (name, imgs) in enumerate(zip(ds.class_names, picks)):
        for j in range(cols):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(_as_picture(imgs[j], lo, hi), cmap="gray", vmin=lo, vmax=hi,
                          interpolation="nearest")
            else:
                for s in ax.spines.values():
                    s.set_visible(False)
                if j == 0:
                    ax.text(0.5, 0.5, "no samples", ha="center", va="center", fontsize=8,
                            transform=ax.transAxes)
        axes[c, 0].set_ylabel(short_name(name), rotation=0, ha="right", va="center", fontsize=11)
    c, h, w = ds.input_shape
    fig.suptitle(f"{ds.name}: {len(ds.y_train):,} training samples of {c}x{h}x{w}, "
                 f"first {per_class} per class" + (", augmented" if transform else ""), fontsize=11)
    return save_figure(fig, path)


# ---------------------------------------------------------------- evaluation
def worst_mistakes(net, ds, split: str, predictions, dtype, limit: int = 16, chunk: int = 1000):
    """Indices into the split of its misclassified samples with the highest probability for the
    (wrong) predicted class (the scores of cnncli.scoring: a softmax of logits, sigmoid outputs
    divided by their sum), worst first, with those probabilities: (indices (k,),
    probabilities (k,))."""
    import numpy as np

    from cnncli.scoring import outputs_to_scores, score_rule

    x, y = ds.split(split)
    predictions = np.asarray(predictions)
    wrong = np.flatnonzero(predictions != y)
    scores = np.empty(len(wrong))
    for i in range(0, len(wrong), chunk):
        idx = wrong[i:i + chunk]
        prob = outputs_to_scores(net.predict(ds.images(x[idx], dtype)), score_rule(net))
        scores[i:i + len(idx)] = prob[np.arange(len(idx)), predictions[idx]]
    order = np.argsort(-scores, kind="stable")[:limit]
    return wrong[order], scores[order]


def evaluation_figure(cm, ds, split: str, predictions, net, dtype, limit: int = 16):
    """The confusion matrix as an annotated heat map, beside the worst mistakes of the split.

    cm: (n_classes, n_classes) counts, rows true, columns predicted."""
    import numpy as np

    cm = np.asarray(cm)
    x, y = ds.split(split)
    n, k = int(cm.sum()), ds.n_classes
    n_wrong = int(np.count_nonzero(np.asarray(predictions) != y))
    idx, scores = worst_mistakes(net, ds, split, predictions, dtype, limit)
    fig = new_figure(14, 6.5)
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.05])

    ax = left.subplots()
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    left.colorbar(im, ax=ax, shrink=0.8, label="samples")
    names = [short_name(n) for n in ds.class_names]
    long_names = max(map(len, names)) > 3
    ax.set_xticks(range(k), names, rotation=45 if long_names else 0,
                  ha="right" if long_names else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = float(np.trace(cm)) / n if n else float("nan")
    ax.set_title(f"confusion matrix, {split} split\naccuracy {acc:.2%} of {n:,} samples")
    if k <= 30:
        top = cm.max() if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        fontsize=10 if k <= 10 else 7,
                        color="white" if top and cm[i, j] > top / 2 else "black")

    if len(idx) == 0:
        ax2 = right.subplots()
        ax2.set_axis_off()
        ax2.text(0.5, 0.5, f"No mistakes: all {n:,} {split} samples\nare classified correctly",
                 ha="center", va="center", fontsize=16, transform=ax2.transAxes)
        return fig
    cols = 4
    rows = math.ceil(len(idx) / cols)
    imgs = ds.images(x[idx], np.float64)
    lo, hi = float(imgs.min()), float(imgs.max())
    axes = right.subplots(rows, cols, squeeze=False)
    for a in axes.flat:
        a.set_axis_off()
    for a, i, img, s in zip(axes.flat, idx, imgs, scores):
        a.imshow(_as_picture(img, lo, hi), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        a.set_title(f"true {names[y[i]]}\npred {names[predictions[i]]} (p {s:.1%})", fontsize=9)
    right.suptitle(f"worst {len(idx)} of {n_wrong:,} mistakes (p: the probability given to the "
                   f"wrong class)", fontsize=11)
    return fig


def plot_evaluation(path, cm, ds, split: str, predictions, net, dtype) -> Path:
    """``cnn eval --plot``: write evaluation_figure to ``path``."""
    return save_figure(evaluation_figure(cm, ds, split, predictions, net, dtype), path)


# ---------------------------------------------------------------- kernels
def conv_layers(net) -> list[tuple[int, object]]:
    """(index, layer) of every conv2d layer of ``net``."""
    return [(i, layer) for i, layer in enumerate(net.layers) if layer.type_name == "conv2d"]


def kernel_mosaic(w):
    """w: (C_out, C_in, Kh, Kw) -> one image (C_out*(Kh+1)-1, C_in*(Kw+1)-1): kernel [o, i] at
    tile row o, column i, tiles separated by one NaN pixel (drawn as background)."""
    import numpy as np

    c_out, c_in, kh, kw = w.shape
    out = np.full((c_out * (kh + 1) - 1, c_in * (kw + 1) - 1), np.nan)
    for o in range(c_out):
        for i in range(c_in):
            out[o * (kh + 1):o * (kh + 1) + kh, i * (kw + 1):i * (kw + 1) + kw] = w[o, i]
    return out


def kernel_grid(w):
    """w: (C_out, 1, Kh, Kw), a layer with one input channel such as the first layer on grey
    images -> one image of its C_out kernels in a near-square grid, row by row (kernel o at tile
    row o // cols, column o % cols; cols = ceil(sqrt(C_out))), tiles separated by one NaN pixel,
    empty tiles NaN. A column of C_out tiles would be a thin strip."""
    import numpy as np

    c_out, _, kh, kw = w.shape
    cols = math.ceil(math.sqrt(c_out))
    rows = math.ceil(c_out / cols)
    out = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for o in range(c_out):
        r, c = divmod(o, cols)
        out[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = w[o, 0]
    return out


def _tile_ticks(ax, axis: str, count: int, size: int):
    step = max(1, math.ceil(count / 16))
    ticks = range(0, count, step)
    pos = [t * (size + 1) + (size - 1) / 2 for t in ticks]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, [str(t) for t in ticks])


def kernels_figure(net, title: str, source: str = "the network"):
    """Each conv2d layer's kernels as small images: one row per output channel, one column per
    input channel, a diverging colour map centred on 0 (symmetric limits, one scale per layer)."""
    import numpy as np

    convs = conv_layers(net)
    if not convs:
        kinds = ", ".join(layer.type_name for layer in net.layers)
        raise CnnError(f"{source}: the network has no conv2d layer, so there are no kernels to "
                       f"show (its layers: {kinds})")
    def mosaic_of(w):
        w = np.asarray(w, dtype=np.float64)
        return kernel_grid(w) if w.shape[1] == 1 and w.shape[0] > 1 else kernel_mosaic(w)

    mosaics = [mosaic_of(layer.params["W"]) for _, layer in convs]
    # Fixed geometry in inches (a layout engine squeezes tall, narrow mosaics): each layer is a
    # block of title, image and axis labels; one kernel pixel is `px` inches in every layer.
    left, right, head, foot, top = 1.0, 1.4, 0.65, 0.7, 0.55
    px = 0.15
    widest = max(m.shape[1] for m in mosaics)
    total = sum(m.shape[0] for m in mosaics)
    px = max(px, 3.0 / max(widest, max(m.shape[0] for m in mosaics)))  # small mosaics: 3 in
    px = min(px, 14.0 / widest, 36.0 / total)
    px = max(px, 1.0 / DPI)
    blocks = [head + max(m.shape[0] * px, 0.4) + foot for m in mosaics]
    width = max(6.0, left + widest * px + right)
    height = top + sum(blocks)
    fig = new_figure(width, height, layout=None)
    y = height - top
    for mosaic, block, (i, layer) in zip(mosaics, blocks, convs):
        c_out, c_in, kh, kw = layer.params["W"].shape
        h_img, w_img = mosaic.shape[0] * px, mosaic.shape[1] * px
        x0 = left + (width - left - right - w_img) / 2
        y0 = y - head - max(h_img, 0.4) + (max(h_img, 0.4) - h_img) / 2
        ax = fig.add_axes((x0 / width, y0 / height, w_img / width, h_img / height))
        m = float(np.nanmax(np.abs(mosaic))) or 1.0
        im = ax.imshow(mosaic, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest",
                       aspect="auto")
        bar_h = max(h_img, 0.8)
        cax = fig.add_axes(((x0 + w_img + 0.15) / width, (y0 + h_img / 2 - bar_h / 2) / height,
                            0.12 / width, bar_h / height))
        fig.colorbar(im, cax=cax, label="weight")
        grid = c_in == 1 and c_out > 1
        if grid:  # kernel_grid: output channels row by row
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"output channels 0-{c_out - 1}, row by row", fontsize=9)
        else:
            _tile_ticks(ax, "x", c_in, kw)
            _tile_ticks(ax, "y", c_out, kh)
            ax.set_xlabel("input channel", fontsize=9)
            ax.set_ylabel("output channel", fontsize=9)
        ax.tick_params(length=0, labelsize=8)
        for sp in ax.spines.values():
            sp.set_visible(False)
        fig.text(0.5, (y - 0.1) / height, f"layer {i} (conv2d): {c_out} output x {c_in} input "
                 f"channels, {kh}x{kw} kernels, max |w| = {m:.3g}", ha="center", va="top",
                 fontsize=10)
        y -= block
    fig.suptitle(title, fontsize=12, y=1 - 0.12 / height, va="top")
    return fig


def plot_kernels(path, net, title: str, source: str = "the network") -> Path:
    """``cnn show-kernels``: write kernels_figure to ``path``."""
    return save_figure(kernels_figure(net, title, source), path)


# ---------------------------------------------------------------- predictions
def plot_predictions(path, images, rows: list[dict], pixel_max: float, title: str,
                     cols: int = 8) -> Path:
    """A grid of the predicted images, each titled with its predicted class and score (and
    its file name), for a first look at what the model gets wrong.

    images: (N, C, H, W) in the stored form (full intensity ``pixel_max``); rows: the
    prediction records of the same images, in order."""
    import numpy as np

    n = len(images)
    cols = max(1, min(cols, n))
    nrows = max(1, -(-n // cols))
    cell = 1.5
    fig = new_figure(0.4 + cols * cell, 0.7 + nrows * (cell + 0.35))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_visible(False)
            continue
        img = np.asarray(images[i], dtype=np.float64)
        ax.imshow(_as_picture(img, 0.0, pixel_max), cmap="gray", vmin=0.0, vmax=pixel_max,
                  interpolation="nearest")
        r = rows[i]
        name = Path(r["path"].split("[")[0]).name + (r["path"][len(r["path"].split("[")[0]):])
        ax.set_title(f"{short_name(r['class'], 22)} {100 * r['score']:.1f}%\n{name[:22]}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
