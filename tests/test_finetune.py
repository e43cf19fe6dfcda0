"""Fine-tuning: ``training.init_from`` (``cnn train --init-from``) loads a checkpoint's leading
layers, ``training.freeze`` keeps layers unchanged (batch norm statistics too), the run records
where it started, ``cnn summary`` marks frozen layers, and a resumed fine-tune equals an
uninterrupted one bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.checkpoint import load_checkpoint
from cnncli.cli import app
from cnncli.config import validate
from cnncli.errors import CheckpointError, ConfigError

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def network(n_classes):
    return [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "init": "he"},
            {"type": "batch_norm"}, {"type": "relu"},
            {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1, "init": "he"},
            {"type": "batch_norm"}, {"type": "relu"}, {"type": "flatten"},
            {"type": "dense", "out_features": 16, "init": "he"}, {"type": "relu"},
            {"type": "dense", "out_features": n_classes, "init": "xavier"}]


def write(tmp_path, name, data, n_classes, seed=0, **training):
    raw = {"seed": seed, "data": data, "network": network(n_classes),
           "training": {"epochs": 2, "batch_size": 16, "loss": "cross_entropy",
                        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                        **training}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint trained for 2 epochs on the 10 digits."""
    tmp = tmp_path_factory.mktemp("pre")
    path = write(tmp, "pre", {"name": "digits"}, 10)
    result = cnn("train", path, "--run-dir", tmp / "run", "-q")
    assert result.exit_code == 0, result.output
    return tmp / "run" / "best.npz"


@pytest.fixture(scope="module")
def three_classes(digits_folder, tmp_path_factory):
    """The digits 7, 8 and 9 as an image folder (30 training images)."""
    out = tmp_path_factory.mktemp("small") / "small"
    for split, limit in (("train", 10), ("test", None)):
        for c in "789":
            d = out / split / c
            d.mkdir(parents=True)
            for f in sorted((digits_folder / split / c).iterdir())[:limit]:
                (d / f.name).write_bytes(f.read_bytes())
    return out


def small(tmp_path, three_classes, **training):
    return write(tmp_path, "small", {"name": "folder", "path": str(three_classes)}, 3,
                 batch_size=10, **training)


