"""The recipe pieces of issue 22: label smoothing and class weights (PyTorch's losses and
gradients, finite differences), per-class precision/recall/F1 in ``cnn eval``, schedules with
warm-up and one-cycle (PyTorch's schedulers step by step), test-time augmentation, ``cnn
lr-find`` and the weights' moving average; every new key's bad values in one line; resume with
each piece bit-exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.checkpoint import load_checkpoint
from cnncli.cli import app
from cnncli.config import validate
from cnncli.data import one_hot
from cnncli.errors import ConfigError
from cnncli.losses import CrossEntropyLoss, resolve_class_weights

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

SMALL = {  # shapes, a conv net ending in logits: seconds per epoch
    "seed": 3,
    "data": {"name": "shapes", "n": 240, "noise": 0.3, "test_size": 0.25},
    "network": [{"type": "conv2d", "out_channels": 4, "kernel_size": 2},
                {"type": "flatten"}, {"type": "dense", "out_features": 8}, {"type": "relu"},
                {"type": "dense", "out_features": 4}],
    "training": {"epochs": 4, "batch_size": 16, "learning_rate": 0.05, "loss": "cross_entropy",
                 "optimizer": {"name": "sgd", "momentum": 0.9}},
}


def small(**training) -> dict:
    raw = json.loads(json.dumps(SMALL))
    raw["training"].update(training)
    return raw


def write(tmp_path, raw, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def read_metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_resume_bit_exact(tmp_path, raw, epochs=4, stop=2, extra=()):
    """Training ``epochs`` at once equals training that is interrupted (as by Ctrl-C) after
    ``stop`` epochs and then resumed: metrics but the timings, and every array of last.npz, to
    the bit."""
    from cnncli.train import Trainer

    cfg = write(tmp_path, raw)
    full, part = tmp_path / "full", tmp_path / "part"
    r = runner.invoke(app, ["train", str(cfg), "--run-dir", str(full), "--quiet", "--epochs",
                            str(epochs), *extra])
    assert r.exit_code == 0, r.output
    original = Trainer._train_epoch

    def interrupted(self, on_batch):
        if self.epoch == stop:
            self.stop_requested = True
        return original(self, on_batch)

    Trainer._train_epoch = interrupted
    try:
        r = runner.invoke(app, ["train", str(cfg), "--run-dir", str(part), "--quiet", "--epochs",
                                str(epochs), *extra])
    finally:
        Trainer._train_epoch = original
    assert r.exit_code == 130, r.output
    assert len(read_metrics(part)) == stop
    r = runner.invoke(app, ["train", "--resume", str(part), "--quiet"])
    assert r.exit_code == 0, r.output
    strip = lambda rows: [{c: v for c, v in row.items() if c != "seconds"} for row in rows]  # noqa: E731
    assert strip(read_metrics(full)) == strip(read_metrics(part))
    a, _ = load_checkpoint(full / "last.npz")
    b, _ = load_checkpoint(part / "last.npz")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    return full


def config_problem(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    assert len(exc.value.problems) == 1, exc.value.problems
    assert "\n" not in exc.value.problems[0]
    return exc.value.problems[0]


# ----------------------------------------------------------------------------- losses
def _torch_loss(z, y, eps, w):
    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        zt, torch.tensor(y), label_smoothing=eps,
        weight=None if w is None else torch.tensor(w, dtype=torch.float64))
    loss.backward()
    return float(loss.detach()), zt.grad.numpy()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("weights", [None, "list", "zero"])
def test_cross_entropy_with_smoothing_and_weights_equals_pytorch(eps, weights):
    rng = np.random.default_rng(7)
    z = rng.normal(scale=3.0, size=(9, 5))
    y = rng.integers(0, 5, 9)
    w = {None: None, "list": rng.uniform(0.2, 3.0, 5), "zero": np.array([0, 1, 2, 0.5, 1.5])}[weights]
    want, want_grad = _torch_loss(z, y, eps, w)
    loss = CrossEntropyLoss(label_smoothing=eps, class_weights=w)
    t = one_hot(y, 5, np.float64)
    assert abs(loss(z, t) - want) <= 1e-12 * max(1.0, abs(want))
    np.testing.assert_allclose(loss.gradient(z, t), want_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("from_logits", [True, False])
def test_smoothed_weighted_cross_entropy_gradient_by_finite_differences(from_logits):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 4))
    if not from_logits:  # after a softmax layer: probabilities
        z = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    t = one_hot(rng.integers(0, 4, 6), 4, np.float64)
    loss = CrossEntropyLoss(from_logits=from_logits, label_smoothing=0.2,
                            class_weights=np.array([1.0, 2.0, 0.5, 3.0]))
    grad = loss.gradient(z, t)
    h = 1e-6
    num = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += h
        down[idx] -= h
        num[idx] = (loss(up, t) - loss(down, t)) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


def test_plain_cross_entropy_is_untouched():
    rng = np.random.default_rng(2)
    z, t = rng.normal(size=(5, 3)), one_hot(rng.integers(0, 3, 5), 3, np.float64)
    a, b = CrossEntropyLoss(), CrossEntropyLoss(label_smoothing=0.0, class_weights=None)
    assert a(z, t) == b(z, t) and a.gradient(z, t).tobytes() == b.gradient(z, t).tobytes()


def test_auto_class_weights_are_balanced_inverse_frequency():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 0])
    w = resolve_class_weights("auto", y, ["a", "b", "c"])
    np.testing.assert_allclose(w, [8 / (3 * 5), 8 / (3 * 2), 8 / (3 * 1)])
    assert abs(w[y].mean() - 1.0) < 1e-15  # the training samples' weights average 1
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=y))
    np.testing.assert_array_equal(resolve_class_weights({"b": 4}, y, ["a", "b", "c"]), [1, 4, 1])
    with pytest.raises(ConfigError, match="no class 'd' in the data"):
        resolve_class_weights({"d": 1}, y, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="class 'c' has none"):
        resolve_class_weights("auto", y[:6], ["a", "b", "c"])


def test_loss_string_and_mapping_forms():
    assert validate(small(loss="cross_entropy"))["training"]["loss"] == "cross_entropy"
    cfg = validate(small(loss={"name": "cross_entropy", "label_smoothing": 0.1,
                               "class_weights": "auto"}))
    assert cfg["training"]["loss"] == {"name": "cross_entropy", "label_smoothing": 0.1,
                                       "class_weights": "auto"}
    assert validate(small(loss={"label_smoothing": 0.2}))["training"]["loss"]["name"] == "cross_entropy"
    assert validate(small(loss={"class_weights": {"cross": 2}}))["training"]["loss"]["class_weights"] == {"cross": 2.0}


@pytest.mark.parametrize("loss,want", [
    ({"name": "cross_entropy", "label_smoothing": 1.0}, "training.loss.label_smoothing: must be"),
    ({"name": "cross_entropy", "label_smoothing": -0.1}, "training.loss.label_smoothing: must be"),
    ({"name": "cross_entropy", "label_smothing": 0.1}, "training.loss.label_smothing: unknown key (did you mean 'label_smoothing'?)"),
    ({"name": "hinge"}, "training.loss.name: must be one of"),
    ({"name": "mse", "label_smoothing": 0.1}, "training.loss.label_smoothing: only cross_entropy takes it"),
    ({"class_weights": [1, 2]}, "training.loss.class_weights: 2 weight(s) given, but the shapes data has 4 classes"),
    ({"class_weights": [1, -2, 1, 1]}, "training.loss.class_weights: must be a number >= 0"),
    ({"class_weights": [0, 0, 0, 0]}, "training.loss.class_weights: the weights must not all be 0"),
    ({"class_weights": "balanced"}, "training.loss.class_weights: must be auto, a list of weights"),
    ("hinge", "training.loss: must be one of"),
])
def test_bad_loss_values_are_one_line(loss, want):
    assert want in config_problem(small(loss=loss))


def test_unknown_class_name_in_the_weights_is_one_line_from_the_cli(tmp_path):
    cfg = write(tmp_path, small(loss={"class_weights": {"circle": 2.0}}))
    r = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "r"), "--quiet"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "training.loss.class_weights: no class 'circle'" in lines[0]


def test_resume_with_label_smoothing_and_class_weights_is_bit_exact(tmp_path):
    raw = small(loss={"name": "cross_entropy", "label_smoothing": 0.1, "class_weights": "auto"})
    assert_resume_bit_exact(tmp_path, raw)


def test_gradcheck_passes_with_smoothing_and_weights(tmp_path):
    raw = small(loss={"name": "cross_entropy", "label_smoothing": 0.1,
                      "class_weights": [1.0, 2.0, 0.5, 1.5]})
    r = runner.invoke(app, ["gradcheck", str(write(tmp_path, raw))])
    assert r.exit_code == 0, r.output
    assert "gradients pass" in r.output


def test_eval_reports_per_class_precision_recall_f1(tmp_path):
    cfg = write(tmp_path, small())
    run = tmp_path / "r"
    assert runner.invoke(app, ["train", str(cfg), "--run-dir", str(run), "--quiet"]).exit_code == 0
    r = runner.invoke(app, ["eval", str(run / "last.npz"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    from sklearn.metrics import f1_score, precision_score, recall_score

    from cnncli.train import Trainer

    t = Trainer(validate(small()))
    y = t.data.y_test
    cm = np.array(out["confusion_matrix"])
    pred = np.concatenate([np.full(cm[i, j], j) for i in range(4) for j in range(4)])
    true = np.concatenate([np.full(cm[i, j], i) for i in range(4) for j in range(4)])
    assert len(true) == len(y)
    np.testing.assert_allclose(out["precision"], precision_score(true, pred, average=None, zero_division=0))
    np.testing.assert_allclose(out["recall"], recall_score(true, pred, average=None))
    np.testing.assert_allclose(out["f1"], f1_score(true, pred, average=None))
    assert abs(out["macro_f1"] - f1_score(true, pred, average="macro")) < 1e-12
    text = runner.invoke(app, ["eval", str(run / "last.npz")]).output
    assert "macro precision" in text and "precision" in text and "F1" in text


# ----------------------------------------------------------------------------- schedules
from cnncli.schedules import rates_over_run  # noqa: E402
from cnncli.train import learning_rate_at  # noqa: E402


def _training(schedule, epochs=6, lr=0.1):
    raw = small(epochs=epochs, learning_rate=lr, schedule=schedule)
    return validate(raw)["training"]


def _torch_rates(make, steps, lr=0.1, per_epoch_step=None, n_batches=None):
    """The rate PyTorch's scheduler(s) give before each of ``steps`` optimizer steps."""
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    batch_scheds, epoch_scheds = make(opt)
    out = []
    for s in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        for sc in batch_scheds:
            sc.step()
        if epoch_scheds and (s + 1) % n_batches == 0:
            for sc in epoch_scheds:
                sc.step()
    return np.array(out)


