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
from typer.testing import CliRunner

from cnncli import plots
from cnncli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "configs" / "shapes.yaml"
runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    result = cnn(*args)
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


def test_throttle_skips_fast_epochs_and_draws_when_time_has_passed(runs, tmp_path, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(plots, "_clock", lambda: clock["now"])
    # training began just now: the first draw (import + draw, a guessed cost) must wait
    run = _fresh_run(runs[0], tmp_path / "new", age=0.0)
    for _ in range(50):
        assert plots.plot_run_curves(run, "shapes") is None
    state = plots.draw_stats(run)
    assert (state.calls, state.draws) == (50, 0)
    assert not (run / "curves.png").exists()
    # after 20x the last draw's cost has passed it draws, then waits again
    state.last_cost = 0.5
    clock["now"] = state.last_end + 10.5
    assert plots.plot_run_curves(run, "shapes") == run / "curves.png"
    state.last_cost = 0.5  # the fake clock measured 0
    clock["now"] += 9.5
    with open(run / "metrics.csv", "a") as f:  # a new epoch
        f.write("4,0.1,0.5,0.1,0.5,0.01,0.1\n")
    assert plots.plot_run_curves(run, "shapes") is None
    clock["now"] += 1.0
    assert plots.plot_run_curves(run, "shapes") == run / "curves.png"
    assert plots.draw_stats(run).draws == 2
    # a run that began long ago draws on its first call
    old = _fresh_run(runs[0], tmp_path / "old", age=3600.0)
    assert plots.plot_run_curves(old, "shapes") == old / "curves.png"


# ---------------------------------------------------------------- cnn plot
def test_plot_two_runs(runs, tmp_path):
    out = tmp_path / "both.png"
    result = ok("plot", *runs, "--out", out)
    assert f"Wrote {out}" in result.output
    check_picture(out, size=(1100, 440))


def test_plot_legend_names_the_runs(runs):
    rows = [plots.read_metrics(r) for r in runs]
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


def test_plot_missing_dir_is_one_error(tmp_path):
    line = error_line(cnn("plot", tmp_path / "nope", "--out", tmp_path / "p.png"))
    assert "nope: no such run directory" in line
    assert not (tmp_path / "p.png").exists()


def test_plot_dir_without_rows_or_metrics_is_one_error(runs, tmp_path):
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


def test_plot_unknown_picture_format_is_one_error(runs, tmp_path):
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
    assert scores[0] == pytest.approx(out[wrong, preds[wrong]].max())


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
    assert mosaic.shape == (4 * 3 - 1, 1 * 3 - 1)  # one row per output, one column per input
    np.testing.assert_array_equal(mosaic[3:5, 0:2], w[1, 0])
    assert im.norm.vmin == -im.norm.vmax == -np.abs(w).max()
    assert im.get_cmap().name == "RdBu_r"


def test_show_kernels_without_conv_layers_is_one_error(dense_checkpoint, tmp_path):
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
