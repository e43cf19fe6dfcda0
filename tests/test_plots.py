"""Pictures: curves.png during training, `cnn plot`, `generate-shapes --preview`, `eval --plot`,
`cnn show-kernels`, and matplotlib staying out of the CLI's import and off any display.

Every picture is opened with matplotlib's own PNG reader and checked for its size and for not
being blank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnncli import plots
from cnncli.run import read_metrics
from conftest import run_cnn

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes.yaml"


def ok(*args):
    result = run_cnn(*args)
    assert result.exit_code == 0, result.output
    return result


def error_line(result) -> str:
    """The CLI's one-line error: exit 1, a single 'Error: ...' line on stderr."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def check_picture(path, size=None, min_size=(300, 200)):
    """Open a PNG with matplotlib's reader: its (width, height) and that it is not blank."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    if size is not None:
        assert (w, h) == size
    assert w >= min_size[0] and h >= min_size[1], (w, h)
    assert img.var() > 0, f"{path} is blank"
    rgb = img[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.01, f"{path} is almost all white"
    return img


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short shapes trainings (3 and 2 epochs) through the real `cnn train`."""
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "run-a", root / "run-b"
    ok("train", SHAPES, "--epochs", 3, "--run-dir", a, "--quiet")
    ok("train", SHAPES, "--epochs", 2, "--seed", 1, "--run-dir", b, "--quiet")
    return a, b


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory):
    """A checkpoint of a network without conv layers (one epoch of shapes)."""
    root = tmp_path_factory.mktemp("dense")
    cfg = root / "dense.yaml"
    cfg.write_text("seed: 0\ndata: {name: shapes, n: 100}\nnetwork:\n  - {type: flatten}\n"
                   "  - {type: dense, out_features: 4}\n  - {type: sigmoid}\n"
                   "training: {epochs: 1, batch_size: 16, learning_rate: 0.1, loss: mse}\n")
    ok("train", cfg, "--run-dir", root / "run", "--quiet")
    return root / "run" / "best.npz"


# ---------------------------------------------------------------- curves.png during training
def test_train_writes_curves_png(runs):
    a, _ = runs
    check_picture(a / "curves.png", size=(1100, 440))
    state = plots.draw_stats(a)
    assert state is not None and state.calls >= 3 and state.draws >= 1
    assert not [p.name for p in a.iterdir() if p.name.endswith(".tmp")]


def test_forced_draw_redraws_only_what_changed(runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs[0], run)
    (run / "curves.png").unlink()
    assert plots.plot_run_curves(run, "shapes", force=True) == run / "curves.png"
    check_picture(run / "curves.png", size=(1100, 440))
    # metrics.csv unchanged and curves.png present: nothing to redraw, even when forced
    assert plots.plot_run_curves(run, "shapes", force=True) is None
    (run / "curves.png").unlink()
    assert plots.plot_run_curves(run, "shapes", force=True) == run / "curves.png"
    assert plots.draw_stats(run).draws == 2


def test_should_draw_waits_twenty_times_the_last_cost():
    state = plots.DrawState(last_end=10.0, last_cost=0.1)
    assert not plots.should_draw(state, 11.99)
    assert plots.should_draw(state, 12.0)
    assert plots.RATIO >= 19  # drawing stays under 1 / (RATIO + 1) of the time: < 5%


def _fresh_run(src: Path, dst: Path, age: float) -> Path:
    """A copy of a run whose config.yaml (training start) is ``age`` seconds old."""
    import shutil
    import time

    shutil.copytree(src, dst)
    (dst / "curves.png").unlink()
    t = time.time() - age
    os.utime(dst / "config.yaml", (t, t))
    return dst


