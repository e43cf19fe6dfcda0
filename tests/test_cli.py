"""The cnn command end to end: run directories, determinism, resume, eval, generate-shapes,
summary, gradcheck, and bad checkpoints."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from cnncli import __version__
from cnncli.checkpoint import load_checkpoint
from conftest import ROOT

SHAPES = str(ROOT / "configs" / "shapes.yaml")


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_same_run(run, other):
    """Two run directories hold the same training: metrics.csv equal but for the timings, and
    every array of last.npz (parameters, buffers, optimizer state) identical to the bit."""
    strip = lambda rows: [{c: v for c, v in r.items() if c != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(run)) == strip(read_metrics(other))
    a, _ = load_checkpoint(run / "last.npz")
    b, _ = load_checkpoint(other / "last.npz")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key


def params(path):
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("layers.")}


@pytest.fixture(scope="module")
def shapes_run(cnn, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "shapes"
    result = cnn("train", SHAPES, "--run-dir", run)
    assert result.exit_code == 0, result.output
    return run, result.output


def test_version_and_help(cnn):
    assert cnn("--version").output.strip() == f"cnncli {__version__}"
    for command in ["train", "eval", "generate-shapes", "summary", "gradcheck"]:
        result = cnn(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "cnncli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"cnncli {__version__}"


def test_train_writes_the_run_directory(shapes_run):
    run, output = shapes_run
    for name in ["config.yaml", "metrics.csv", "last.npz", "best.npz", "train.log"]:
        assert (run / name).is_file(), name
    rows = read_metrics(run)
    assert list(rows[0]) [:6] == ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 51))
    final = float(rows[-1]["test_accuracy"])
    assert final == 1.0
    assert f"Final test accuracy: {100 * final:.2f}%" in output
    assert str(run) in output
    log = (run / "train.log").read_text()
    assert "epoch 50/50" in log and "\x1b[" not in log
    # the resolved config holds every value used, seed included
    saved = (run / "config.yaml").read_text()
    assert "seed: 0" in saved and "in_features: 16" in saved and "momentum: 0.0" in saved


def test_best_checkpoint_holds_the_best_epoch(shapes_run):
    run, _ = shapes_run
    rows = read_metrics(run)
    best = max(rows, key=lambda r: float(r["test_accuracy"]))
    _, meta = load_checkpoint(run / "best.npz")
    assert meta["epoch"] == int(best["epoch"])
    _, meta = load_checkpoint(run / "last.npz")
    assert meta["epoch"] == 50 and meta["metrics"]["epoch"] == 50
    assert meta["config"]["seed"] == 0 and "rng_state" in meta


def test_same_config_and_seed_give_identical_runs(cnn, tmp_path, shapes_run):
    run, _ = shapes_run
    again = tmp_path / "again"
    assert cnn("train", SHAPES, "--run-dir", again, "--quiet").exit_code == 0
    assert_same_run(run, again)


def test_existing_run_directory_is_never_overwritten(cnn, shapes_run):
    run, _ = shapes_run
    before = (run / "metrics.csv").read_bytes()
    result = cnn("train", SHAPES, "--run-dir", run)
    assert result.exit_code == 1
    assert "exists and is not empty" in result.output and "--resume" in result.output
    assert (run / "metrics.csv").read_bytes() == before


def test_default_run_directory(cnn, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = cnn("train", SHAPES, "--epochs", "1", "--quiet")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("shapes-")
    assert len(read_metrics(runs[0])) == 1
    assert result.output.count("\n") == 1  # --quiet: only the final line


def test_cli_overrides(cnn, tmp_path):
    run = tmp_path / "r"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--lr", "1e-3", "--batch-size", 32,
                 "--seed", 3, "--set", "data.noise=0.1", "--quiet")
    assert result.exit_code == 0, result.output
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["training"]["epochs"] == 2 and cfg["training"]["learning_rate"] == 0.001
    assert cfg["training"]["batch_size"] == 32 and cfg["seed"] == 3 and cfg["data"]["noise"] == 0.1


def test_eval_reproduces_the_run(cnn, shapes_run):
    run, _ = shapes_run
    rows = read_metrics(run)
    result = cnn("eval", run / "last.npz", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["accuracy"] == float(rows[-1]["test_accuracy"])
    assert report["loss"] == pytest.approx(float(rows[-1]["test_loss"]), rel=1e-12)
    assert report["n"] == 165 and sum(map(sum, report["confusion_matrix"])) == 165
    assert len(report["per_class_accuracy"]) == 4
    table = cnn("eval", run / "last.npz", "--split", "train")
    assert table.exit_code == 0
    assert "Confusion matrix" in table.output and "diamond" in table.output


def test_generate_shapes_then_train_on_the_file(cnn, tmp_path):
    out = tmp_path / "shapes.npz"
    result = cnn("generate-shapes", "--out", out, "--n", 200, "--seed", 1)
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as f:
        assert f["x_train"].shape[1:] == (1, 3, 3)
        assert len(f["y_train"]) + len(f["y_test"]) == 200
        assert list(f["class_names"]) == ["v_line", "h_line", "cross", "diamond"]
    assert "v_line" in result.output
    assert cnn("generate-shapes", "--out", out).exit_code == 1  # never overwritten silently
    cfg = tmp_path / "npz.yaml"
    cfg.write_text((ROOT / "configs" / "shapes.yaml").read_text().replace(
        "data: {name: shapes, n: 500, noise: 0.25, test_size: 0.33}", f"data: {{name: npz, path: '{out}'}}"))
    result = cnn("train", cfg, "--run-dir", tmp_path / "run", "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output


def test_summary_table(cnn):
    result = cnn("summary", SHAPES)
    assert result.exit_code == 0
    for text in ["conv2d", "4x2x2", "136", "192"]:
        assert text in result.output


def test_gradcheck_command_passes_for_shipped_configs(cnn, digits_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path))  # the folder dataset's decoding cache
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        if "mnist" in config.name or config.name == "cifar10.yaml":
            continue  # needs the dataset's files; tests/test_mnist.py, test_datasets.py cover them
        # folder-example.yaml trains on the folder `cnn data export digits` writes
        sets = ["--set", f"data.path={digits_folder}"] if config.name == "folder-example.yaml" else []
        result = cnn("gradcheck", config, "--max-entries", 20, *sets)
        assert result.exit_code == 0, (config, result.output)
        assert "FAIL" not in result.output and "pass" in result.output


def test_gradcheck_catches_a_wrong_gradient(cnn, monkeypatch, tmp_path):
    """A layer whose backward is the seed post's rotated kernel gradient fails, by name."""
    from cnncli.layers import LAYERS
    from cnncli.layers.conv import Conv2D

    class RotatedConv(Conv2D):
        def backward(self, dout):
            dx = super().backward(dout)
            self.grads["W"][...] = self.grads["W"][:, :, ::-1, ::-1]
            return dx

    RotatedConv.type_name = "rotated_conv2d"
    monkeypatch.setitem(LAYERS, "rotated_conv2d", RotatedConv)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "configs" / "shapes.yaml").read_text().replace("type: conv2d", "type: rotated_conv2d"))
    result = cnn("gradcheck", cfg)
    assert result.exit_code == 1
    assert "layer 0 (rotated_conv2d) W" in result.output


