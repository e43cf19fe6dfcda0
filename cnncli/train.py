"""The training loop. It reports through callbacks and never prints."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from cnncli.data import Dataset, load_dataset, one_hot
from cnncli.data.augment import augment, is_active
from cnncli.errors import ConfigError, TrainingError
from cnncli.losses import CrossEntropyLoss, MSELoss
from cnncli.modes import eval_mode
from cnncli.network import Network, build_network
from cnncli.optim import OPTIMIZERS
from cnncli.seeds import rng_stream

EVAL_BATCH = 250  # samples per forward pass when evaluating (bounds memory)


def blas_threads(threads: int | None):
    """A context running cnncli's arithmetic with thread policy ``threads`` (``training.threads``).

    None (unset) is cnncli's default, single-threaded BLAS, as 1 is; n gives NumPy's BLAS n
    threads. See ``cnncli.blas``, which also explains why.
    """
    from cnncli.blas import threads as policy

    return policy(threads)


class Interrupted(Exception):
    """Training was asked to stop (Ctrl-C); the last finished epoch is intact."""


def make_loss(training: dict, net: Network, data: Dataset | None = None):
    """The configured loss. ``data`` resolves ``loss.class_weights`` (``auto`` counts its
    training labels; a mapping names its classes); without it class weights are left out."""
    from cnncli.losses import loss_options, resolve_class_weights

    opts = loss_options(training["loss"])
    if opts["name"] == "mse":
        return MSELoss()
    weights = None
    if opts["class_weights"] is not None and data is not None:
        weights = resolve_class_weights(opts["class_weights"], data.y_train, data.class_names)
    return CrossEntropyLoss(from_logits=net.layers[-1].type_name != "softmax",
                            label_smoothing=opts["label_smoothing"], class_weights=weights)


def make_optimizer(training: dict):
    opt = dict(training["optimizer"])
    name = opt.pop("name")
    cls = OPTIMIZERS[name]
    return cls(learning_rate=training["learning_rate"], **opt)


def learning_rate_at(training: dict, epoch: int) -> float:
    """The rate used during ``epoch`` (1-based) under the configured schedule."""
    base = training["learning_rate"]
    sched = training["schedule"] or {"name": "constant"}
    if sched["name"] == "step":
        return base * sched["gamma"] ** ((epoch - 1) // sched["step_size"])
    if sched["name"] == "cosine":
        total = training["epochs"]
        lo = sched["min_lr"]
        return lo + 0.5 * (base - lo) * (1 + math.cos(math.pi * (epoch - 1) / max(total, 1)))
    return base


def evaluate(net: Network, loss, data: Dataset, split: str, dtype, tta: str | None = None) -> dict:
    """Mean loss, accuracy and predictions of ``net`` on one split, in chunks of EVAL_BATCH,
    in eval mode (the network's mode is restored afterwards). ``tta`` (``cnncli.tta``): the
    predictions, so the accuracy, come from the mean scores of the views; the loss is always
    that of the images as they are."""
    x, y = data.split(split)
    total, preds = 0.0, np.empty(len(y), dtype=np.int64)
    with eval_mode(net):
        for i in range(0, len(y), EVAL_BATCH):
            xb = data.images(x[i:i + EVAL_BATCH], dtype)
            yb = y[i:i + EVAL_BATCH]
            out = net.forward(xb)
            total += loss(out, one_hot(yb, data.n_classes, dtype)) * len(yb)
            if tta:
                from cnncli.scoring import tta_scores

                preds[i:i + len(yb)] = tta_scores(net, xb, tta, first=out).argmax(axis=1)
            else:
                preds[i:i + len(yb)] = out.argmax(axis=1)
    return {"loss": total / len(y), "accuracy": float((preds == y).mean()), "predictions": preds}


def single_value_batch_norm(net: Network, batch: int) -> str | None:
    """The first batch_norm layer that a train-mode batch of ``batch`` samples would give a
    single value per channel (no variance), as ``network[i] (batch_norm)``; None if none."""
    shape = net.input_shape
    for i, layer in enumerate(net.layers):
        if layer.type_name == "batch_norm" and batch * int(np.prod(shape[1:])) < 2:
            return f"network[{i}] (batch_norm)"
        if layer.type_name == "residual":  # its inner layers, as a network of their own
            inner = single_value_batch_norm(layer.block, batch)
            if inner is not None:
                return f"network[{i}] (residual) " + inner.replace("network[", "layers[", 1)
        shape = layer.output_shape(shape)
    return None


WHITEN_SAMPLES = 5000


def whiten_first_layer(net: Network, data: Dataset) -> None:
    """A first conv layer with ``init: whiten`` gets its filters from the patches of the first
    ``WHITEN_SAMPLES`` training images (``Conv2D.whiten``; ``build_network`` refuses the init
    anywhere else)."""
    if getattr(net.layers[0], "init", None) == "whiten":
        net.layers[0].whiten(data.images(data.x_train[:WHITEN_SAMPLES], np.float32))


class Trainer:
    """Owns the network, the optimizer and all training state of one run.

    ``epoch`` counts finished epochs; ``history`` holds one metrics row per finished epoch.
    All randomness comes from the config's seed: stream 0 data, 1 initialisation, 2 shuffling,
    3 augmentation, 4 the network's own draws while training (dropout masks).
    """

    def __init__(self, cfg: dict, data: Dataset | None = None):
        self.cfg = cfg
        t = cfg["training"]
        self.dtype = np.dtype(t["dtype"])
        self.data = data if data is not None else load_dataset(cfg["data"], cfg["seed"])
        init_rng = rng_stream(cfg["seed"], "init")
        self.net = build_network(cfg["network"], self.data.input_shape, init_rng, self.dtype,
                                 impl=t["impl"])
        self.loss = make_loss(t, self.net, self.data)
        self.optimizer = make_optimizer(t)
        # impl "reference" runs the seed's algorithm step for step: per-sample SciPy loops in
        # every conv layer and every gradient (the first layer's input gradient too, which
        # nobody uses); the fast path skips that gradient.
        self.net.input_grad = t["impl"] == "reference"
        whiten_first_layer(self.net, self.data)
        # fine-tuning (cnncli.finetune): start from a checkpoint's leading layers; frozen
        # layers run in eval mode and the optimizer sees only the others
        from cnncli.finetune import Trainable, init_from_checkpoint, skip_frozen_gradients
        from cnncli.freeze import frozen_indices

        self.frozen = frozen_indices(t.get("freeze"))
        self.init_report = None
        if t.get("init_from"):
            self.init_report = init_from_checkpoint(self.net, t["init_from"],
                                                    t.get("init_from_layers"))
        if self.frozen and t["impl"] != "reference":
            skip_frozen_gradients(self.net, self.frozen)
        self._trainable = Trainable(self.net, self.frozen) if self.frozen else self.net
        self.shuffle_rng = rng_stream(cfg["seed"], "shuffle")
        self.augment = cfg["data"].get("augment") if is_active(cfg["data"].get("augment")) else None
        self.augment_rng = rng_stream(cfg["seed"], "augment")
        self.noise_rng = rng_stream(cfg["seed"], "noise")
        self.net.set_rng(self.noise_rng)
        self._check_batches()
        from cnncli.ema import EMA

        self.ema = EMA(t["ema"], self.net, self._trainable) if t.get("ema") else None
        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"epoch": 0, "test_accuracy": -1.0}
        self.early = {"best_loss": math.inf, "bad_epochs": 0}
        self.stop_requested = False
        self._data_fingerprint: str | None = None  # computed at the first checkpoint

    def batch_sizes(self) -> list[int]:
        """The sizes of one epoch's batches: the last one is smaller when batch_size does not
        divide the training set, and dropped with ``training.drop_last`` (unless it is the
        only one)."""
        n, bs = len(self.data.y_train), self.cfg["training"]["batch_size"]
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        if self.cfg["training"].get("drop_last") and len(sizes) > 1 and sizes[-1] < bs:
            sizes.pop()
        return sizes

    def _check_batches(self) -> None:
        """Refuse, before training, a batch that would give a batch_norm layer a single value
        per channel in train mode (no variance), naming the layer and the fix."""
        sizes = self.batch_sizes()
        smallest = min(sizes)
        where = single_value_batch_norm(self.net, smallest)
        if where is None:
            return
        bs, n = self.cfg["training"]["batch_size"], len(self.data.y_train)
        if n < 2:
            fix = "train on at least 2 samples"
        elif smallest < bs and len(sizes) > 1:
            fix = "set training.drop_last: true to skip that last batch, or choose another batch_size"
        else:
            fix = "use a batch_size of at least 2"
        raise ConfigError(f"{where}: a training batch of {smallest} sample(s) (the "
                          f"{n} training samples in batches of {bs}) gives it a single value "
                          f"per channel, which has no variance; {fix}")

    @property
    def epochs(self) -> int:
        return self.cfg["training"]["epochs"]

    def should_stop_early(self) -> bool:
        es = self.cfg["training"]["early_stopping"]
        return es is not None and self.early["bad_epochs"] >= es["patience"]

    def train_epoch(self, on_batch: Callable | None = None) -> dict:
        """Run one epoch of minibatch SGD, evaluate, and return its metrics row.

        Runs with the thread policy ``training.threads`` (see ``blas_threads``)."""
        with blas_threads(self.cfg["training"].get("threads")):
            return self._train_epoch(on_batch)

    def _train_epoch(self, on_batch):
        t = self.cfg["training"]
        epoch = self.epoch + 1
        start = time.perf_counter()
        from cnncli.schedules import batch_rates

        rates = batch_rates(t, epoch, len(self.batch_sizes()), learning_rate_at)
        lr = float(rates[0])
        self.optimizer.learning_rate = lr
        x, y = self.data.x_train, self.data.y_train
        n, bs = len(y), t["batch_size"]
        order = self.shuffle_rng.permutation(n) if t["shuffle"] else None
        n_batches = len(self.batch_sizes())
        n = min(n, n_batches * bs)  # the samples trained on (drop_last may skip the last few)
        loss_sum, correct = 0.0, 0
        self.net.train()
        for i in self.frozen:  # frozen layers: eval mode (batch norm keeps its statistics)
            self.net.layers[i].training = False
        targets = np.eye(self.data.n_classes, dtype=self.dtype)  # row k: the one-hot target of class k
        for b in range(n_batches):
            if self.stop_requested:
                raise Interrupted()
            lr = self.optimizer.learning_rate = float(rates[b])  # per batch (schedules.py)
            sl = slice(b * bs, min((b + 1) * bs, n))
            idx = order[sl] if order is not None else sl
            xb = x[idx]
            if self.augment is not None:  # the training batch only, on the stored images
                xb = augment(xb, self.augment_rng, self.augment)
            xb = self.data.images(xb, self.dtype)
            yb = y[idx]
            target = targets[yb]  # (B, n_classes), as one_hot(yb) but one gather
            out = self.net.forward(xb)
            batch_loss = self.loss(out, target)
            if not math.isfinite(batch_loss):
                raise TrainingError(
                    f"epoch {epoch}, batch {b + 1}/{n_batches}: the loss is {batch_loss} (not "
                    f"finite), so training diverged; try a lower learning rate (this epoch "
                    f"used {lr:g})")
            correct += int((out.argmax(axis=1) == yb).sum())
            loss_sum += batch_loss * len(yb)
            self.net.backward(self.loss.gradient(out, target))
            self.optimizer.step(self._trainable)
            if self.ema is not None:
                self.ema.update(self.net)
            if on_batch is not None:
                on_batch(b + 1, n_batches, batch_loss)
        if self.ema is not None:  # the test metrics of the weights' moving average
            with self.ema.applied(self.net):
                test = evaluate(self.net, self.loss, self.data, "test", self.dtype, t.get("tta"))
        else:
            test = evaluate(self.net, self.loss, self.data, "test", self.dtype, t.get("tta"))
        if not math.isfinite(test["loss"]):
            raise TrainingError(f"epoch {epoch}: the test loss is {test['loss']} (not finite); "
                                f"try a lower learning rate (this epoch used {lr:g})")
        row = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n,
               "test_loss": test["loss"], "test_accuracy": test["accuracy"],
               "seconds": time.perf_counter() - start, "learning_rate": lr}
        self.epoch = epoch
        self.history.append(row)
        if row["test_accuracy"] > self.best["test_accuracy"]:
            self.best = {"epoch": epoch, "test_accuracy": row["test_accuracy"]}
        es = t["early_stopping"]
        if es is not None:
            if row["test_loss"] < self.early["best_loss"] - es["min_delta"]:
                self.early = {"best_loss": row["test_loss"], "bad_epochs": 0}
            else:
                self.early["bad_epochs"] += 1
        return row

    # ------------------------------------------------------------ checkpoint state
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON-able metadata from which ``load_state`` restores this exact point."""
        arrays = self.net.state_dict()
        arrays.update({f"optimizer.{k}": v for k, v in self.optimizer.state_dict().items()})
        if self.ema is not None:
            arrays.update(self.ema.arrays())
        meta = {
            **self.input_description(),
            "data_fingerprint": self.data_fingerprint,
            "epoch": self.epoch,
            "metrics": self.history[-1] if self.history else None,
            "history": self.history,
            "best": self.best,
            "early_stopping": self.early,
            "rng_state": self.shuffle_rng.bit_generator.state,
            "augment_rng_state": self.augment_rng.bit_generator.state,
            "noise_rng_state": self.noise_rng.bit_generator.state,
        }
        if self.ema is not None:
            meta["ema_updates"] = self.ema.updates
        if self.init_report is not None:
            meta["init_from"] = self.init_report.meta()
        return arrays, meta

    @property
    def data_fingerprint(self) -> str:
        """``Dataset.fingerprint`` of this run's data, computed once (a resumed run compares it
        with its checkpoint's, then writes it into every checkpoint)."""
        if self._data_fingerprint is None:
            self._data_fingerprint = self.data.fingerprint()
        return self._data_fingerprint

    def input_description(self) -> dict:
        """How to feed the model, for the checkpoint's meta: one sample's ``input_shape``
        (C, H, W), the ``class_names``, the ``dtype`` it computes in, and how stored values
        (the dataset's, e.g. 0-255 pixels) become its inputs: multiplied by ``input_scale``;
        ``pixel_max`` is the stored value of a full-intensity pixel."""
        d = self.data
        return {"input_shape": [int(v) for v in d.input_shape], "class_names": list(d.class_names),
                "dtype": self.dtype.name, "input_scale": float(d.scale),
                "pixel_max": float(d.pixel_max)}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        params = {k: v for k, v in arrays.items() if k.startswith("layers.")}
        self.net.load_state_dict(params)
        self.optimizer.load_state_dict({k[len("optimizer."):]: v for k, v in arrays.items()
                                        if k.startswith("optimizer.")})
        self.epoch = int(meta["epoch"])
        self.history = list(meta.get("history") or [])[: self.epoch]
        self.best = dict(meta.get("best") or self.best)
        self.early = dict(meta.get("early_stopping") or self.early)
        state = meta.get("rng_state")
        if state is not None:
            self.shuffle_rng.bit_generator.state = state
        if meta.get("augment_rng_state") is not None:
            self.augment_rng.bit_generator.state = meta["augment_rng_state"]
        state = meta.get("noise_rng_state")
        if state is not None:
            self.noise_rng.bit_generator.state = state
        if self.ema is not None:
            self.ema.load(arrays, meta.get("ema_updates", 0))
