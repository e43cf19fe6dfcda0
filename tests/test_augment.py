"""Augmentation: the vectorised crop/shift/flip equal a plain per-sample NumPy reference, draws
follow the seed, only training batches are augmented, and --resume stays bit-exact."""

import signal

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.config import load_config
from cnncli.data.augment import apply, augment, check_spec, draw
from cnncli.schema import SchemaError
from cnncli.train import Trainer
from conftest import ROOT
from test_cli import _train_subprocess, _wait_for_epoch, assert_same_run, read_metrics

SHAPES = str(ROOT / "configs" / "shapes.yaml")
AUG = ["--set", "data.augment.crop_padding=1", "--set", "data.augment.shift=1",
       "--set", "data.augment.flip=horizontal"]


def reference(x, draws, spec):
    """The same transformation, one sample and one pixel at a time, as written by hand."""
    out = x.copy()
    n, c, h, w = x.shape
    for i in range(n):
        img = out[i]
        if "crop" in draws:
            p = spec["crop_padding"]
            padded = np.pad(img, ((0, 0), (p, p), (p, p)))
            oy, ox = draws["crop"][i]
            img = padded[:, oy:oy + h, ox:ox + w]
        if "shift" in draws:
            dy, dx = draws["shift"][i]
            moved = np.zeros_like(img)
            for y in range(h):
                for xx in range(w):
                    if 0 <= y - dy < h and 0 <= xx - dx < w:
                        moved[:, y, xx] = img[:, y - dy, xx - dx]
            img = moved
        if "flip" in draws and draws["flip"][i]:
            img = img[:, :, ::-1]
        out[i] = img
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       p=st.integers(0, 3), k=st.integers(0, 3), flip=st.booleans(), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.uint8, np.float64]))
def test_vectorised_augmentation_equals_the_per_sample_reference(n, c, h, w, p, k, flip, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (rng.integers(1, 256, (n, c, h, w))).astype(dtype)
    spec = check_spec({"crop_padding": p, "shift": k, "flip": "horizontal" if flip else None})
    draws = draw(rng, n, spec)
    before = x.copy()
    out = apply(x, draws, spec)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert np.array_equal(out, reference(x, draws, spec))
    assert np.array_equal(x, before)  # the input is left as it is


def test_draws_cover_the_range_and_follow_the_seed():
    spec = check_spec({"crop_padding": 2, "shift": 1, "flip": "horizontal"})
    d = draw(np.random.default_rng(0), 4000, spec)
    assert set(np.unique(d["crop"])) == {0, 1, 2, 3, 4} and set(np.unique(d["shift"])) == {-1, 0, 1}
    assert 0.45 < d["flip"].mean() < 0.55
    x = np.random.default_rng(1).random((8, 1, 5, 5))
    a, b = (augment(x, np.random.default_rng([7, 3]), spec) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, x)
    assert augment(x, np.random.default_rng(0), check_spec({})) is x  # nothing on: untouched


def test_config_checks_the_augment_section():
    assert check_spec({"flip": "horizontal"}) == {"crop_padding": 0, "shift": 0, "flip": "horizontal"}
    for bad, phrase in [({"flip": "vertical"}, "flip: must be one of horizontal"),
                        ({"crop": 1}, "crop: unknown key; known keys: crop_padding, shift, flip"),
                        ({"shift": 1.5}, "shift: must be an integer >= 0"),
                        ([1], "must be a mapping")]:
        with pytest.raises(SchemaError, match=phrase):
            check_spec(bad)


def _trainer(tmp_path, augment_spec, epochs=3):
    raw = yaml.safe_load((ROOT / "configs" / "shapes.yaml").read_text())
    raw["data"]["augment"] = augment_spec
    raw["training"]["epochs"] = epochs
    path = tmp_path / "aug.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Trainer(load_config(path))


def _record_batches(trainer):
    seen = []
    forward = trainer.net.forward
    trainer.net.forward = lambda x: seen.append(x.copy()) or forward(x)
    return seen


def test_same_seed_same_augmented_batches_and_only_training_batches_change(tmp_path):
    spec = {"crop_padding": 1, "flip": "horizontal"}
    a, b, plain = _trainer(tmp_path, spec), _trainer(tmp_path, spec), _trainer(tmp_path, None)
    seen = [_record_batches(t) for t in (a, b, plain)]
    for t in (a, b, plain):
        t.train_epoch()
    n_train = -(-len(a.data.y_train) // a.cfg["training"]["batch_size"])
    assert len(seen[0]) == len(seen[1]) == len(seen[2])
    assert all(np.array_equal(u, v) for u, v in zip(seen[0], seen[1]))
    assert not all(np.array_equal(u, v) for u, v in zip(seen[0][:n_train], seen[2][:n_train]))
    # the test split is evaluated on the images as they are (same first network -> same input)
    for u, v in zip(seen[0][n_train:], seen[2][n_train:]):
        assert np.array_equal(u, v)


def test_state_and_load_state_continue_the_augmentation_exactly(tmp_path):
    spec = {"crop_padding": 1, "shift": 1, "flip": "horizontal"}
    full = _trainer(tmp_path, spec)
    for _ in range(3):
        full.train_epoch()
    part = _trainer(tmp_path, spec)
    for _ in range(2):
        part.train_epoch()
    arrays, meta = part.state()
    resumed = _trainer(tmp_path, spec)
    resumed.load_state(arrays, meta)
    resumed.train_epoch()
    assert resumed.history == [{**r, "seconds": resumed.history[i]["seconds"]}
                               for i, r in enumerate(full.history)]
    for k, v in full.net.state_dict().items():
        assert v.tobytes() == resumed.net.state_dict()[k].tobytes(), k


@pytest.mark.slow
def test_sigint_then_resume_with_augmentation_equals_an_uninterrupted_run(cnn, tmp_path):
    """The pattern of test_cli.py's SIGINT test, with crop, shift and flip on."""
    args = ["--set", "data.n=5000", "--epochs", "15", *AUG]
    full = tmp_path / "full"
    result = cnn("train", SHAPES, "--run-dir", str(full), "--quiet", *args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "interrupted"
    proc = _train_subprocess([SHAPES, "--run-dir", run, *args])
    _wait_for_epoch(run, 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    k = len(read_metrics(run))
    assert 3 <= k < 15
    result = cnn("train", "--resume", str(run), "--quiet")
    assert result.exit_code == 0, result.output
    assert_same_run(run, full)
