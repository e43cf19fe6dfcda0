"""Training with batch norm and dropout: train/eval modes, the fast and reference paths and
every optimizer, bit-exact resume, the single-value batch refusal, and checkpoints (format 2:
buffers and the input description; format 1 still evaluates)."""

import json
import signal

import numpy as np
import pytest
import yaml

import cnncli
from cnncli.checkpoint import load_checkpoint, save_checkpoint
from cnncli.config import validate
from cnncli.errors import ConfigError
from cnncli.train import Trainer, evaluate
from conftest import ROOT


NORM_NET = [  # shapes 1x3x3 -> 4, with every new layer
    {"type": "conv2d", "out_channels": 4, "kernel_size": 2},  # -> 4x2x2
    {"type": "batch_norm"},
    {"type": "relu"},
    {"type": "dropout", "p": 0.2},
    {"type": "flatten"},
    {"type": "dense", "out_features": 8},
    {"type": "batch_norm", "momentum": 0.2},
    {"type": "relu"},
    {"type": "dropout", "p": 0.3},
    {"type": "dense", "out_features": 4},
]
GAP_NET = [  # all convolutional: one logit per channel of the last conv, by global pooling
    {"type": "conv2d", "out_channels": 8, "kernel_size": 2, "padding": 1, "init": "he"},  # -> 8x4x4
    {"type": "batch_norm"}, {"type": "relu"},
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "init": "he"},  # -> 4x2x2
    {"type": "global_avg_pool2d"},  # -> 4 logits
]


def norm_config(**training):
    raw = {"seed": 3, "data": {"name": "shapes", "n": 300},
           "network": NORM_NET,
           "training": {"epochs": 3, "batch_size": 16, "loss": "cross_entropy", **training}}
    return validate(raw)


