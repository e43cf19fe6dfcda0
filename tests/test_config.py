"""Config loading: YAML 1.2 numbers, defaults, overrides, and one clear line for each broken config."""

import textwrap

import pytest

from cnncli.config import apply_overrides, load_config, validate
from cnncli.errors import ConfigError
from conftest import ROOT
from helpers import SHAPES


GOOD = """\
seed: 0
data: {name: shapes, n: 60, noise: 0.25, test_size: 0.33}
network:
  - {type: conv2d, out_channels: 4, kernel_size: 2}
  - {type: flatten}
  - {type: dense, out_features: 8}
  - {type: relu}
  - {type: dense, out_features: 4}
  - {type: sigmoid}
training: {epochs: 2, batch_size: 16, learning_rate: 0.1, loss: mse, dtype: float64}
"""


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_scientific_notation_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, GOOD.replace("learning_rate: 0.1", "learning_rate: 1e-3")))
    assert cfg["training"]["learning_rate"] == 0.001
    cfg = load_config(write(tmp_path, GOOD), ["training.learning_rate=5E-2"])
    assert cfg["training"]["learning_rate"] == 0.05


def test_defaults_are_filled_in(tmp_path):
    cfg = load_config(write(tmp_path, "data: {name: shapes}\nnetwork:\n - {type: flatten}\n"
                                      " - {type: dense, out_features: 4}\n"))
    assert cfg["seed"] == 0
    assert cfg["training"]["epochs"] == 10 and cfg["training"]["batch_size"] == 16
    assert cfg["training"]["optimizer"] == {"name": "sgd", "momentum": 0.0, "nesterov": False,
                                            "weight_decay": 0.0}
    assert cfg["data"]["n"] == 500 and cfg["data"]["noise"] == 0.25
    assert cfg["network"][1]["in_features"] == 9
    # the resolved config validates to itself
    assert validate(cfg) == cfg


def test_overrides(tmp_path):
    raw = {"training": {"epochs": 3}}
    assert apply_overrides(raw, ["training.epochs=7", "seed=4", "data.name=digits"]) == {
        "training": {"epochs": 7}, "seed": 4, "data": {"name": "digits"}}
    assert raw == {"training": {"epochs": 3}}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(raw, ["training.epochs"])


def test_every_problem_is_reported_at_once(tmp_path):
    bad = GOOD.replace("epochs: 2", "epochs: 0").replace("learning_rate: 0.1", "learning_rate: -0.1")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, bad))
    assert "training.epochs: must be an integer >= 1, got 0" in str(err.value)
    assert "training.learning_rate: must be a number > 0, got -0.1" in str(err.value)


