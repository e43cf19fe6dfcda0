#!/usr/bin/env python
"""Time training steps of a cnncli config: cnncli's fast path, its reference path and PyTorch.

Each implementation trains the network of ``--config`` on synthetic random images of the
config's input shape (MNIST files are not needed), starting from the same weights, with the
config's loss and optimizer. cnncli runs through ``Trainer.train_epoch`` (the loop ``cnn train``
runs); PyTorch runs the same steps with ``torch.nn`` layers holding copies of the weights.
The implementations are interleaved across repetitions and the table shows medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_train.py --config configs/mnist.yaml --steps 1000

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_TRAIN = 60_000


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "mnist.yaml"),
                    help="cnncli YAML config whose network, loss and optimizer are timed")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per repetition")
    ap.add_argument("--reference-steps", type=int, default=None,
                    help="steps per repetition for the slow reference path (default: steps/5)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--dtype", default=None,
                    help="float64, float32 or both as 'float64,float32' (default: the config's)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS / PyTorch threads (default 1)")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (the median is shown)")
    ap.add_argument("--impls", default="fast,reference,torch",
                    help="comma-separated subset of fast, reference, torch")
    args = ap.parse_args(argv)
    for name in ("steps", "threads", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.reference_steps is None:
        args.reference_steps = max(20, args.steps // 5)
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = set(args.impls) - {"fast", "reference", "torch"}
    if unknown:
        ap.error(f"--impls: unknown {', '.join(sorted(unknown))}")
    return args


# ----------------------------------------------------------------------------- setup
def load_setup(path, batch_size):
    """The resolved config, one sample's shape, the class count and the epoch length."""
    from cnncli.config import load_config
    from cnncli.data import DATASETS, load_dataset

    cfg = load_config(path)
    if batch_size is not None:
        cfg["training"]["batch_size"] = batch_size
    cfg["training"]["schedule"] = None  # a constant rate: every repetition does the same work
    data = cfg["data"]
    if data["name"] == "mnist":
        in_shape, n_classes = DATASETS["mnist"].describe(data)
        n_train = min(MNIST_TRAIN, data.get("limit") or MNIST_TRAIN)
    else:
        ds = load_dataset(data, cfg["seed"])
        in_shape, n_classes, n_train = ds.input_shape, ds.n_classes, len(ds.y_train)
    return cfg, tuple(in_shape), n_classes, n_train


def synthetic(in_shape, n_classes, n, seed):
    """Random uint8 images scaled by 1/255 (as MNIST) and random labels."""
    from cnncli.data import Dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *in_shape), dtype=np.uint8)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    names = [str(i) for i in range(n_classes)]
    return Dataset("synthetic", x, y, x[:1], y[:1], names, 1 / 255)


