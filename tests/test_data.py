"""Datasets: scikit-learn digits end to end, and the user's own arrays (.npz) with every check."""

import numpy as np
import pytest

from cnncli.config import load_config
from cnncli.data import load_dataset
from cnncli.train import Trainer, evaluate
from conftest import ROOT
from helpers import COUNTS, SHAPES, read_metrics


def test_digits_config_reaches_95_percent():
    cfg = load_config(ROOT / "configs" / "digits.yaml")
    trainer = Trainer(cfg)
    assert trainer.data.x_train.dtype == np.uint8 and trainer.data.input_shape == (1, 8, 8)
    assert len(trainer.data.y_train) + len(trainer.data.y_test) == 1797
    for _ in range(cfg["training"]["epochs"]):
        row = trainer.train_epoch()
    assert row["test_accuracy"] >= 0.95, row


def test_digits_split_follows_the_seed():
    a = load_dataset({"name": "digits", "test_size": 0.25, "limit": None}, seed=0)
    b = load_dataset({"name": "digits", "test_size": 0.25, "limit": None}, seed=1)
    assert abs(len(a.y_test) - 0.25 * 1797) <= 5  # stratified: rounded per class
    assert not np.array_equal(a.y_test, b.y_test)
    assert a.images(a.x_train[:2], np.float64).max() <= 1.0


def make_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((20, 5, 5)), "y_train": rng.integers(0, 3, 20),
              "x_test": rng.random((8, 5, 5)), "y_test": rng.integers(0, 3, 8)}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_npz_loader_accepts_variants(tmp_path):
    ds = load_dataset({"name": "npz", "path": str(make_npz(tmp_path / "a.npz")), "limit": None}, 0)
    assert ds.input_shape == (1, 5, 5) and ds.n_classes == 3
    one_hot = np.eye(4)[np.arange(20) % 4]
    ds = load_dataset({"name": "npz", "path": str(make_npz(
        tmp_path / "b.npz", x_train=np.zeros((20, 2, 5, 5), np.uint8), x_test=np.zeros((8, 2, 5, 5), np.uint8),
        y_train=one_hot)), "limit": 10}, 0)
    assert ds.input_shape == (2, 5, 5) and ds.n_classes == 4 and len(ds.y_train) == 10
    assert ds.scale == pytest.approx(1 / 255)


NAN = np.full((20, 5, 5), np.nan)
BAD_NPZ = {
    "missing key": (dict(y_test=None), "missing array(s) y_test"),
    "nan pixels": (dict(x_train=NAN), "NaN or infinite"),
    "negative label": (dict(y_train=np.full(20, -1)), "negative label"),
    "label count": (dict(y_train=np.zeros(19, int)), "has 19 labels but there are 20 images"),
    "image sizes": (dict(x_test=np.zeros((8, 6, 6))), "they must agree"),
    "zero samples": (dict(x_test=np.zeros((0, 5, 5)), y_test=np.zeros(0, int)), "at least one image"),
    "bad rank": (dict(x_train=np.zeros((20, 25))), "must have shape (N, H, W) or (N, C, H, W)"),
    "string labels": (dict(y_train=np.array(["a"] * 20)), "integer class labels"),
    "fractional labels": (dict(y_train=np.full(20, 0.5)), "integer class labels"),
    "bad one-hot": (dict(y_train=np.full((20, 3), 0.5)), "must be one-hot"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_gives_one_line(cnn, tmp_path, case):
    changes, phrase = BAD_NPZ[case]
    data = make_npz(tmp_path / "data.npz", **changes)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{name: npz, path: '{data}'}}\nnetwork:\n  - {{type: flatten}}\n"
                   "  - {type: dense, out_features: 3}\ntraining: {epochs: 1}\n")
    result = cnn("train", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 1, result.output
    assert phrase in result.output and str(data) in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))
    from cnncli.errors import DataError

    with pytest.raises(DataError, match="pickled"):
        load_dataset({"name": "npz", "path": str(path), "limit": None}, 0)


def test_batch_larger_than_training_set_gives_one_smaller_batch(tmp_path, monkeypatch):
    """batch_size 1000 on 20 training samples: the epoch trains exactly one batch holding every
    training sample, and its metrics are that batch's (the network before the one update)."""
    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["data.n=30", "training.batch_size=1000",
                                                          "training.epochs=1"])
    trainer = Trainer(cfg)
    n_train = len(trainer.data.y_train)
    assert 0 < n_train < 1000
    assert trainer.batch_sizes() == [n_train]
    # what the network, before its one update, says of the whole training set
    expected = evaluate(trainer.net, trainer.loss, trainer.data, "train", trainer.dtype)
    trained = []  # the size of each batch the network is trained on
    forward = trainer.net.forward
    monkeypatch.setattr(trainer.net, "forward",
                        lambda x: (trained.append(len(x)) if trainer.net.training else None) or forward(x))
    calls = []
    row = trainer.train_epoch(lambda b, n, loss: calls.append((b, n, loss)))
    assert trained == [n_train]  # one forward pass in train mode, of all the samples
    assert [(b, n) for b, n, _ in calls] == [(1, 1)]  # on_batch once: batch 1 of 1
    assert row["train_loss"] == pytest.approx(calls[0][2], rel=1e-12)
    assert row["train_loss"] == pytest.approx(expected["loss"], rel=1e-9)
    assert row["train_accuracy"] == expected["accuracy"]


def test_batch_larger_than_the_training_set_trains_one_smaller_batch(cnn, tmp_path):
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--batch-size", 1000,
                 "--set", "data.n=30", "--quiet")
    COUNTS["hostile"] += 1
    assert result.exit_code == 0, result.output
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    from cnncli.train import Trainer

    trainer = Trainer(load_config(run / "config.yaml"))
    batches = []
    trainer.train_epoch(lambda b, n, loss: batches.append((b, n)))
    assert batches == [(1, 1)]  # 20 training samples, batch_size 1000: one batch of 20