def test_frozen_layers_stay_bit_identical_and_the_rest_train(tmp_path, pretrained, three_classes):
    path = small(tmp_path, three_classes, freeze="until 4", epochs=3)
    result = cnn("train", path, "--init-from", pretrained, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (f"Initialised from {pretrained}: loaded layer(s) 0 (conv2d), 1 (batch_norm), "
            "3 (conv2d), 4 (batch_norm), 7 (dense); fresh: 9 (dense)") in result.output
    assert "Frozen (not trained, batch norm in eval mode): layer(s) 0, 1, 2, 3, 4" in result.output
    before, _ = load_checkpoint(pretrained)
    after, meta = load_checkpoint(tmp_path / "run" / "last.npz")
    for key in ("layers.0.W", "layers.0.b", "layers.1.gamma", "layers.1.beta",
                "layers.1.running_mean", "layers.1.running_var", "layers.3.W",
                "layers.4.running_var"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert not np.array_equal(after["layers.7.W"], before["layers.7.W"])  # loaded, trained
    assert after["layers.9.W"].shape == (16, 3)
    assert not any(k.startswith("optimizer.") and ".layers.0." in k for k in after)  # skipped
    assert any(k.startswith("optimizer.") and k.endswith("layers.7.W") for k in after)
    assert meta["init_from"]["path"] == str(pretrained)
    assert meta["init_from"]["fresh"] == [[9, "dense"]]
    assert meta["config"]["training"]["init_from"] == str(pretrained)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["training"]["init_from"] == str(pretrained)
    assert stored["training"]["freeze"] == "until 4"
    assert meta["history"][-1]["test_accuracy"] > 0.5


def test_unfrozen_fine_tune_changes_every_layer(tmp_path, pretrained, three_classes):
    path = small(tmp_path, three_classes, init_from=str(pretrained), epochs=1)
    assert cnn("train", path, "--run-dir", tmp_path / "run", "-q").exit_code == 0
    before, _ = load_checkpoint(pretrained)
    after, _ = load_checkpoint(tmp_path / "run" / "last.npz")
    for key in ("layers.0.W", "layers.1.running_mean", "layers.7.W"):
        assert not np.array_equal(after[key], before[key]), key


def test_resume_of_a_fine_tune_equals_an_uninterrupted_one(tmp_path, pretrained, three_classes):
    path = small(tmp_path, three_classes, init_from=str(pretrained), freeze=[0, 1, 3],
                 epochs=4, optimizer={"name": "adam", "learning_rate": 0.01})
    assert cnn("train", path, "--run-dir", tmp_path / "full", "-q").exit_code == 0
    assert cnn("train", path, "--run-dir", tmp_path / "part", "--epochs", 2, "-q").exit_code == 0
    result = cnn("train", "--resume", tmp_path / "part", "--epochs", 4, "-q")
    assert result.exit_code == 0, result.output
    full, meta_full = load_checkpoint(tmp_path / "full" / "last.npz")
    part, meta_part = load_checkpoint(tmp_path / "part" / "last.npz")
    assert set(full) == set(part)
    for key in full:
        np.testing.assert_array_equal(full[key], part[key], err_msg=key)
    assert meta_full["history"] == [{**r, "seconds": f["seconds"]} for r, f in
                                    zip(meta_part["history"], meta_full["history"])]


def test_summary_marks_frozen_layers(tmp_path, three_classes):
    path = small(tmp_path, three_classes, freeze=[0, 3])
    result = cnn("summary", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("conv2d (frozen)" in line for line in lines)
    assert sum("(frozen)" in line for line in lines) == 2
    assert "frozen (training.freeze): layer(s) 0, 3" in result.output


def test_init_from_layers_refuses_a_shape_mismatch_in_one_line(tmp_path, pretrained,
                                                               three_classes):
    path = small(tmp_path, three_classes, init_from=str(pretrained), init_from_layers=10)
    result = cnn("train", path, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "training.init_from: " in lines[0] and "cannot load layer 9 (dense): W is 16x10 in the checkpoint, the network's is 16x3" \
        in lines[0] and "training.init_from_layers: 10" in lines[0]
    assert not (tmp_path / "run").exists()
    # a count that stops before the mismatch loads those layers and starts the rest fresh
    from cnncli.config import load_config
    from cnncli.train import Trainer

    cfg = load_config(small(tmp_path, three_classes, init_from=str(pretrained), init_from_layers=3))
    report = Trainer(cfg).init_report
    assert report.loaded == [(0, "conv2d"), (1, "batch_norm")]
    assert report.fresh == [(3, "conv2d"), (4, "batch_norm"), (7, "dense"), (9, "dense")]


def test_a_missing_init_checkpoint_is_one_line(tmp_path, three_classes):
    path = small(tmp_path, three_classes)
    result = cnn("train", path, "--init-from", tmp_path / "nope.npz", "--run-dir", tmp_path / "r")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: training.init_from: {tmp_path / 'nope.npz'}: no such file"


@pytest.mark.parametrize("value, words", [
    ("until x", "must be a list of layer indices"), ([-1], "must be a list of layer indices"),
    ([0, True], "must be a list of layer indices"), ("0", "must be a list of layer indices"),
    ([1, 1], "lists layer 1 twice"), ([0, 12], "layer 12 is past the network's last layer (9)"),
    ("until 10", "layer until 10 is past the network's last layer (9)")])
def test_bad_freeze_values_are_one_line_each(value, words):
    raw = {"data": {"name": "digits"}, "network": network(10), "training": {"freeze": value}}
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert len(err.value.problems) == 1 and "training.freeze: " in err.value.problems[0]
    assert words in err.value.problems[0], err.value.problems


def test_bad_init_from_layers_and_paths():
    for training, problem in [
            ({"init_from_layers": 11}, "training.init_from_layers: 11 is more than the network's "
                                       "10 layers"),
            ({"init_from_layers": 0}, "training.init_from_layers: must be an integer >= 1, got 0"),
            ({"init_from": ""}, "training.init_from: must be a non-empty string, got ''")]:
        raw = {"data": {"name": "digits"}, "network": network(10), "training": training}
        with pytest.raises(ConfigError) as err:
            validate(raw)
        assert err.value.problems == [problem]


def test_loading_stops_at_the_first_layer_that_differs(tmp_path, pretrained):
    from cnncli.finetune import init_from_checkpoint
    from cnncli.network import build_network

    specs = network(10)
    specs[3] = {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1}
    net = build_network(specs, (1, 8, 8), np.random.default_rng(0))
    report = init_from_checkpoint(net, pretrained)
    assert report.loaded == [(0, "conv2d"), (1, "batch_norm")]
    assert [i for i, _ in report.fresh] == [3, 4, 7, 9]  # 7 and 9 match, but follow a mismatch
    before, _ = load_checkpoint(pretrained)
    np.testing.assert_array_equal(net.params["layers.0.W"], before["layers.0.W"])
    with pytest.raises(CheckpointError, match="layer 3 .conv2d.: W is 6x4x3x3 in the checkpoint"):
        init_from_checkpoint(net, pretrained, layers=4)