@pytest.mark.parametrize("pct,div,final", [(0.3, 25.0, 1e4), (0.25, 10.0, 100.0), (0.5, 5.0, 1e3)])
def test_onecycle_equals_pytorch_step_by_step(pct, div, final):
    torch = pytest.importorskip("torch")
    n_batches, epochs = 7, 6
    t = _training({"name": "onecycle", "pct_start": pct, "div_factor": div,
                   "final_div_factor": final}, epochs)
    ours = rates_over_run(t, n_batches, learning_rate_at)
    want = _torch_rates(lambda o: ([torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=epochs * n_batches, pct_start=pct, div_factor=div,
        final_div_factor=final, cycle_momentum=False)], []), epochs * n_batches)
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-15)


def test_per_batch_cosine_equals_pytorch_step_by_step():
    torch = pytest.importorskip("torch")
    n_batches, epochs = 5, 6
    t = _training({"name": "cosine", "interval": "step", "min_lr": 0.001}, epochs)
    ours = rates_over_run(t, n_batches, learning_rate_at)
    want = _torch_rates(lambda o: ([torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=epochs * n_batches, eta_min=0.001)], []), epochs * n_batches)
    np.testing.assert_allclose(ours, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("warmup,start", [(1.0, 0.01), (1.5, 0.1), (0.4, 0.5)])
def test_warmup_equals_pytorch_linear_lr_step_by_step(warmup, start):
    torch = pytest.importorskip("torch")
    n_batches, epochs = 5, 6
    w = round(warmup * n_batches)
    t = _training({"name": "constant", "warmup_epochs": warmup, "warmup_start_factor": start}, epochs)
    want = _torch_rates(lambda o: ([torch.optim.lr_scheduler.LinearLR(
        o, start_factor=start, end_factor=1.0, total_iters=w)], []), epochs * n_batches)
    np.testing.assert_allclose(rates_over_run(t, n_batches, learning_rate_at), want, rtol=1e-12)
    # with a per-epoch step schedule: LinearLR after every batch, StepLR after every epoch
    t = _training({"name": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": warmup,
                   "warmup_start_factor": start}, epochs)
    want = _torch_rates(lambda o: ([torch.optim.lr_scheduler.LinearLR(
        o, start_factor=start, end_factor=1.0, total_iters=w)],
        [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)]), epochs * n_batches,
        n_batches=n_batches)
    np.testing.assert_allclose(rates_over_run(t, n_batches, learning_rate_at), want, rtol=1e-12)