def test_throttle_draws_at_once_then_skips_fast_epochs_until_time_has_passed(runs, tmp_path, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(plots, "_clock", lambda: clock["now"])
    # the first call (after the first epoch) draws at once: a picture is there from the start
    run = _fresh_run(runs[0], tmp_path / "new", age=0.0)
    assert plots.plot_run_curves(run, "shapes") == run / "curves.png"
    state = plots.draw_stats(run)
    state.last_cost = 0.5  # the fake clock measured 0
    for _ in range(50):  # fast epochs: throttled
        with open(run / "metrics.csv", "a") as f:
            f.write("4,0.1,0.5,0.1,0.5,0.01,0.1\n")
        clock["now"] += 0.1
        assert plots.plot_run_curves(run, "shapes") is None
    assert (state.calls, state.draws) == (51, 1)
    # after 20x the last draw's cost has passed it draws, then waits again
    clock["now"] = state.last_end + 10.5
    assert plots.plot_run_curves(run, "shapes") == run / "curves.png"
    state.last_cost = 0.5
    clock["now"] += 9.5
    with open(run / "metrics.csv", "a") as f:  # a new epoch
        f.write("5,0.1,0.5,0.1,0.5,0.01,0.1\n")
    assert plots.plot_run_curves(run, "shapes") is None
    clock["now"] += 1.0
    assert plots.plot_run_curves(run, "shapes") == run / "curves.png"
    assert plots.draw_stats(run).draws == 3


# ---------------------------------------------------------------- cnn plot
def test_plot_two_runs(runs, tmp_path):
    out = tmp_path / "both.png"
    result = ok("plot", *runs, "--out", out)
    assert f"Wrote {out}" in result.output
    check_picture(out, size=(1100, 440))


def test_plot_legend_names_the_runs(runs):
    rows = [read_metrics(r) for r in runs]
    fig = plots.curves_figure(list(zip(rows, plots.run_labels(list(runs)))), "2 runs")
    texts = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"run-a", "run-b", "train", "test"} <= texts


def test_run_labels_fall_back_to_paths_when_names_collide():
    assert plots.run_labels([Path("x/a"), Path("y/b")]) == ["a", "b"]
    assert plots.run_labels([Path("x/run"), Path("y/run")]) == ["x/run", "y/run"]