BROKEN = {
    "yaml syntax": ("seed: 0\ndata: {name: shapes\n", "invalid YAML"),
    "unknown section": (GOOD + "trainig: {epochs: 3}\n", "trainig: unknown section (did you mean 'training'?)"),
    "unknown layer": (GOOD.replace("type: relu", "type: rleu"), "unknown layer type 'rleu' (did you mean 'relu'?)"),
    "misspelt key": (GOOD.replace("batch_size", "batchsize"), "training.batchsize: unknown key (did you mean 'batch_size'?)"),
    "misspelt layer key": (GOOD.replace("kernel_size: 2", "kernal_size: 2"), "unknown key 'kernal_size' (did you mean 'kernel_size'?)"),
    "wrong type": (GOOD.replace("batch_size: 16", "batch_size: sixteen"), "training.batch_size: must be an integer >= 1, got 'sixteen'"),
    "negative lr": (GOOD.replace("learning_rate: 0.1", "learning_rate: -0.1"), "training.learning_rate: must be a number > 0, got -0.1"),
    "zero epochs": (GOOD.replace("epochs: 2", "epochs: 0"), "training.epochs: must be an integer >= 1, got 0"),
    "nan lr": (GOOD.replace("learning_rate: 0.1", "learning_rate: .nan"), "training.learning_rate: must be a number > 0"),
    "kernel too large": (GOOD.replace("kernel_size: 2", "kernel_size: 4"), "kernel_size 4 is larger than its (padded) input 3x3"),
    "dense size mismatch": (GOOD.replace("{type: dense, out_features: 8}", "{type: dense, in_features: 15, out_features: 8}"),
                            "network[2] (dense): in_features is 15, but the previous layer outputs 16 values"),
    "output size != classes": (GOOD.replace("out_features: 4", "out_features: 3"), "but the shapes data has 4 classes"),
    "empty network": (GOOD.split("network:")[0] + "network: []\ntraining: {epochs: 1}\n", "network: must be a non-empty list"),
    "missing network": ("data: {name: shapes}\n", "network: is required"),
    "unknown dataset": (GOOD.replace("name: shapes", "name: mnsit"), "data.name: must be one of shapes, digits, mnist, fashion_mnist, cifar10, npz, folder, got 'mnsit' (did you mean 'mnist'?)"),
    "bad dtype": (GOOD.replace("dtype: float64", "dtype: float16"), "training.dtype: must be one of float64, float32"),
    "not a mapping": ("- 1\n- 2\n", "must be a mapping with the sections"),
    "empty file": ("", "is empty"),
    "test_size out of range": (GOOD.replace("test_size: 0.33", "test_size: 1.5"), "data.test_size: must be a number > 0 and < 1, got 1.5"),
    "missing layer type": (GOOD.replace("{type: flatten}", "{kind: flatten}"), "network[1]: missing key 'type'"),
    "yaml alias": ("a: &x [1, 2]\nb: *x\n", "YAML aliases"),
    "python tag": ("seed: !!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
    "dense needs flatten": (GOOD.replace("  - {type: flatten}\n", ""), "needs a flat input, but the previous layer outputs 4x2x2 = 16 values (add a flatten layer)"),
    "cross entropy after sigmoid": (GOOD.replace("loss: mse", "loss: cross_entropy"), "cross_entropy needs the network to end in a dense layer"),
    "bad optimizer": (GOOD.replace("dtype: float64", "dtype: float64, optimizer: {name: adamw}"), "training.optimizer.name: must be one of sgd, adam, got 'adamw' (did you mean 'adam'?)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_gives_one_line(cnn, tmp_path, case):
    text, phrase = BROKEN[case]
    path = write(tmp_path, text)
    result = cnn("train", str(path), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 1, result.output
    out = result.stderr if hasattr(result, "stderr") else result.output
    assert phrase in out, out
    assert str(path) in out
    assert "Traceback" not in result.output
    assert len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "run").exists()  # nothing written for an invalid config


def test_missing_and_directory_config(cnn, tmp_path):
    result = cnn("train", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1 and "no such file" in result.output
    result = cnn("summary", str(tmp_path))
    assert result.exit_code == 1 and "is a directory" in result.output


def test_non_utf8_and_huge_configs(cnn, tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"seed: 0\n# caf\xe9\n")
    result = cnn("summary", str(p))
    assert result.exit_code == 1 and "is not UTF-8 text" in result.output
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 2_000_000 + "\n")
    result = cnn("summary", str(big))
    assert result.exit_code == 1 and "a config may be at most" in result.output


def test_shipped_configs_are_valid(digits_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path))  # the folder dataset's decoding cache
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert {"shapes.yaml", "digits.yaml", "mnist.yaml"} <= {p.name for p in paths}  # not vacuous
    for path in paths:
        # folder-example.yaml trains on the folder `cnn data export digits` writes
        sets = [f"data.path={digits_folder}"] if path.name == "folder-example.yaml" else []
        cfg = load_config(path, sets)
        assert cfg["network"], path


def test_lr_override_replaces_the_optimizer_sections_rate():
    cfg = load_config(ROOT / "configs" / "digits.yaml", ["training.learning_rate=0.01"])
    assert cfg["training"]["learning_rate"] == 0.01
    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["training.optimizer.learning_rate=0.2"])
    assert cfg["training"]["learning_rate"] == 0.2


def test_a_layers_own_impl_is_used_unless_training_impl_is_set():
    from cnncli.train import Trainer

    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["network.0.impl=reference"])
    assert Trainer(cfg).net.layers[0].impl == "reference"
    cfg = load_config(ROOT / "configs" / "shapes.yaml", ["network.0.impl=reference", "training.impl=fast"])
    assert Trainer(cfg).net.layers[0].impl == "fast"


def test_overrides_fill_an_empty_section():
    """``training:`` left empty in a file is None: --set must still land in it."""
    raw = apply_overrides({"training": None, "seed": 1}, ["training.epochs=3"])
    assert raw == {"training": {"epochs": 3}, "seed": 1}


def test_summary_takes_set(cnn):
    result = cnn("summary", SHAPES, "--set", "network.0.out_channels=8")
    assert result.exit_code == 0, result.output
    assert "8x2x2" in result.output