@pytest.mark.parametrize("kind,phrase", [
    ("missing", "no such file"),
    ("empty", "is empty"),
    ("truncated", "corrupt or truncated"),
    ("not_npz", "not an .npz archive"),
    ("pickled", "pickled Python objects"),
    ("no_meta", "no 'meta' entry"),
    ("newer", "by a newer cnncli"),
    ("directory", "is a directory"),
])
def test_eval_rejects_bad_checkpoints(cnn, tmp_path, shapes_run, kind, phrase):
    run, _ = shapes_run
    good = (run / "last.npz").read_bytes()
    path = tmp_path / "ckpt.npz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "not_npz":
        path.write_text("hello")
    elif kind == "pickled":
        np.savez(path, meta=np.array({"a": 1}, dtype=object))
    elif kind == "no_meta":
        np.savez(path, w=np.zeros(3))
    elif kind == "newer":
        arrays, meta = load_checkpoint(run / "last.npz")
        meta["format_version"] = 99
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    elif kind == "directory":
        path = tmp_path
    result = cnn("eval", path)
    assert result.exit_code == 1, result.output
    assert phrase in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def _train_subprocess(args, **kw):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "cnncli", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _wait_for_epoch(run, k, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.csv").exists() and len(read_metrics(run)) >= k:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate())
        time.sleep(0.01)
    raise AssertionError("training did not reach the epoch in time")


def test_sigint_then_resume_equals_an_uninterrupted_run(cnn, tmp_path):
    """Ctrl-C after epoch k exits 130 with last.npz for a finished epoch; --resume finishes the
    run with metrics and parameters identical to an uninterrupted run."""
    full = tmp_path / "full"
    assert cnn("train", SHAPES, "--run-dir", full, "--quiet", "--set", "data.n=5000").exit_code == 0
    run = tmp_path / "interrupted"
    proc = _train_subprocess([SHAPES, "--run-dir", run, "--set", "data.n=5000"])
    _wait_for_epoch(run, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cnn train --resume" in err and "Traceback" not in err
    _, meta = load_checkpoint(run / "last.npz")
    k = meta["epoch"]
    assert 3 <= k < 50
    assert len(read_metrics(run)) == k
    result = cnn("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert_same_run(run, full)


def test_resume_can_extend_epochs_and_refuses_other_changes(cnn, tmp_path):
    run = tmp_path / "r"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--quiet").exit_code == 0
    result = cnn("train", "--resume", run, "--epochs", 4, "--quiet")
    assert result.exit_code == 0, result.output
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2, 3, 4]
    result = cnn("train", SHAPES, "--resume", run, "--lr", 0.5)
    assert result.exit_code == 1
    assert "training.learning_rate: 0.1 -> 0.5" in result.output
    result = cnn("train", "--resume", tmp_path / "nothing")
    assert result.exit_code == 1 and "no such run directory" in result.output


def test_nonfinite_loss_stops_with_a_clear_error(cnn, tmp_path):
    linear = tmp_path / "linear.yaml"  # no sigmoid: nothing bounds the outputs
    linear.write_text((ROOT / "configs" / "shapes.yaml").read_text().replace("  - {type: sigmoid}", ""))
    run = tmp_path / "nan"
    result = cnn("train", linear, "--run-dir", run, "--lr", "1e6", "--epochs", 5)
    assert result.exit_code == 1, result.output
    assert "epoch 1, batch" in result.output and "not finite" in result.output
    assert "lower learning rate" in result.output
    assert "Warning" not in result.output and "Traceback" not in result.output


def test_sigkill_while_checkpointing_never_leaves_a_broken_file(tmp_path):
    """A process saving checkpoints in a loop is killed at random moments: last.npz always loads."""
    script = (
        "import sys, numpy as np\n"
        "from cnncli.checkpoint import save_checkpoint\n"
        "meta = {'config': {}, 'epoch': 0, 'input_shape': [1], 'class_names': ['a']}\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    save_checkpoint(sys.argv[1], {'layers.0.W': np.full((300, 300), float(i))}, dict(meta, epoch=i))\n"
    )
    path = tmp_path / "last.npz"
    rng = np.random.default_rng(0)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        time.sleep(0.3 + rng.random() * 0.3)
        proc.kill()
        proc.wait()
        arrays, meta = load_checkpoint(path)
        assert np.all(arrays["layers.0.W"] == meta["epoch"])
    assert zipfile.is_zipfile(path)


def test_resume_refuses_fewer_epochs_than_trained(cnn, tmp_path):
    run = tmp_path / "r"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 3, "--quiet").exit_code == 0
    before = (run / "config.yaml").read_bytes()
    result = cnn("train", "--resume", run, "--epochs", 2)
    assert result.exit_code == 1
    assert "--epochs 2 is below the 3 epochs" in result.output
    assert (run / "config.yaml").read_bytes() == before
