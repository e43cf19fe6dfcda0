#!/usr/bin/env python
"""Ratios measured in one process: the README's API loop against the fused step the trainer
runs, and cnncli's default thread policy against ``threads(1)``, each pair alternating in
short chunks so that the machine's drifting load falls alike on both sides.

On a shared machine the fresh-process benchmark (``bench_train.py``) spreads by tens of percent
between processes; alternating chunks inside one process shows a ratio that the spread hides.
It is not a comparison with another tool (that needs a process per side, as a user runs them).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_inprocess.py [--busy]

The seed's MNIST network (``configs/mnist.yaml``) at batch 16 on random images; the two loops
train separate copies. Prints the median ms/step of each loop and policy, and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import numpy as np

from busy import spinning

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float64,float32")
    ap.add_argument("--rounds", type=int, default=30, help="chunks per loop and policy")
    ap.add_argument("--steps", type=int, default=30, help="steps per chunk")
    ap.add_argument("--busy", type=int, nargs="?", const=1, default=0,
                    help="keep this many other processes spinning meanwhile (default 1)")
    args = ap.parse_args(argv)
    with spinning(args.busy):
        print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
              + (f"; {args.busy} other process(es) spinning" if args.busy else ""))
        for dtype in args.dtype.split(","):
            measure(np.dtype(dtype), args.rounds, args.steps)
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def measure(dtype, rounds, steps):
    import yaml

    import cnncli
    from cnncli.losses import MSELoss
    from cnncli.network import build_network
    from cnncli.optim import SGD

    cfg = yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text())
    lr = cfg["training"]["learning_rate"]
    rng = np.random.default_rng(0)
    nets = {name: build_network(cfg["network"], (1, 28, 28), np.random.default_rng(1), dtype)
            for name in ("fused", "api")}
    loss, opt = MSELoss(), SGD(lr)
    xs = rng.random((64, 16, 1, 28, 28)).astype(dtype)
    ys = np.eye(10, dtype=dtype)[rng.integers(0, 10, (64, 16))]

    def fused(n):  # what the trainer runs with plain SGD
        net = nets["fused"]
        for i in range(n):
            out = net.forward(xs[i % 64])
            loss(out, ys[i % 64])
            net.backward_sgd(loss.gradient(out, ys[i % 64]), lr)

    def api(n):  # the README's loop
        net = nets["api"]
        for i in range(n):
            out = net.forward(xs[i % 64])
            loss(out, ys[i % 64])
            net.backward(loss.gradient(out, ys[i % 64]))
            opt.step(net)

    def chunk(loop, policy):
        # the default: nothing set, as a user writes it
        with contextlib.nullcontext() if policy == "default" else cnncli.threads(1):
            loop(2)
            start = time.perf_counter()
            loop(steps)
        return 1e3 * (time.perf_counter() - start) / steps

    times = {(loop, policy): [] for loop in ("fused", "api") for policy in ("default", "threads(1)")}
    for _ in range(rounds):
        for loop, policy in times:
            times[loop, policy].append(chunk(fused if loop == "fused" else api, policy))
    med = {key: statistics.median(v) for key, v in times.items()}
    for (loop, policy), m in med.items():
        label = "fused step (the trainer's)" if loop == "fused" else "README API loop"
        print(f"{dtype.name:8} {label:27} {policy:11} {m:7.3f} ms/step")
    for policy in ("default", "threads(1)"):
        pairs = [a / f for a, f in zip(times["api", policy], times["fused", policy])]
        print(f"{dtype.name:8} API loop / fused step, {policy}: {med['api', policy] / med['fused', policy]:.2f}"
              f" (median of the chunk-by-chunk ratios {statistics.median(pairs):.2f})")
    for loop in ("fused", "api"):
        print(f"{dtype.name:8} {loop}: threads(1) / default = "
              f"{med[loop, 'threads(1)'] / med[loop, 'default']:.2f}")


if __name__ == "__main__":
    main()