OPTIMIZERS = {
    "sgd": {"name": "sgd"},
    "momentum": {"name": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "adam": {"name": "adam", "learning_rate": 0.01, "weight_decay": 1e-4},
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_every_optimizer_trains_the_new_layers(opt, dtype):
    cfg = norm_config(optimizer=OPTIMIZERS[opt], dtype=dtype, epochs=4)
    trainer = Trainer(cfg)
    start = trainer.net.state_dict()
    for _ in range(4):
        row = trainer.train_epoch()
    assert np.isfinite(row["train_loss"]) and row["test_accuracy"] > 0.5, row
    end = trainer.net.state_dict()
    for key in end:
        assert end[key].dtype == np.dtype(dtype), key
        if key == "layers.0.b":  # the batch norm after it removes it: its gradient is 0
            continue
        assert not np.array_equal(end[key], start[key]), f"{key} did not change"  # gamma, beta, buffers


def test_an_all_convolutional_network_trains_with_cross_entropy():
    raw = {"seed": 0, "data": {"name": "shapes", "n": 300}, "network": GAP_NET,
           "training": {"epochs": 4, "batch_size": 16, "loss": "cross_entropy",
                        "optimizer": {"name": "adam", "learning_rate": 0.02}}}
    trainer = Trainer(validate(raw))
    assert trainer.loss.from_logits
    for _ in range(4):  # measured: 96% after one epoch, 100% from the second
        row = trainer.train_epoch()
    assert row["test_accuracy"] > 0.9, row


def test_the_fast_path_equals_the_reference_path_with_the_new_layers():
    """The fast path (vectorised conv) and impl: reference (SciPy loops, the first layer's
    input gradient too) reach the same parameters and buffers."""
    fast = Trainer(norm_config())
    ref = Trainer(norm_config(impl="reference"))
    assert ref.net.input_grad and not fast.net.input_grad
    for _ in range(3):
        a, b = fast.train_epoch(), ref.train_epoch()
        assert a["test_accuracy"] == b["test_accuracy"]
    sa, sb = fast.net.state_dict(), ref.net.state_dict()
    for key in sa:
        np.testing.assert_allclose(sa[key], sb[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_test_metrics_are_measured_in_eval_mode():
    trainer = Trainer(norm_config())
    row = trainer.train_epoch()
    assert trainer.net.training  # the trainer leaves it in train mode
    net = trainer.net.eval()
    res = evaluate(net, trainer.loss, trainer.data, "test", trainer.dtype)
    assert res["loss"] == row["test_loss"] and res["accuracy"] == row["test_accuracy"]
    # the same evaluation in train mode (batch statistics, dropout) gives another loss
    for layer in net.layers:
        layer.training = True
    x, y = trainer.data.split("test")
    from cnncli.data import one_hot

    out = net.forward(trainer.data.images(x, trainer.dtype))
    assert trainer.loss(out, one_hot(y, 4, trainer.dtype)) != row["test_loss"]


def test_last_batch_of_one_is_refused_in_one_line_or_dropped():
    # shapes n=300, test_size 0.33: 201 training samples = 12 batches of 16 and one of 9;
    # batch_size 20: 10 batches of 20 and one of 1
    with pytest.raises(ConfigError) as exc:
        Trainer(norm_config(batch_size=20))
    msg = str(exc.value)
    assert "network[6] (batch_norm)" in msg and "training.drop_last: true" in msg
    assert "\n" not in msg
    trainer = Trainer(norm_config(batch_size=20, drop_last=True))
    assert trainer.batch_sizes() == [20] * 10
    row = trainer.train_epoch()
    assert np.isfinite(row["train_loss"])
    with pytest.raises(ConfigError, match="batch_size of at least 2"):
        Trainer(norm_config(batch_size=1))
    one = dict(norm_config())
    one["data"] = {**one["data"], "limit": 1}
    with pytest.raises(ConfigError, match="train on at least 2 samples"):
        Trainer(one)
    # a 4-D batch norm alone (4 values per channel even for one sample) trains a last batch of 1
    raw = {"seed": 0, "data": {"name": "shapes", "n": 300}, "network": NORM_NET[:3] + [NORM_NET[4], NORM_NET[-1]],
           "training": {"batch_size": 20}}
    assert Trainer(validate(raw)).batch_sizes()[-1] == 1


def test_cli_refuses_a_last_batch_of_one(cnn, tmp_path):
    cfg = tmp_path / "bn.yaml"
    cfg.write_text(yaml.safe_dump(dict(norm_config(batch_size=20))))
    result = cnn("train", cfg, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1
    assert "drop_last" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _write(tmp_path, cfg, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path


def test_resume_with_dropout_and_batch_norm_is_bit_exact(cnn, tmp_path):
    """Ctrl-C after a few epochs, then --resume: metrics, parameters and buffers equal an
    uninterrupted run's bit for bit (the dropout generator's state is in the checkpoint)."""
    from test_cli import _train_subprocess, _wait_for_epoch, assert_same_run

    cfg = dict(norm_config(epochs=15, optimizer=OPTIMIZERS["momentum"]))
    cfg["data"] = {**cfg["data"], "n": 2000}
    path = _write(tmp_path, cfg)
    full = tmp_path / "full"
    assert cnn("train", path, "--run-dir", full, "--quiet").exit_code == 0
    run = tmp_path / "interrupted"
    proc = _train_subprocess([path, "--run-dir", run])
    _wait_for_epoch(run, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    _, meta = load_checkpoint(run / "last.npz")
    assert 2 <= meta["epoch"] < 15 and "noise_rng_state" in meta
    assert cnn("train", "--resume", run, "--quiet").exit_code == 0
    assert "layers.1.running_var" in load_checkpoint(run / "last.npz")[0]
    assert_same_run(run, full)


def test_checkpoint_holds_buffers_and_the_input_description(cnn, tmp_path):
    raw = {"seed": 0, "data": {"name": "digits"}, "network": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "batch_norm"},
        {"type": "relu"}, {"type": "global_avg_pool2d"}, {"type": "dense", "out_features": 10}],
        "training": {"epochs": 1, "batch_size": 32, "dtype": "float32", "loss": "cross_entropy"}}
    run = tmp_path / "run"
    assert cnn("train", _write(tmp_path, raw), "--run-dir", run, "--quiet").exit_code == 0
    arrays, meta = load_checkpoint(run / "last.npz")
    assert meta["format_version"] == 2
    assert meta["input_shape"] == [1, 8, 8] and meta["class_names"] == [str(d) for d in range(10)]
    assert meta["dtype"] == "float32" and meta["input_scale"] == 1 / 16 and meta["pixel_max"] == 16
    assert arrays["layers.1.running_mean"].dtype == np.float32
    assert np.any(arrays["layers.1.running_mean"] != 0)  # updated by training
    net, meta2 = cnncli.load_checkpoint(run / "last.npz")  # the public API
    assert meta2 == meta and not net.training
    np.testing.assert_array_equal(net.buffers["layers.1.running_var"], arrays["layers.1.running_var"])
    from cnncli.data import load_dataset

    ds = load_dataset(validate(raw)["data"], 0)
    s = cnncli.scores(net, ds.x_test, meta)  # stored values, 0..16
    assert s.shape == (len(ds.y_test), 10)
    np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-5)
    acc = float((s.argmax(1) == ds.y_test).mean())
    result = cnn("eval", run / "last.npz", "--json")
    assert json.loads(result.output)["accuracy"] == acc


def test_a_format_1_checkpoint_still_evaluates(cnn, tmp_path):
    """Written as cnncli 0.1.0 did: no buffers, no dtype/input_scale/pixel_max in meta."""
    run = tmp_path / "run"
    shapes = _write(tmp_path, validate(yaml.safe_load(open(ROOT / "configs" / "shapes.yaml"))))
    assert cnn("train", shapes, "--run-dir", run, "--epochs", 3, "--quiet").exit_code == 0
    arrays, meta = load_checkpoint(run / "last.npz")
    old = {k: v for k, v in meta.items()
           if k not in ("dtype", "input_scale", "pixel_max", "noise_rng_state")}
    old["format_version"] = 1
    v1 = tmp_path / "v1.npz"
    np.savez(v1, meta=np.array(json.dumps(old)), **arrays)
    new = cnn("eval", run / "last.npz", "--json")
    result = cnn("eval", v1, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == json.loads(new.output)["accuracy"]
    net, meta1 = cnncli.load_checkpoint(v1)
    assert meta1["format_version"] == 1
    with pytest.raises(cnncli.CnnError, match="lacks the input description input_scale"):
        cnncli.scores(net, np.zeros((2, 1, 3, 3)), meta1)
    # and a format-1 run still resumes (its stored config lacks keys added since)
    save_checkpoint(run / "last.npz", arrays, {k: v for k, v in old.items() if k != "format_version"})
    result = cnn("train", "--resume", run, "--epochs", 4, "--quiet")
    assert result.exit_code == 0, result.output


def test_gradcheck_covers_batch_norm_in_train_mode_and_dropout(cnn, tmp_path):
    """`cnn gradcheck` on configs/mnist-bn.yaml's network (on random data of MNIST's shape and
    range, so that no files are needed): batch norm through its batch statistics, dropout with
    a fixed mask, and the conv biases before batch norm, whose gradient is exactly 0."""
    rng = np.random.default_rng(0)
    data = tmp_path / "fake-mnist.npz"
    x = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    y = np.arange(40) % 10
    np.savez(data, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    cfg = yaml.safe_load(open(ROOT / "configs" / "mnist-bn.yaml"))
    cfg["data"] = {"name": "npz", "path": str(data)}
    result = cnn("gradcheck", _write(tmp_path, cfg), "--max-entries", 15)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for layer, grad in [("1 batch_norm", "input"), ("1 batch_norm", "gamma"),
                        ("10 batch_norm", "beta"), ("12 dropout", "input")]:
        assert any(layer in line and f" {grad} " in line and "pass" in line for line in lines), \
            (layer, grad, result.output)
    assert any("layers.0.b" in line and "pass" in line for line in lines)
    assert "FAIL" not in result.output
    one = cnn("gradcheck", _write(tmp_path, cfg), "--batch", 1)
    assert one.exit_code == 2 and "use --batch 2 or more" in one.stderr


def test_gradcheck_of_a_dropout_network_is_the_same_every_time(cnn, tmp_path):
    """The dropout masks cnn gradcheck holds fixed come from the config's seed (stream 4, as in
    training), so two runs print the same table."""
    raw = {"seed": 3, "data": {"name": "digits"}, "network": [
        {"type": "flatten"}, {"type": "dense", "out_features": 16}, {"type": "dropout", "p": 0.5},
        {"type": "relu"}, {"type": "dense", "out_features": 10}],
        "training": {"epochs": 1, "batch_size": 32, "loss": "cross_entropy"}}
    path = _write(tmp_path, raw)
    first, second = cnn("gradcheck", path), cnn("gradcheck", path)
    assert first.exit_code == 0, first.output
    assert "2 dropout" in first.output and first.output == second.output


def test_summary_shows_buffers_apart_from_parameters(cnn):
    result = cnn("summary", ROOT / "configs" / "mnist-bn.yaml")
    assert result.exit_code == 0, result.output
    assert "buffers" in result.output
    # batch norms over 8, 16 and 128 channels: 2 trainable (gamma, beta) and 2 buffers each
    assert "56,346 trainable parameters; 304 buffer values (saved, not trained)" in result.output