def test_plot_default_out_is_plot_png(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("plot", runs[0])
    check_picture(tmp_path / "plot.png", size=(1100, 440))


def test_plot_help_documents_out_and_an_example():
    text = ok("plot", "--help").output
    assert "plot.png" in text and "cnn plot runs/" in text


def test_plot_missing_dir_is_one_error(cnn, tmp_path):
    line = error_line(cnn("plot", tmp_path / "nope", "--out", tmp_path / "p.png"))
    assert "nope: no such run directory" in line
    assert not (tmp_path / "p.png").exists()


def test_plot_dir_without_rows_or_metrics_is_one_error(cnn, runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no metrics.csv" in error_line(cnn("plot", empty, "--out", tmp_path / "p.png"))
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.csv").write_text(
        "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,learning_rate\n")
    line = error_line(cnn("plot", runs[0], started, "--out", tmp_path / "p.png"))
    assert "no finished epoch" in line
    assert not (tmp_path / "p.png").exists()


def test_plot_unknown_picture_format_is_one_error(cnn, runs, tmp_path):
    assert "cannot write a .xyz picture" in error_line(cnn("plot", runs[0], "--out", tmp_path / "p.xyz"))


# ---------------------------------------------------------------- generate-shapes --preview
def test_generate_shapes_preview(tmp_path):
    out = tmp_path / "preview.png"
    ok("generate-shapes", "--out", tmp_path / "s.npz", "--n", 120, "--preview", out)
    check_picture(out, size=(880, 450))


# ---------------------------------------------------------------- eval --plot
def test_eval_plot(runs, tmp_path):
    out = tmp_path / "eval.png"
    ok("eval", runs[0] / "best.npz", "--plot", out)
    check_picture(out, size=(1400, 650))


def _eval_inputs(checkpoint):
    from cnncli.checkpoint import load_network
    from cnncli.data import load_dataset
    from cnncli.metrics import confusion_matrix

    net, cfg, _, _ = load_network(checkpoint)
    ds = load_dataset(cfg["data"], cfg["seed"])
    dtype = np.dtype(cfg["training"]["dtype"])
    preds = net.predict(ds.images(ds.x_test, dtype)).argmax(axis=1)
    return net, ds, dtype, preds, confusion_matrix


def test_worst_mistakes_are_wrong_and_sorted(runs):
    net, ds, dtype, preds, _ = _eval_inputs(runs[0] / "best.npz")
    idx, scores = plots.worst_mistakes(net, ds, "test", preds, dtype, limit=16)
    assert 0 < len(idx) <= 16
    assert (preds[idx] != ds.y_test[idx]).all()
    assert (np.diff(scores) <= 0).all()
    out = net.predict(ds.images(ds.x_test, dtype))
    wrong = preds != ds.y_test
    # scores are probabilities: the shapes network's sigmoid outputs, normalised to sum 1
    prob = out / out.sum(axis=1, keepdims=True)
    assert scores[0] == pytest.approx(prob[wrong, preds[wrong]].max())
    assert ((0 <= scores) & (scores <= 1)).all()


def test_eval_plot_labels_mistakes_with_probabilities_not_logits(runs):
    """A network ending in a dense layer outputs logits: the picture shows softmax probabilities."""
    from cnncli.network import build_network

    net, ds, dtype, preds, confusion_matrix = _eval_inputs(runs[0] / "best.npz")
    logits_net = build_network(net.specs[:-1], net.input_shape, np.random.default_rng(0))
    logits_net.layers[0].params["W"] *= 50  # large logits, far outside [0, 1]
    out = logits_net.predict(ds.images(ds.x_test, dtype))
    preds = out.argmax(axis=1)
    assert np.abs(out).max() > 1
    cm = confusion_matrix(ds.y_test, preds, ds.n_classes)
    fig = plots.evaluation_figure(cm, ds, "test", preds, logits_net, dtype)
    titles = [ax.get_title() for ax in fig.findobj(lambda a: hasattr(a, "get_title"))]
    shown = [float(t.split("(p ")[1].rstrip("%)")) for t in titles if "(p " in t]
    assert shown and all(0 <= v <= 100 for v in shown)
    e = np.exp(out - out.max(axis=1, keepdims=True))
    wrong = preds != ds.y_test
    top = (e / e.sum(axis=1, keepdims=True))[wrong, preds[wrong]].max()
    assert max(shown) == pytest.approx(100 * top, abs=0.06)
    texts = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "probability" in texts


def test_evaluation_without_mistakes_says_so(runs):
    net, ds, dtype, _, confusion_matrix = _eval_inputs(runs[0] / "best.npz")
    perfect = ds.y_test.copy()
    cm = confusion_matrix(ds.y_test, perfect, ds.n_classes)
    fig = plots.evaluation_figure(cm, ds, "test", perfect, net, dtype)
    texts = " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert "No mistakes" in texts


# ---------------------------------------------------------------- show-kernels
def test_show_kernels(runs, tmp_path):
    out = tmp_path / "k.png"
    ok("show-kernels", runs[0] / "best.npz", "--out", out)
    check_picture(out, min_size=(600, 300))


def test_show_kernels_default_out(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("show-kernels", runs[0] / "last.npz")
    check_picture(tmp_path / "kernels.png", min_size=(600, 300))


def test_kernel_images_are_channel_grids_on_a_zero_centred_scale(runs):
    from cnncli.checkpoint import load_network

    net, _, _, _ = load_network(runs[0] / "best.npz")
    (_, conv), = plots.conv_layers(net)
    w = conv.params["W"]  # (4, 1, 2, 2)
    fig = plots.kernels_figure(net, "t")
    (im,) = [im for ax in fig.axes for im in ax.get_images()]
    mosaic = im.get_array()
    # one input channel: the 4 kernels in a 2x2 grid, row by row, not a 4x1 strip
    assert mosaic.shape == (2 * 3 - 1, 2 * 3 - 1)
    np.testing.assert_array_equal(mosaic[0:2, 3:5], w[1, 0])
    np.testing.assert_array_equal(mosaic[3:5, 0:2], w[2, 0])
    assert im.norm.vmin == -im.norm.vmax == -np.abs(w).max()
    assert im.get_cmap().name == "RdBu_r"


def test_kernel_layouts_first_layer_grid_and_later_layers_channel_grid():
    """A first layer of 10 kernels on one input channel: a 4-wide grid (3 rows, 2 empty tiles);
    a layer of 3 outputs x 2 inputs: one row per output channel, one column per input."""
    w = np.arange(10 * 1 * 2 * 2, dtype=float).reshape(10, 1, 2, 2)
    grid = plots.kernel_grid(w)
    assert grid.shape == (3 * 3 - 1, 4 * 3 - 1)
    np.testing.assert_array_equal(grid[3:5, 3:5], w[5, 0])  # kernel 5: row 1, column 1
    assert np.isnan(grid[6:8, 6:8]).all()  # tiles 10 and 11 are empty
    w2 = np.arange(3 * 2 * 2 * 2, dtype=float).reshape(3, 2, 2, 2)
    assert plots.kernel_mosaic(w2).shape == (3 * 3 - 1, 2 * 3 - 1)


@pytest.mark.parametrize("lo,hi", [(0.982, 0.992), (0.9901, 0.9905), (0.2, 1.0)])
def test_accuracy_tick_labels_never_repeat_on_narrow_ranges(lo, hi):
    rows = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1 / e,
             "train_accuracy": lo + (hi - lo) * e / 10, "test_accuracy": lo + (hi - lo) * e / 10}
            for e in range(1, 11)]
    fig = plots.curves_figure([(rows, "run")], "t")
    fig.canvas.draw()
    ax_acc = fig.axes[1]
    low, high = ax_acc.get_ylim()
    labels = [t.get_text() for t, v in zip(ax_acc.get_yticklabels(), ax_acc.get_yticks())
              if low <= v <= high]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(label.endswith("%") for label in labels)