class CnncliRunner:
    """``steps`` training steps of ``Trainer.train_epoch`` (plus one 1-sample evaluation)."""

    def __init__(self, cfg, impl, data, warm):
        from cnncli.train import Trainer

        cfg = {**cfg, "training": {**cfg["training"], "impl": impl}}  # threads: set by main
        self.name = f"cnncli {impl}"
        self.trainer = Trainer(cfg, data=data)
        self.data, self.warm = data, warm
        self.steps = -(-len(data.y_train) // cfg["training"]["batch_size"])

    def warm_up(self):
        self.trainer.data = self.warm
        self.trainer.train_epoch()
        self.trainer.data = self.data

    def run(self) -> float:
        start = time.perf_counter()
        self.trainer.train_epoch()
        return time.perf_counter() - start


class TorchRunner:
    """The same network in torch.nn, the same weights, loss, optimizer and batches."""

    def __init__(self, cfg, net, data, warm, dtype):
        import torch

        self.torch = torch
        self.name = "PyTorch"
        self.model = torch_model(net, dtype)
        self.dtype = torch_dtype(dtype)
        self.loss = torch_loss(cfg["training"], net)
        self.optimizer = torch_optimizer(cfg["training"], self.model.parameters())
        self.batch_size = cfg["training"]["batch_size"]
        self.shuffle = cfg["training"]["shuffle"]
        self.rng = np.random.default_rng([cfg["seed"], 2])
        self.data, self.warm = data, warm
        self.steps = -(-len(data.y_train) // self.batch_size)

    def warm_up(self):
        self._epoch(self.warm)

    def run(self) -> float:
        start = time.perf_counter()
        self._epoch(self.data)
        return time.perf_counter() - start

    def _epoch(self, data):
        torch = self.torch
        x, y = data.x_train, data.y_train
        n, bs = len(y), self.batch_size
        order = self.rng.permutation(n) if self.shuffle else None
        scale = torch.tensor(data.scale, dtype=self.dtype)
        loss_sum, correct = 0.0, 0
        for b in range(-(-n // bs)):
            sl = slice(b * bs, min((b + 1) * bs, n))
            idx = order[sl] if order is not None else sl
            xb = torch.from_numpy(x[idx]).to(self.dtype) * scale
            yb = torch.from_numpy(y[idx])
            out = self.model(xb)
            loss = self.loss(out, yb)
            value = loss.item()
            if not math.isfinite(value):
                raise SystemExit(f"PyTorch: the loss is {value} at batch {b + 1}; the config "
                                 "diverges on random data")
            loss_sum += value * len(yb)
            correct += int((out.argmax(dim=1) == yb).sum())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():  # the 1-sample evaluation Trainer.train_epoch ends with
            self.model(torch.from_numpy(data.x_test).to(self.dtype) * scale)
        return loss_sum / n, correct / n


def torch_dtype(dtype):
    import torch

    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def torch_model(net, dtype):
    """torch.nn.Sequential equal to a cnncli Network, holding copies of its weights."""
    import torch
    from torch import nn

    mods = []
    for layer in net.layers:
        kind, p = layer.type_name, layer.params
        if kind == "conv2d":
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          stride=layer.stride, padding=layer.pad)
            w, b = p["W"], p["b"]
        elif kind == "dense":
            m = nn.Linear(layer.in_features, layer.out_features)
            w, b = p["W"].T, p["b"]
        else:
            simple = {"flatten": nn.Flatten, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                      "tanh": nn.Tanh, "softmax": lambda: nn.Softmax(dim=-1)}
            if kind in simple:
                m = simple[kind]()
            elif kind == "max_pool2d":
                m = nn.MaxPool2d(layer.kernel_size, layer.stride)
            elif kind == "avg_pool2d":
                m = nn.AvgPool2d(layer.kernel_size, layer.stride)
            else:
                raise SystemExit(f"no PyTorch equivalent for layer type {kind!r}; "
                                 "run with --impls fast,reference")
            mods.append(m)
            continue
        m = m.to(torch_dtype(dtype))
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
            m.bias.copy_(torch.from_numpy(b))
        mods.append(m)
    return nn.Sequential(*mods)


def torch_loss(training, net):
    """The config's loss on (output, integer labels), as cnncli computes it."""
    import torch
    import torch.nn.functional as F

    if training["loss"] == "mse":
        def mse(out, y):
            return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))
        return mse
    if net.layers[-1].type_name == "softmax":  # -log p[target] of the softmax output
        def nll(out, y):
            return F.nll_loss(torch.log(out.clamp_min(torch.finfo(out.dtype).tiny)), y)
        return nll
    return F.cross_entropy


def torch_optimizer(training, params):
    import torch

    opt = dict(training["optimizer"])
    lr = training["learning_rate"]
    if opt["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt["momentum"], nesterov=opt["nesterov"],
                               weight_decay=opt["weight_decay"])
    return torch.optim.Adam(params, lr=lr, betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
                            weight_decay=opt["weight_decay"])


def agreement(cfg, in_shape, n_classes, dtype, steps=3):
    """Largest relative difference between cnncli's and PyTorch's parameters after a few
    identical steps from identical weights (a check that both do the same work)."""
    from cnncli.train import Trainer

    bs = cfg["training"]["batch_size"]
    data = synthetic(in_shape, n_classes, steps * bs, seed=7)
    cfg = {**cfg, "training": {**cfg["training"], "impl": "fast", "shuffle": False,
                               "schedule": None, "dtype": np.dtype(dtype).name}}
    trainer = Trainer(cfg, data=data)
    runner = TorchRunner(cfg, trainer.net, data, data, dtype)
    trainer.train_epoch()
    runner._epoch(data)
    worst = 0.0
    mods = [m for m in runner.model if hasattr(m, "weight")]
    layers = [l for l in trainer.net.layers if l.params]
    for layer, m in zip(layers, mods):
        w = m.weight.detach().numpy()
        pairs = [(layer.params["W"], w.T if layer.type_name == "dense" else w),
                 (layer.params["b"], m.bias.detach().numpy())]
        for ours, theirs in pairs:
            scale = max(float(np.abs(theirs).max()), 1e-30)
            worst = max(worst, float(np.abs(ours - theirs).max()) / scale)
    return worst


# ----------------------------------------------------------------------------- report
def blas_lines():
    """One line per BLAS/OpenMP library in the process: kernel and thread count in use."""
    from threadpoolctl import threadpool_info

    owners = {"numpy.libs": "NumPy's: matrix products", "scipy.libs": "SciPy's: the in-place SGD updates, "
              "1 thread while cnncli trains", "torch": "PyTorch's OpenMP"}
    lines = []
    for lib in sorted(threadpool_info(), key=lambda lib: lib.get("filepath", "")):
        path = Path(lib.get("filepath", "?"))
        owner = next((v for k, v in owners.items() if k in path.parts), "")
        lines.append(f"  {lib.get('user_api')}: {lib.get('internal_api')} {lib.get('version') or ''} "
                     f"kernel {lib.get('architecture') or '-'}, num_threads {lib.get('num_threads')} "
                     f"({path.parent.name}/{path.name}{'; ' + owner if owner else ''})")
    return lines


def main(argv=None):
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    import cnncli

    cfg, in_shape, n_classes, n_train = load_setup(args.config, args.batch_size)
    cfg["training"]["threads"] = args.threads  # Trainer.train_epoch applies it
    bs = cfg["training"]["batch_size"]
    dtypes = [np.dtype(d.strip()) for d in (args.dtype or cfg["training"]["dtype"]).split(",")]
    steps_per_epoch = -(-n_train // bs)

    impls = list(args.impls)
    torch = None
    if "torch" in impls:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed (pip install '.[bench]'): timing cnncli only")
            impls.remove("torch")
    if torch is not None:
        torch.set_num_threads(args.threads)

    print(f"config {args.config}: batch {bs}, input {'x'.join(map(str, in_shape))}, "
          f"{n_classes} classes, {steps_per_epoch} steps per epoch, loss {cfg['training']['loss']}, "
          f"optimizer {cfg['training']['optimizer']['name']}")
    print(f"cnncli {cnncli.__version__}, numpy {np.__version__}, Python {platform.python_version()}"
          + (f", torch {torch.__version__}" if torch is not None else "")
          + f", {os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if var in os.environ:
            print(f"  note: {var}={os.environ[var]} is set"
                  + (" (it changes the OpenBLAS kernel; see benchmarks/README.md)"
                     if var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") else ""))

    rows, shown = [], False
    for dtype in dtypes:
        cfg_d = {**cfg, "training": {**cfg["training"], "dtype": dtype.name}}
        data = synthetic(in_shape, n_classes, args.steps * bs, seed=1)
        ref_data = synthetic(in_shape, n_classes, args.reference_steps * bs, seed=1)
        warm = synthetic(in_shape, n_classes, min(args.steps, 20) * bs, seed=2)
        runners = []
        for impl in impls:
            if impl in ("fast", "reference"):
                runners.append(CnncliRunner(cfg_d, impl, data if impl == "fast" else ref_data, warm))
        if "torch" in impls:
            net = runners[0].trainer.net if runners else _fresh_net(cfg_d, in_shape, dtype)
            runners.append(TorchRunner(cfg_d, net, data, warm, dtype))
        # Limit threads only now: every BLAS library the runners use is loaded (a library
        # loaded inside threadpool_limits would keep its default thread count).
        with threadpool_limits(limits=args.threads):
            if not shown:
                shown = True
                print(f"threads {args.threads}; BLAS libraries loaded:")
                print("\n".join(blas_lines()))
                if torch is not None:
                    print(f"  torch: BLAS {'MKL' if torch.backends.mkl.is_available() else 'other'}, "
                          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                          f"num_threads {torch.get_num_threads()}")
            for r in runners:
                r.warm_up()
            times = {r.name: [] for r in runners}
            for rep in range(args.repeat):
                k = rep % len(runners)
                for r in runners[k:] + runners[:k]:  # a different order every repetition
                    times[r.name].append(r.run() / r.steps)
            check = agreement(cfg_d, in_shape, n_classes, dtype) if torch is not None else None
        med = {name: statistics.median(v) for name, v in times.items()}
        for r in runners:
            rows.append((dtype.name, r.name, r.steps, med[r.name], min(times[r.name]),
                         max(times[r.name]), med.get("PyTorch"), med.get("cnncli reference")))
        if check is not None:
            rows.append((dtype.name, "check", check))

    print(f"\nmedian of {args.repeat} interleaved repetitions; s/epoch = ms/step x "
          f"{steps_per_epoch} steps")
    head = (f"{'dtype':8} {'implementation':17} {'steps':>6} {'ms/step':>9} {'(min-max)':>15} "
            f"{'s/epoch':>8} {'vs PyTorch':>11} {'vs reference':>13}")
    print(head)
    print("-" * len(head))
    for row in rows:
        if row[1] == "check":
            print(f"{row[0]:8} PyTorch agreement: parameters after 3 identical steps differ by "
                  f"{row[2]:.1e} (max relative)")
            continue
        dt, name, steps, m, lo, hi, tref, rref = row
        vs_t = f"{m / tref:.2f}x time" if tref and name != "PyTorch" else ""
        vs_r = f"{rref / m:.1f}x faster" if rref and name != "cnncli reference" else ""
        print(f"{dt:8} {name:17} {steps:>6} {1e3 * m:>9.3f} {f'({1e3 * lo:.2f}-{1e3 * hi:.2f})':>15} "
              f"{m * steps_per_epoch:>8.3g} {vs_t:>11} {vs_r:>13}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _fresh_net(cfg, in_shape, dtype):
    from cnncli.network import build_network

    return build_network(cfg["network"], in_shape, np.random.default_rng([cfg["seed"], 1]), dtype)


if __name__ == "__main__":
    sys.exit(main())
