"""Optimizers, schedules, early stopping, shuffling, and exact resume with optimizer state."""

import math

import numpy as np
import pytest

from cnncli import SGD, Adam, build_network
from cnncli.checkpoint import load_checkpoint, save_checkpoint
from cnncli.config import load_config
from cnncli.train import Trainer, learning_rate_at
from conftest import ROOT


def one_param_net(w=1.0):
    net = build_network([{"type": "dense", "out_features": 1}], (1,), np.random.default_rng(0))
    net.layers[0].params["W"][...] = w
    net.layers[0].params["b"][...] = 0.0
    return net


def step_with_grad(opt, net, g):
    net.layers[0].grads["W"][...] = g
    net.layers[0].grads["b"][...] = 0.0
    opt.step(net)
    return float(net.layers[0].params["W"][0, 0])


def test_sgd_momentum_by_hand():
    # v1 = g = 1 -> w = 1 - 0.1 * 1 = 0.9; v2 = 0.9 * 1 + 1 = 1.9 -> w = 0.9 - 0.19 = 0.71
    net, opt = one_param_net(), SGD(learning_rate=0.1, momentum=0.9)
    assert step_with_grad(opt, net, 1.0) == pytest.approx(0.9)
    assert step_with_grad(opt, net, 1.0) == pytest.approx(0.71)


def test_sgd_nesterov_and_weight_decay_by_hand():
    # Nesterov: v1 = 1, step g + mu*v1 = 1.9 -> w = 1 - 0.19 = 0.81
    net, opt = one_param_net(), SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    assert step_with_grad(opt, net, 1.0) == pytest.approx(0.81)
    # weight decay 0.5 on w = 1: g' = 1 + 0.5 = 1.5 -> w = 1 - 0.15 = 0.85
    net, opt = one_param_net(), SGD(learning_rate=0.1, weight_decay=0.5)
    assert step_with_grad(opt, net, 1.0) == pytest.approx(0.85)


def test_adam_bias_correction_by_hand():
    # Step 1: m = 0.1 g, v = 0.001 g^2; m_hat = g, v_hat = g^2: w -= lr * g / (|g| + eps) ~= lr
    net, opt = one_param_net(), Adam(learning_rate=0.01)
    w1 = step_with_grad(opt, net, 4.0)
    assert w1 == pytest.approx(1 - 0.01 * 4 / (4 + 1e-8), rel=1e-15)
    # Step 2 with g = 2: m = 0.9*0.4 + 0.1*2 = 0.56, v = 0.999*0.016 + 0.001*4 = 0.019984
    m_hat, v_hat = 0.56 / (1 - 0.9 ** 2), 0.019984 / (1 - 0.999 ** 2)
    expected = w1 - 0.01 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert step_with_grad(opt, net, 2.0) == pytest.approx(expected, rel=1e-12)


def test_schedules():
    t = {"learning_rate": 0.1, "epochs": 10, "schedule": {"name": "step", "step_size": 3, "gamma": 0.5}}
    assert [learning_rate_at(t, e) for e in (1, 3, 4, 7, 10)] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125])
    t["schedule"] = {"name": "cosine", "min_lr": 0.0}
    assert learning_rate_at(t, 1) == pytest.approx(0.1)
    assert learning_rate_at(t, 6) == pytest.approx(0.05)
    assert learning_rate_at(t, 10) < 0.003
    t["schedule"] = {"name": "constant"}
    assert learning_rate_at(t, 9) == 0.1


def shapes_cfg(*overrides):
    return load_config(ROOT / "configs" / "shapes.yaml", list(overrides))


def test_learning_rate_column_follows_the_schedule():
    cfg = shapes_cfg("training.epochs=4", "training.schedule={name: step, step_size: 2, gamma: 0.1}")
    trainer = Trainer(cfg)
    rates = [trainer.train_epoch()["learning_rate"] for _ in range(4)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_shuffle_is_deterministic_and_changes_the_order():
    fixed = Trainer(shapes_cfg("training.epochs=2", "training.shuffle=false"))
    a = Trainer(shapes_cfg("training.epochs=2", "training.shuffle=true"))
    b = Trainer(shapes_cfg("training.epochs=2", "training.shuffle=true"))
    rows = [[t.train_epoch() for _ in range(2)] for t in (fixed, a, b)]
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(rows[1]) == drop(rows[2])
    assert drop(rows[0]) != drop(rows[1])
    for key in a.net.params:
        assert a.net.params[key].tobytes() == b.net.params[key].tobytes()


def test_early_stopping_stops_on_stalled_test_loss():
    cfg = shapes_cfg("training.epochs=50", "training.early_stopping={patience: 2, min_delta: 1.0}")
    trainer = Trainer(cfg)
    while trainer.epoch < trainer.epochs and not trainer.should_stop_early():
        trainer.train_epoch()
    # min_delta 1.0 can never be met after the first epoch: it stops after 1 + patience epochs
    assert trainer.epoch == 3


@pytest.mark.parametrize("optimizer,schedule", [
    ("{name: sgd, momentum: 0.9, nesterov: true, weight_decay: 0.001}", "{name: cosine}"),
    ("{name: adam, learning_rate: 0.01}", "{name: step, step_size: 2, gamma: 0.5}"),
])
def test_resume_is_exact_with_optimizer_state(tmp_path, optimizer, schedule):
    over = ["training.epochs=6", f"training.optimizer={optimizer}", f"training.schedule={schedule}",
            "training.shuffle=true"]
    if "adam" in optimizer:
        over.append("training.learning_rate=0.01")
    cfg = shapes_cfg(*over)
    full = Trainer(cfg)
    for _ in range(6):
        full.train_epoch()
    first = Trainer(cfg)
    for _ in range(3):
        first.train_epoch()
    arrays, meta = first.state()
    path = tmp_path / "last.npz"
    save_checkpoint(path, arrays, {**meta, "config": cfg, "input_shape": [1, 3, 3], "class_names": list("abcd")})
    assert any(k.startswith("optimizer.") for k in arrays)
    arrays, meta = load_checkpoint(path)
    resumed = Trainer(cfg)
    resumed.load_state(arrays, meta)
    for _ in range(3):
        resumed.train_epoch()
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(resumed.history) == drop(full.history)
    for key in full.net.params:
        assert resumed.net.params[key].tobytes() == full.net.params[key].tobytes(), key
