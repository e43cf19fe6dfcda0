#!/usr/bin/env python
"""Time training steps of a cnncli config: cnncli (its trainer and its Python API loop) against
PyTorch at every thread count, each measurement in its own fresh interpreter.

Each implementation trains the network of ``--config`` on synthetic random images of the
config's input shape (MNIST files are not needed), starting from the same weights, with the
config's loss and optimizer. cnncli runs through ``Trainer.train_epoch`` (the loop ``cnn train``
runs) and through the README's API loop (forward, loss gradient, backward, optimizer step);
PyTorch runs the same steps with ``torch.nn`` layers holding copies of the weights, with
``torch.set_num_threads(t)`` for every t from 1 to the number of cores. Every measurement is a
fresh process (nothing shared: imports, thread pools, caches), the processes are interleaved
over ``--repeat`` rounds, each process reports the median of its timed chunks, and the table
shows the median of those per-process medians and the ratio to PyTorch's fastest setting.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_train.py --dtype float64,float32 [--busy]

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from busy import spinning

ROOT = Path(__file__).resolve().parents[1]
MNIST_TRAIN = 60_000


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "mnist.yaml"),
                    help="cnncli YAML config whose network, loss and optimizer are timed")
    ap.add_argument("--steps", type=int, default=200, help="training steps per timed chunk")
    ap.add_argument("--chunks", type=int, default=5,
                    help="timed chunks per process (the process reports their median)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="processes per measurement, interleaved (the table shows their median)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--dtype", default=None,
                    help="float64, float32 or both as 'float64,float32' (default: the config's)")
    ap.add_argument("--impls", default="fast,api,torch",
                    help="comma-separated subset of fast (the trainer), api (the README's loop), "
                         "reference (the seed's algorithm), torch")
    ap.add_argument("--cnncli-threads", default="default,1",
                    help="cnncli thread policies to time: 'default' (training.threads unset) "
                         "and/or counts, e.g. 'default,1,2'")
    ap.add_argument("--torch-threads", default=None,
                    help="PyTorch thread counts, e.g. '1,2' (default: 1 to the number of cores)")
    ap.add_argument("--busy", type=int, nargs="?", const=1, default=0,
                    help="keep this many other processes spinning while measuring (default 1)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = ap.parse_args(argv)
    if args.child:
        return args
    for name in ("steps", "chunks", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = set(args.impls) - {"fast", "api", "reference", "torch"}
    if unknown:
        ap.error(f"--impls: unknown {', '.join(sorted(unknown))}")
    try:
        args.cnncli_threads = [None if t.strip() == "default" else int(t)
                               for t in args.cnncli_threads.split(",")]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        args.torch_threads = ([int(t) for t in args.torch_threads.split(",")] if args.torch_threads
                              else list(range(1, (cores or 1) + 1)))
    except ValueError as exc:
        ap.error(f"thread counts: {exc}")
    if any(t is not None and t < 1 for t in args.cnncli_threads + args.torch_threads):
        ap.error("thread counts must be >= 1")
    return args


# ----------------------------------------------------------------------------- setup
# One sample's shape, the class count and the training-set size of datasets the benchmarks
# know without loading them (a config may name a dataset this checkout cannot load yet, such as
# benchmarks/cifar-small.yaml's cifar10: its network is timed on synthetic images all the same).
KNOWN_SHAPES = {"mnist": ((1, 28, 28), 10, MNIST_TRAIN), "cifar10": ((3, 32, 32), 10, 50_000)}


def load_setup(path, batch_size, input_shape=None, n_classes=None):
    """The resolved config, one sample's shape, the class count and the epoch length.

    The data itself is never needed: the shape comes from ``input_shape``/``n_classes`` when
    given, else from ``KNOWN_SHAPES``, else from the dataset (loaded: shapes, digits, folders)."""
    from cnncli.config import read_config, validate
    from cnncli.data import load_dataset

    raw = read_config(path)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    name = data.get("name")
    if input_shape is not None or name in KNOWN_SHAPES:
        shape, classes, n_train = KNOWN_SHAPES.get(name, (None, None, 50_000))
        shape = tuple(input_shape or shape)
        classes = n_classes or classes
        if classes is None:
            raise SystemExit(f"{path}: give the class count of data {name!r} (--classes)")
        # validated against that shape; the data section is replaced by a built-in one that
        # needs no files (the benchmark never reads it), then shown as written
        cfg = validate({**raw, "data": {"name": "shapes"}}, str(path), known_data=(shape, classes))
        # shown as written; no augmentation (PyTorch's side has none)
        cfg["data"] = {k: v for k, v in data.items() if k != "augment"}
        n_train = min(n_train, data.get("limit") or n_train)
    else:
        cfg = validate(raw, str(path))
        ds = load_dataset(cfg["data"], cfg["seed"])
        shape, classes, n_train = ds.input_shape, ds.n_classes, len(ds.y_train)
    if batch_size is not None:
        cfg["training"]["batch_size"] = batch_size
    cfg["training"]["schedule"] = None  # a constant rate: every repetition does the same work
    return cfg, tuple(shape), classes, n_train


def synthetic(in_shape, n_classes, n, seed):
    """Random uint8 images scaled by 1/255 (as MNIST) and random labels."""
    from cnncli.data import Dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *in_shape), dtype=np.uint8)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    names = [str(i) for i in range(n_classes)]
    return Dataset("synthetic", x, y, x[:1], y[:1], names, 1 / 255)


class CnncliRunner:
    """``steps`` training steps of ``Trainer.train_epoch`` (plus one 1-sample evaluation),
    with the thread policy ``training.threads = threads`` (None: unset, cnncli's default)."""

    def __init__(self, cfg, impl, data, warm, threads):
        from cnncli.train import Trainer

        cfg = {**cfg, "training": {**cfg["training"], "impl": impl, "threads": threads}}
        self.trainer = Trainer(cfg, data=data)
        self.data, self.warm = data, warm

    def warm_up(self):
        self.trainer.data = self.warm
        self.trainer.train_epoch()
        self.trainer.data = self.data

    def run(self) -> float:
        start = time.perf_counter()
        self.trainer.train_epoch()
        return time.perf_counter() - start


class _EpochRunner:
    """A runner whose ``_epoch(data)`` trains once over ``data``: warm up on the small set,
    then time one pass over the measured one."""

    def warm_up(self):
        self._epoch(self.warm)

    def run(self) -> float:
        start = time.perf_counter()
        self._epoch(self.data)
        return time.perf_counter() - start


class ApiRunner(_EpochRunner):
    """The README's Python API loop: ``out = net.forward(x); net.backward(loss.gradient(out,
    y)); opt.step(net)``, plus the loss value, on the same batches. No thread setting at all
    for the default policy, as a user writes it; ``with cnncli.threads(n)`` otherwise."""

    def __init__(self, cfg, data, warm, threads):
        import cnncli
        from cnncli.train import make_loss, make_optimizer

        t = cfg["training"]
        self.dtype = np.dtype(t["dtype"])
        self.net = _fresh_net(cfg, data.input_shape, self.dtype)
        self.loss, self.opt = make_loss(t, self.net), make_optimizer(t)
        self.bs = t["batch_size"]
        self.targets = np.eye(data.n_classes, dtype=self.dtype)
        self.data, self.warm = data, warm
        self.threads = threads
        self.context = cnncli.threads(threads) if threads is not None else None

    def _epoch(self, data):
        if self.context is not None:
            with self.context:
                return self._steps(data)
        return self._steps(data)

    def _steps(self, data):
        net, loss, opt = self.net, self.loss, self.opt
        x, y = data.x_train, data.y_train
        total = 0.0
        for i in range(0, len(y), self.bs):
            xb = data.images(x[i:i + self.bs], self.dtype)
            target = self.targets[y[i:i + self.bs]]
            out = net.forward(xb)
            total += loss(out, target)
            net.backward(loss.gradient(out, target))
            opt.step(net)
        return total


class TorchRunner(_EpochRunner):
    """The same network in torch.nn, the same weights, loss, optimizer and batches."""

    def __init__(self, cfg, net, data, warm, dtype):
        import torch

        self.torch = torch
        self.model = torch_model(net, dtype)
        self.dtype = torch_dtype(dtype)
        self.loss = torch_loss(cfg["training"], net)
        self.optimizer = torch_optimizer(cfg["training"], self.model.parameters())
        self.batch_size = cfg["training"]["batch_size"]
        self.shuffle = cfg["training"]["shuffle"]
        self.rng = np.random.default_rng([cfg["seed"], 2])
        self.data, self.warm = data, warm
        self.steps = -(-len(data.y_train) // self.batch_size)

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
        self.model.eval()  # the 1-sample evaluation Trainer.train_epoch ends with
        with torch.no_grad():
            self.model(torch.from_numpy(data.x_test).to(self.dtype) * scale)
        self.model.train()
        return loss_sum / n, correct / n


def torch_dtype(dtype):
    import torch

    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def torch_model(net, dtype):
    """torch.nn.Sequential equal to a cnncli Network, holding copies of its weights and buffers.
    ``model.pairs`` lists (cnncli layer, torch module) for every layer with parameters."""
    import torch
    from torch import nn

    mods, pairs = [], []
    shape = net.input_shape
    for layer in net.layers:
        kind, p = layer.type_name, layer.params
        in_shape, shape = shape, layer.output_shape(shape)
        tensors = {}
        if kind == "conv2d":
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          stride=layer.stride, padding=layer.pad)
            tensors = {"weight": p["W"], "bias": p["b"]}
        elif kind == "dense":
            m = nn.Linear(layer.in_features, layer.out_features)
            tensors = {"weight": p["W"].T, "bias": p["b"]}
        elif kind == "batch_norm":  # the same conventions (biased batch variance in the step,
            # unbiased in the running variance, momentum weighting the new batch)
            cls = nn.BatchNorm2d if len(in_shape) == 3 else nn.BatchNorm1d
            m = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            tensors = {"weight": p["gamma"], "bias": p["beta"],
                       "running_mean": layer.buffers["running_mean"],
                       "running_var": layer.buffers["running_var"]}
        else:
            simple = {"flatten": nn.Flatten, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                      "tanh": nn.Tanh, "softmax": lambda: nn.Softmax(dim=-1)}
            if kind in simple:
                m = simple[kind]()
            elif kind == "max_pool2d":
                m = nn.MaxPool2d(layer.kernel_size, layer.stride)
            elif kind == "avg_pool2d":
                m = nn.AvgPool2d(layer.kernel_size, layer.stride)
            elif kind == "global_avg_pool2d":  # (N, C, H, W) -> (N, C)
                m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            elif kind == "dropout":  # its own random masks: the same work, other draws
                m = nn.Dropout(layer.p)
            else:
                raise SystemExit(f"no PyTorch equivalent for layer type {kind!r}; "
                                 "run with --impls fast,reference")
            mods.append(m)
            continue
        m = m.to(torch_dtype(dtype))
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(m, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        mods.append(m)
        pairs.append((layer, m))
    model = nn.Sequential(*mods)
    model.pairs = pairs
    return model


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
    """Largest difference between cnncli's and PyTorch's parameters, relative to the layer's
    largest parameter, after a few identical steps from identical weights (a check that both do
    the same work; dropout is switched off for it)."""
    from cnncli.train import Trainer

    bs = cfg["training"]["batch_size"]
    data = synthetic(in_shape, n_classes, steps * bs, seed=7)
    cfg = {**cfg, "training": {**cfg["training"], "impl": "fast", "shuffle": False,
                               "schedule": None, "dtype": np.dtype(dtype).name},
           # dropout off: the two draw different masks
           "network": [{**spec, "p": 0.0} if spec["type"] == "dropout" else spec
                       for spec in cfg["network"]]}
    trainer = Trainer(cfg, data=data)
    runner = TorchRunner(cfg, trainer.net, data, data, dtype)
    trainer.train_epoch()
    runner._epoch(data)
    worst = 0.0
    for layer, m in runner.model.pairs:
        names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
        # relative to the layer's largest parameter: a bias before a batch norm has a zero
        # gradient, so both sides keep ~1e-17 of rounding there, which is no disagreement
        scale = max(max(float(np.abs(v).max()) for v in layer.params.values()), 1e-30)
        for key, ours in layer.params.items():
            theirs = getattr(m, names[key]).detach().numpy()
            if layer.type_name == "dense" and key == "W":
                theirs = theirs.T
            worst = max(worst, float(np.abs(ours - theirs).max()) / scale)
    return worst


# ----------------------------------------------------------------------------- report
def blas_lines():
    """One line per BLAS/OpenMP library in the process: kernel and thread count in use."""
    from threadpoolctl import threadpool_info

    owners = {"numpy.libs": "NumPy's: matrix products", "scipy.libs": "SciPy's: the axpy updates", "torch": "PyTorch's OpenMP"}
    lines = []
    for lib in sorted(threadpool_info(), key=lambda lib: lib.get("filepath", "")):
        path = Path(lib.get("filepath", "?"))
        owner = next((v for k, v in owners.items() if k in path.parts), "")
        lines.append(f"  {lib.get('user_api')}: {lib.get('internal_api')} {lib.get('version') or ''} "
                     f"kernel {lib.get('architecture') or '-'}, num_threads {lib.get('num_threads')} "
                     f"({path.parent.name}/{path.name}{'; ' + owner if owner else ''})")
    return lines


def environment_lines(extra: str = "") -> list[str]:
    """Versions, cores, load, and a note for each thread or kernel variable that is set."""
    import cnncli

    lines = [f"cnncli {cnncli.__version__}, numpy {np.__version__}, Python "
             f"{platform.python_version()}" + (f", {extra}" if extra else "")
             + f", {os.cpu_count()} CPUs, load average "
             + " ".join(f"{v:.2f}" for v in os.getloadavg())]
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS"):
        if var in os.environ:
            lines.append(f"  note: {var}={os.environ[var]} is set"
                         + (" (it changes the OpenBLAS kernel: run with env -u OPENBLAS_CORETYPE "
                            "-u OPENBLAS_L2_SIZE; see docs/benchmarks.md)"
                            if var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") else ""))
    return lines


# ----------------------------------------------------------------------------- one process
def child(spec: dict) -> dict:
    """One measurement in this (fresh) process: warm up, then ``chunks`` timed chunks of
    ``steps`` steps; returns seconds per step of each chunk and the BLAS setup in use."""
    import cnncli

    cfg, in_shape, n_classes, _ = load_setup(spec["config"], spec["batch_size"],
                                             spec.get("input_shape"), spec.get("classes"))
    dtype = np.dtype(spec["dtype"])
    cfg["training"]["dtype"] = dtype.name
    bs = cfg["training"]["batch_size"]
    if spec["impl"] == "check":
        return {"check": agreement(cfg, in_shape, n_classes, dtype)}
    steps = spec["steps"]
    data = synthetic(in_shape, n_classes, steps * bs, seed=1)
    warm = synthetic(in_shape, n_classes, min(steps, 20) * bs, seed=2)
    threads = spec["threads"]
    out = {}
    if spec["impl"] == "torch":
        import torch

        torch.set_num_threads(threads)
        runner = TorchRunner(cfg, _fresh_net(cfg, in_shape, dtype), data, warm, dtype)
        runner.warm_up()
        out["blas"] = blas_lines() + [
            f"  torch {torch.__version__}: BLAS {'MKL' if torch.backends.mkl.is_available() else 'other'}"
            f", CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"num_threads {torch.get_num_threads()}"]
    else:
        if spec["impl"] == "api":
            runner = ApiRunner(cfg, data, warm, threads)
        else:
            runner = CnncliRunner(cfg, spec["impl"], data, warm, threads)
        runner.warm_up()
        with cnncli.threads(threads):  # what cnncli's own calls run with
            out["blas"] = blas_lines()
    times = []
    for _ in range(spec["chunks"]):
        times.append(runner.run() / steps)
    out["times"] = times
    return out


def run_child(spec: dict) -> dict:
    """``child(spec)`` in a fresh interpreter with this one's environment."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the table
def label(case) -> str:
    impl, threads = case[1], case[2]
    if impl == "torch":
        return f"PyTorch, {threads} thread{'s' if threads > 1 else ''}"
    name = {"fast": "cnncli trainer", "api": "cnncli API loop", "reference": "cnncli reference"}[impl]
    return f"{name}, " + ("default" if threads is None else f"threads {threads}")


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    cfg, in_shape, n_classes, n_train = load_setup(args.config, args.batch_size)
    bs = cfg["training"]["batch_size"]
    dtypes = [np.dtype(d.strip()).name for d in (args.dtype or cfg["training"]["dtype"]).split(",")]
    steps_per_epoch = -(-n_train // bs)
    impls = list(args.impls)
    torch_version = None
    if "torch" in impls:
        try:
            import importlib.metadata

            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            print("PyTorch is not installed (pip install '.[bench]'): timing cnncli only")
            impls.remove("torch")

    cases = []
    for dtype in dtypes:
        for impl in ("fast", "api", "reference"):
            if impl in impls:
                cases += [(dtype, impl, t) for t in args.cnncli_threads]
        if "torch" in impls:
            cases += [(dtype, "torch", t) for t in args.torch_threads]

    print(f"config {args.config}: batch {bs}, input {'x'.join(map(str, in_shape))}, "
          f"{n_classes} classes, {steps_per_epoch} steps per epoch, loss {cfg['training']['loss']}, "
          f"optimizer {cfg['training']['optimizer']['name']}")
    print("\n".join(environment_lines(f"torch {torch_version}" if torch_version else "")))
    print(f"{len(cases)} measurements x {args.repeat} rounds, each a fresh process: warm-up, then "
          f"{args.chunks} chunks of {args.steps} steps (the process reports their median)")

    if args.busy:
        print(f"busy: {args.busy} other process(es) spinning on the CPU meanwhile")
    medians = {case: [] for case in cases}
    setups = {}
    checks = {}
    with spinning(args.busy):
        for rnd in range(args.repeat):
            k = rnd % len(cases)
            for case in cases[k:] + cases[:k]:  # another order every round
                spec = {"config": args.config, "batch_size": args.batch_size, "dtype": case[0],
                        "impl": case[1], "threads": case[2], "steps": args.steps,
                        "chunks": args.chunks}
                res = run_child(spec)
                medians[case].append(statistics.median(res["times"]))
                print(f"  round {rnd + 1}/{args.repeat}: {case[0]} {label(case)}: "
                      f"{1e3 * medians[case][-1]:.3f} ms/step", file=sys.stderr, flush=True)
                setups.setdefault(tuple(res["blas"]), []).append(label(case))
        if "torch" in impls and "fast" in impls:
            for dtype in dtypes:
                checks[dtype] = run_child({"config": args.config, "batch_size": args.batch_size,
                                           "dtype": dtype, "impl": "check"})["check"]

    print("\nBLAS in each process (inside cnncli's calls for cnncli), threadpoolctl:")
    for lines, users in setups.items():
        print(f"- {', '.join(sorted(set(users)))}:")
        print("\n".join(lines))

    print(f"\nmedian over {args.repeat} processes of each process's median; s/epoch = ms/step x "
          f"{steps_per_epoch} steps")
    head = (f"{'dtype':8} {'implementation':28} {'ms/step':>8} {'(process medians)':>24} "
            f"{'s/epoch':>8} {'vs PyTorch fastest':>19}")
    print(head)
    print("-" * len(head))
    summary = []
    for dtype in dtypes:
        torch_cases = [c for c in cases if c[0] == dtype and c[1] == "torch"]
        best = min(torch_cases, key=lambda c: statistics.median(medians[c])) if torch_cases else None
        tbest = statistics.median(medians[best]) if best else None
        for case in (c for c in cases if c[0] == dtype):
            m = statistics.median(medians[case])
            spread = " ".join(f"{1e3 * v:.2f}" for v in sorted(medians[case]))
            if case == best:
                vs = "fastest"
            else:
                vs = f"{m / tbest:.2f}x its time" if tbest else ""
            print(f"{dtype:8} {label(case):28} {1e3 * m:>8.3f} {spread:>24} "
                  f"{m * steps_per_epoch:>8.3g} {vs:>19}")
        default = (dtype, "fast", None)
        if best and default in medians:
            summary.append(f"{dtype}: cnncli's default trainer takes "
                           f"{statistics.median(medians[default]) / tbest:.2f}x the time of "
                           f"{label(best)}")
        api = (dtype, "api", None)
        if default in medians and api in medians:
            summary.append(f"{dtype}: API loop / trainer (default threads) = "
                           f"{statistics.median(medians[api]) / statistics.median(medians[default]):.2f}")
        if dtype in checks:
            summary.append(f"{dtype}: PyTorch agreement: parameters after 3 identical steps differ "
                           f"by {checks[dtype]:.1e} (max, relative to each layer's largest)")
    print("\n".join(summary))
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def _fresh_net(cfg, in_shape, dtype):
    from cnncli.network import build_network

    return build_network(cfg["network"], in_shape, np.random.default_rng([cfg["seed"], 1]), dtype)


if __name__ == "__main__":
    sys.exit(main())