def test_warmup_multiplies_onecycle_and_per_batch_cosine():
    n_batches = 4
    for sched in ({"name": "onecycle"}, {"name": "cosine", "interval": "step"}):
        plain = rates_over_run(_training(sched), n_batches, learning_rate_at)
        warm = rates_over_run(_training({**sched, "warmup_epochs": 0.5, "warmup_start_factor": 0.2}),
                              n_batches, learning_rate_at)
        np.testing.assert_allclose(warm[:2], plain[:2] * np.array([0.2, 0.6]), rtol=1e-15)
        assert warm[2:].tolist() == plain[2:].tolist()


@pytest.mark.parametrize("schedule", [{"name": "constant"}, {"name": "step", "step_size": 2},
                                      {"name": "cosine", "min_lr": 0.01}])
def test_per_epoch_schedules_give_the_rates_of_today(schedule):
    t = _training(schedule)
    rates = rates_over_run(t, 3, learning_rate_at).reshape(6, 3)
    for e in range(1, 7):
        assert rates[e - 1].tolist() == [learning_rate_at(t, e)] * 3


def test_metrics_learning_rate_is_the_last_batch_rate(tmp_path):
    from cnncli.train import Trainer

    trainer = Trainer(validate(small(epochs=3, schedule={"name": "onecycle"})))
    n = len(trainer.batch_sizes())
    rows = [trainer.train_epoch() for _ in range(3)]
    want = rates_over_run(trainer.cfg["training"], n, learning_rate_at)
    assert [r["learning_rate"] for r in rows] == [want[n - 1], want[2 * n - 1], want[3 * n - 1]]