def test_show_kernels_without_conv_layers_is_one_error(cnn, dense_checkpoint, tmp_path):
    out = tmp_path / "k.png"
    line = error_line(cnn("show-kernels", dense_checkpoint, "--out", out))
    assert "no conv2d layer" in line and "dense" in line
    assert not out.exists()


# ---------------------------------------------------------------- no matplotlib at startup
def _env_without_display():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    return env


def test_cli_import_loads_no_matplotlib_scipy_or_sklearn():
    code = ("import sys, cnncli.cli; heavy = [m for m in ('matplotlib', 'scipy', 'sklearn') "
            "if m in sys.modules]; import cnncli.plots, cnncli.train, cnncli.run; "
            "print(heavy, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env_without_display(), check=True).stdout
    assert out.strip() == "[] False"


def test_help_runs_without_a_display():
    result = subprocess.run([sys.executable, "-m", "cnncli", "--help"], capture_output=True,
                            text=True, env=_env_without_display())
    assert result.returncode == 0, result.stderr
    assert "plot" in result.stdout and "show-kernels" in result.stdout


def test_pictures_need_no_display_even_with_a_gui_backend_set(tmp_path):
    env = {**_env_without_display(), "MPLBACKEND": "TkAgg"}
    result = subprocess.run([sys.executable, "-m", "cnncli", "generate-shapes", "--out",
                             str(tmp_path / "s.npz"), "--n", "60", "--preview",
                             str(tmp_path / "p.png")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    check_picture(tmp_path / "p.png", size=(880, 450))


def test_every_command_that_writes_a_picture_prints_where(cnn, tmp_path):
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert f"Curves: {run / 'curves.png'}" in result.output
    for args, out in [(["eval", run / "best.npz", "--plot", tmp_path / "e.png"], tmp_path / "e.png"),
                      (["generate-shapes", "-o", tmp_path / "s.npz", "--preview", tmp_path / "p.png"], tmp_path / "p.png"),
                      (["plot", run, "-o", tmp_path / "c.png"], tmp_path / "c.png"),
                      (["show-kernels", run / "best.npz", "-o", tmp_path / "k.png"], tmp_path / "k.png")]:
        result = cnn(*args)
        assert result.exit_code == 0, result.output
        assert f"Wrote {out}" in result.output and out.is_file(), args