@pytest.mark.parametrize("schedule,want", [
    ({"name": "onecycle", "pct_start": 1.0}, "training.schedule.pct_start: must be"),
    ({"name": "onecycle", "div_factor": 0}, "training.schedule.div_factor: must be a number > 0"),
    ({"name": "cosine", "interval": "batch"}, "training.schedule.interval: must be one of"),
    ({"name": "step", "warmup_epochs": -1}, "training.schedule.warmup_epochs: must be a number >= 0"),
    ({"name": "constant", "warmup_epochs": 50}, "training.schedule.warmup_epochs: must be at most training.epochs (4), got 50"),
    ({"name": "constant", "warmup_start_factor": 0}, "training.schedule.warmup_start_factor: must be"),
    ({"name": "onecycle", "warmup": 1}, "training.schedule.warmup: unknown key (did you mean"),
])
def test_bad_schedule_values_are_one_line(schedule, want):
    assert want in config_problem(small(schedule=schedule))


@pytest.mark.parametrize("schedule", [
    {"name": "onecycle", "pct_start": 0.25},
    {"name": "cosine", "interval": "step", "warmup_epochs": 1.5},
    {"name": "step", "step_size": 1, "gamma": 0.7, "warmup_epochs": 0.5},
])
def test_resume_with_per_batch_schedules_is_bit_exact(tmp_path, schedule):
    assert_resume_bit_exact(tmp_path, small(schedule=schedule))


# ----------------------------------------------------------------------------- TTA
from cnncli.scoring import tta_scores  # noqa: E402
from cnncli.tta import views  # noqa: E402


def _trained_run(tmp_path, **training):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(write(tmp_path, small(**training))), "--run-dir", str(run),
                            "--quiet"])
    assert r.exit_code == 0, r.output
    return run


def test_tta_scores_are_the_mean_of_the_two_passes():
    from cnncli.network import build_network
    from cnncli.scoring import outputs_to_scores

    cfg = validate(small())
    net = build_network(cfg["network"], (1, 3, 3), np.random.default_rng(0))
    net.eval()
    x = np.random.default_rng(1).normal(size=(7, 1, 3, 3))
    got = tta_scores(net, x, "flip")
    a = outputs_to_scores(net.forward(x), "softmax")
    b = outputs_to_scores(net.forward(np.ascontiguousarray(x[..., ::-1])), "softmax")
    assert got.tobytes() == ((a + b) / 2).tobytes()
    assert not np.allclose(a, b)  # the mirror really is another input
    six = views(x, "flip_shift")
    assert len(six) == 6 and six[2][0, 0, 1, 1] == x[0, 0, 0, 0] and six[2][0, 0, 0, 0] == 0
    assert six[4][0, 0, 0, 0] == x[0, 0, 1, 1]


def test_eval_and_predict_with_tta_flip_say_so_and_use_the_mean(tmp_path):
    run = _trained_run(tmp_path)
    plain = json.loads(runner.invoke(app, ["eval", str(run / "last.npz"), "--json"]).output)
    r = runner.invoke(app, ["eval", str(run / "last.npz"), "--json", "--tta", "flip"])
    assert r.exit_code == 0, r.output
    flip = json.loads(r.output)
    assert flip["tta"] == "flip" and plain["tta"] is None
    assert flip["loss"] == plain["loss"]  # the loss is that of the images as they are
    # the accuracy from the mean of the two passes, computed here by hand
    from cnncli.checkpoint import load_network
    from cnncli.scoring import scores
    from cnncli.train import Trainer

    net, cfg, meta, _ = load_network(run / "last.npz")
    ds = Trainer(validate(small())).data
    s = (scores(net, ds.x_test, meta) + scores(net, ds.x_test[..., ::-1], meta)) / 2
    assert flip["accuracy"] == float((s.argmax(axis=1) == ds.y_test).mean())
    np.testing.assert_allclose(scores(net, ds.x_test, meta, tta="flip"), s, rtol=1e-12)
    text = runner.invoke(app, ["eval", str(run / "last.npz"), "--tta", "flip"]).output
    assert "TTA flip: the mean score of each image and its horizontal mirror" in text
    np.savez(tmp_path / "x.npz", x=ds.x_test[:5])
    r = runner.invoke(app, ["predict", str(run / "last.npz"), str(tmp_path / "x.npz"), "--json",
                            "--tta", "flip", "--csv", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert all(row["tta"] == "flip" for row in rows)
    assert [row["score"] for row in rows] == pytest.approx(s[:5].max(axis=1).tolist(), rel=1e-12)
    assert (tmp_path / "p.csv").read_text().splitlines()[0].endswith(",tta")
    for args in (["eval", str(run / "last.npz")], ["predict", str(run / "last.npz"), str(tmp_path / "x.npz")]):
        bad = runner.invoke(app, [*args, "--tta", "mirror"])
        assert bad.exit_code == 2 and "--tta must be flip, flip_shift or none, got 'mirror'" in bad.output
        none = runner.invoke(app, [*args, "--tta", "none"])  # off, as without the option
        assert none.exit_code == 0 and none.output == runner.invoke(app, args).output


def test_training_tta_gives_the_per_epoch_test_accuracy(tmp_path):
    from cnncli.train import Trainer, evaluate

    t = Trainer(validate(small(tta="flip")))
    row = t.train_epoch()
    res = evaluate(t.net, t.loss, t.data, "test", t.dtype, "flip")
    plain = evaluate(t.net, t.loss, t.data, "test", t.dtype)
    assert row["test_accuracy"] == res["accuracy"] and row["test_loss"] == plain["loss"]
    r = runner.invoke(app, ["train", str(write(tmp_path, small(tta="flip_shift", epochs=1))),
                            "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "Test accuracy (each epoch's acc, metrics.csv's test_accuracy): TTA flip_shift" in r.output
    assert "with TTA flip_shift (training.tta)" in r.output
    assert "training.tta: must be one of flip, flip_shift, none, got 'mirror'" in \
        config_problem(small(tta="mirror"))
    assert validate(small(tta="none"))["training"]["tta"] is None  # off, like null


def test_resume_with_training_tta_is_bit_exact(tmp_path):
    assert_resume_bit_exact(tmp_path, small(tta="flip"))


# ----------------------------------------------------------------------------- cnn lr-find
def test_lr_find_writes_only_its_named_picture_and_labels_the_suggestion(tmp_path, monkeypatch):
    cfg = write(tmp_path, small(), "lr.yaml")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["lr-find", str(cfg), "-o", "lr.png", "--steps", "40",
                            "--start-lr", "1e-4", "--end-lr", "50"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in work.iterdir()) == ["lr.png"]  # no run directory, nothing else
    assert (work / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Wrote lr.png" in r.output
    line = next(s for s in r.output.splitlines() if s.startswith("Suggested learning rate:"))
    assert "(a suggestion, by the rule: the rate at the minimum of the smoothed loss, divided by 10" in line
    assert "Minimum of the smoothed loss at rate" in r.output


def test_lr_find_rates_grow_exponentially_from_the_initial_weights():
    from cnncli.lrfind import lr_find, rate_at
    from cnncli.train import Trainer

    cfg = validate(small())
    a = lr_find(cfg, 1e-3, 1.0, 30)
    b = lr_find(cfg, 1e-3, 1.0, 30)
    assert a.rates.tolist() == [rate_at(i, 30, 1e-3, 1.0) for i in range(len(a.rates))]
    assert a.rates[0] == 1e-3 and abs(a.rates[-1] - 1.0) < 1e-12 and len(a.rates) == 30
    assert a.losses.tobytes() == b.losses.tobytes()  # deterministic from the seed
    first = Trainer(cfg)  # the first batch, at the initial weights, as training draws it
    idx = first.shuffle_rng.permutation(len(first.data.y_train))[:16]
    out = first.net.forward(first.data.images(first.data.x_train[idx], first.dtype))
    assert first.loss(out, one_hot(first.data.y_train[idx], 4, first.dtype)) == a.losses[0]
    assert a.suggestion == a.min_rate / 10
    assert a.min_rate == a.rates[int(np.argmin(a.smoothed))]


def test_lr_find_stops_when_the_loss_diverges():
    from cnncli.lrfind import lr_find

    res = lr_find(validate(small()), 1e-2, 1e6, 60)
    assert len(res.rates) < 60 and ("became" in res.stopped or "passed" in res.stopped)


def test_lr_find_bad_options_are_one_line(tmp_path):
    cfg = write(tmp_path, small())
    for args, code, want in [
        (["--start-lr", "0"], 2, "--start-lr and --end-lr must satisfy 0 < start < end"),
        (["--start-lr", "1", "--end-lr", "0.1"], 2, "--start-lr and --end-lr must satisfy"),
        (["-o", str(tmp_path / "lr.xyz")], 1, "cannot write a .xyz picture"),
        (["--set", "training.loss.label_smoothing=2"], 1, "training.loss"),
    ]:
        r = runner.invoke(app, ["lr-find", str(cfg), *args])
        assert r.exit_code == code, (args, r.output)
        assert want in r.output and len(r.output.strip().splitlines()) == 1, r.output


# ----------------------------------------------------------------------------- EMA
def test_ema_follows_the_weights_by_its_rule_and_is_what_the_test_metrics_measure():
    from cnncli.train import Trainer, evaluate

    t = Trainer(validate(small(ema=0.5, epochs=2)))
    start = t.net.state_dict()
    expected = {k: v.copy() for k, v in start.items()}
    seen = []
    step = t.optimizer.step

    def step_and_track(net):
        step(net)
        n = len(seen)
        d = min(0.5, (1 + n) / (10 + n))
        seen.append(d)
        for k, p in {**net.params, **net.buffers}.items():
            expected[k] = d * expected[k] + (1 - d) * p

    t.optimizer.step = step_and_track
    row = t.train_epoch()
    assert seen[:3] == [0.1, 2 / 11, 3 / 12] and seen[-1] == 0.5 and len(seen) == 12
    for k in expected:
        np.testing.assert_allclose(t.ema.state[k], expected[k], rtol=1e-12, atol=1e-15)
    live = t.net.state_dict()
    assert any(not np.array_equal(live[k], t.ema.state[k]) for k in live)
    with t.ema.applied(t.net):
        res = evaluate(t.net, t.loss, t.data, "test", t.dtype)
    assert row["test_accuracy"] == res["accuracy"] and row["test_loss"] == res["loss"]
    after = t.net.state_dict()
    assert all(after[k].tobytes() == live[k].tobytes() for k in live)  # swapped back exactly


def test_ema_with_frozen_layers_averages_only_what_the_optimizer_trains():
    """training.freeze with training.ema: the average covers the trained layers (and their
    buffers); a frozen layer's arrays stay bit for bit those of the network."""
    from cnncli.train import Trainer

    t = Trainer(validate(small(ema=0.9, epochs=1, freeze=[0])))
    start = t.net.state_dict()
    assert set(t.ema.keys) == {k for k, _, _ in t._trainable.parameters()} | \
        {k for k in t.net.buffers if not k.startswith("layers.0.")}
    assert not any(k.startswith("layers.0.") for k in t.ema.keys)
    t.train_epoch()
    live = t.net.state_dict()
    for k in live:
        if k.startswith("layers.0."):
            assert live[k].tobytes() == start[k].tobytes() == t.ema.state[k].tobytes()
    assert any(not np.array_equal(start[k], t.ema.state[k]) for k in t.ema.keys)


def test_lr_find_leaves_frozen_layers_unchanged():
    from cnncli.data.augment import augment
    from cnncli.lrfind import _run
    from cnncli.train import Trainer

    t = Trainer(validate(small(freeze=[0])))
    start = t.net.state_dict()
    _run(t, t.cfg["training"], 1e-4, 1e-1, 8, augment, None)
    after = t.net.state_dict()
    assert all(after[k].tobytes() == start[k].tobytes() for k in start if k.startswith("layers.0."))
    assert any(not np.array_equal(after[k], start[k]) for k in start if k.startswith("layers.2."))


def test_ema_is_saved_and_used_by_eval(tmp_path):
    run = _trained_run(tmp_path, ema=0.95)
    arrays, meta = load_checkpoint(run / "last.npz")
    assert any(k.startswith("ema.layers.") for k in arrays) and meta["ema_updates"] > 0
    r = runner.invoke(app, ["eval", str(run / "last.npz"), "--json"])
    out = json.loads(r.output)
    assert out["ema"] == 0.95
    assert out["accuracy"] == float(read_metrics(run)[-1]["test_accuracy"])
    text = runner.invoke(app, ["eval", str(run / "last.npz")]).output
    assert "Weights: their exponential moving average (training.ema 0.95)" in text


@pytest.mark.parametrize("value", [1.0, 0, -0.5, "yes", 1.5])
def test_bad_ema_values_are_one_line(value):
    assert "training.ema: must be a number > 0 and < 1" in config_problem(small(ema=value)) \
        or "training.ema: must be" in config_problem(small(ema=value))


def test_resume_with_ema_is_bit_exact(tmp_path):
    full = assert_resume_bit_exact(tmp_path, small(ema=0.99))
    arrays, _ = load_checkpoint(full / "last.npz")
    assert any(k.startswith("ema.") for k in arrays)


def test_resume_with_every_piece_at_once_is_bit_exact(tmp_path):
    raw = small(loss={"name": "cross_entropy", "label_smoothing": 0.1, "class_weights": "auto"},
                schedule={"name": "onecycle", "warmup_epochs": 0.5}, tta="flip", ema=0.99)
    assert_resume_bit_exact(tmp_path, raw)


# ----------------------------------------------------------------- whitening and identity init
def whitened(**training) -> dict:
    """SMALL with a whitened first layer (1 channel, 2x2 patches: 8 filters) kept frozen, and
    an identity-initialised conv after it."""
    raw = small(freeze=[0], **training)
    raw["network"] = [{"type": "conv2d", "out_channels": 8, "kernel_size": 2, "init": "whiten"},
                      {"type": "relu"},
                      {"type": "conv2d", "out_channels": 8, "kernel_size": 1, "init": "dirac"},
                      *raw["network"][1:]]
    return raw


def test_whiten_init_is_computed_from_the_training_images_and_kept_frozen(tmp_path):
    from cnncli.layers import Conv2D
    from cnncli.train import Trainer

    cfg = validate(whitened(epochs=2))
    t = Trainer(cfg)
    want = Conv2D(1, 8, 2, init="whiten")
    want.whiten(t.data.images(t.data.x_train, np.float32))  # all 180 training images (< 5000)
    np.testing.assert_array_equal(t.net.layers[0].params["W"], want.params["W"])
    start = t.net.layers[0].params["W"].copy()
    t.train_epoch()
    np.testing.assert_array_equal(t.net.layers[0].params["W"], start)  # frozen: unchanged
    assert not np.array_equal(t.net.layers[2].params["W"], Trainer(cfg).net.layers[2].params["W"])


def test_resume_with_whitening_is_bit_exact(tmp_path):
    assert_resume_bit_exact(tmp_path, whitened())


def test_whiten_on_a_later_layer_is_one_line():
    raw = whitened()
    raw["network"][0]["init"] = "he"
    raw["network"][2] = {"type": "conv2d", "out_channels": 16, "kernel_size": 1, "init": "whiten"}
    assert config_problem(raw) == ("network[2] (conv2d): init 'whiten' is for the network's first layer "
                                   "only (its filters are computed from the input images)")
    from cnncli.network import build_network

    with pytest.raises(ConfigError, match=r"^network\[2\] \(conv2d\): init 'whiten' is for"):
        build_network(raw["network"], (1, 3, 3))  # the Python API too, not only configs
    inner = [{"type": "conv2d", "out_channels": 8, "kernel_size": 1, "init": "whiten"}]  # 4 -> 8
    with pytest.raises(ConfigError, match=r"^network\[1\]\.layers\[0\] \(conv2d\): init 'whiten' is for"):
        build_network([{"type": "conv2d", "out_channels": 4, "kernel_size": 1},
                       {"type": "residual", "layers": inner, "shortcut": "conv"}], (1, 3, 3))
