#!/usr/bin/env python
"""What cnncli's thread policy costs and gains (cnncli.parallel), in this one process.

1. The cost of applying the policy around a call: an empty function wrapped with
   ``@applied`` called from outside cnncli (it sets and restores both OpenBLAS copies' thread
   counts), from inside a ``threads`` block (the pool's choice looked up), from inside a cnncli
   call (a thread-local counter), and unwrapped.
2. The seed MNIST network's 2304x256 dense layer, forward plus the fused backward (its three
   products, each in 2 fixed blocks), batch 16, with the pool (the default) and without
   (``cnncli.threads(1)``): the same arithmetic, run side by side or one block after the other.
3. That layer's two update blocks in two threads at once, through SciPy's BLAS wrapper and
   through the ctypes CBLAS call cnncli uses: whether the calls really run side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py [--busy]

Medians of ``--repeat`` rounds, the two settings interleaved; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from busy import spinning


def per_call(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9, help="rounds (the median is shown)")
    ap.add_argument("--calls", type=int, default=200, help="layer passes per round")
    ap.add_argument("--always-pool", action="store_true",
                    help="run every batch on the pool, never alone (to see what it does on a busy machine)")
    ap.add_argument("--busy", type=int, nargs="?", const=1, default=0,
                    help="keep this many other processes spinning meanwhile (default 1)")
    args = ap.parse_args(argv)
    with spinning(args.busy):
        measure(args)


def measure(args):

    import cnncli
    from cnncli import parallel
    from cnncli.layers import Dense, dense

    split_bytes = dense.SPLIT_BYTES

    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"cnncli's pool: {parallel.pool_workers(None)} thread(s) beside the caller"
          + (f"; {args.busy} other process(es) spinning" if args.busy else "")
          + ("; every batch on the pool" if args.always_pool else ""))

    @parallel.applied
    def empty():
        pass

    @parallel.applied
    def outer(n):  # a cnncli call making n nested ones
        return per_call(empty, n)

    def plain():
        pass

    parallel._find_libs()
    if args.always_pool:
        parallel._Choices.pooled = lambda self, timing: True
    rounds = {"outermost @applied call": [], "outermost, inside a threads block": [],
              "nested @applied call": [], "plain call": []}
    for _ in range(args.repeat):
        rounds["outermost @applied call"].append(per_call(empty, 20_000))
        with cnncli.threads(None):
            rounds["outermost, inside a threads block"].append(per_call(empty, 20_000))
        rounds["nested @applied call"].append(outer(20_000))
        rounds["plain call"].append(per_call(plain, 20_000))
    libs = ", ".join(f"{'SciPy' if scipy else 'NumPy'}'s BLAS at {get()} threads outside"
                     for get, _, scipy in parallel._find_libs())
    print(f"\npolicy overhead per call ({libs}):")
    for name, v in rounds.items():
        print(f"  {name:34} {1e6 * statistics.median(v):6.2f} us")

    print(f"\n2304x256 dense layer, batch 16, forward + fused backward (3 products in 2 blocks each), "
          f"median of {args.repeat} rounds of {args.calls}:")
    for dtype in (np.float64, np.float32):
        layer = Dense(2304, 256, rng=np.random.default_rng(0), dtype=dtype)
        whole = layer.blocks() is None  # below dense.SPLIT_BYTES: cnncli does not split it
        dense.SPLIT_BYTES = 0  # split it here anyway, to show what the pool would give
        layer.needs_input_grad = True
        x = np.random.default_rng(1).random((16, 2304)).astype(dtype)
        d = np.random.default_rng(2).standard_normal((16, 256)).astype(dtype)

        def step():
            layer.forward(x)
            layer.backward_sgd(d, 1e-12)

        times = {1: [], None: []}
        for policy in times:
            with cnncli.threads(policy):
                per_call(step, 20)  # warm-up (and the pool's threads started)
        for _ in range(args.repeat):
            for policy in times:
                with cnncli.threads(policy):
                    times[policy].append(per_call(step, args.calls))
        one, pool = (1e6 * statistics.median(times[k]) for k in (1, None))
        print(f"  {np.dtype(dtype).name}: threads(1) {one:7.1f} us, pool {pool:7.1f} us, {one / pool:.2f}x"
              + ("  (cnncli leaves this layer whole: split here only to measure)" if whole else ""))
        dense.SPLIT_BYTES = split_bytes
    update_blocks(args.repeat)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def update_blocks(repeat, calls=50):
    """The seed layer's two float64 update blocks (``W[rows] += alpha * x[:, rows].T @ dout``)
    in two Python threads at once against one after the other, through SciPy's f2py wrapper and
    through the CBLAS call cnncli makes by ctypes (``cnncli/blas.py``)."""
    import threading

    import cnncli
    from cnncli import blas

    blas.load()
    rng = np.random.default_rng(0)
    w, x, d = rng.random((2304, 256)), rng.random((16, 2304)), rng.random((16, 256))
    halves = [(np.ascontiguousarray(x[:, :1152]), w[:1152]), (np.ascontiguousarray(x[:, 1152:]), w[1152:])]

    def run(gemm, side_by_side):
        def block(i):
            for _ in range(calls):
                gemm(-1e-12, halves[i][0], d, halves[i][1])
        start = time.perf_counter()
        if side_by_side:
            other = threading.Thread(target=block, args=(1,))
            other.start()
            block(0)
            other.join()
        else:
            block(0)
            block(1)
        return (time.perf_counter() - start) / calls

    print(f"\nthe 2 float64 update blocks ({calls} times each), median of {repeat} rounds:")
    with cnncli.threads(1):  # BLAS at 1 thread; the two Python threads are the only parallelism
        for name, gemm in (("SciPy's wrapper", blas._FUNCS["gemm", "d"]),
                           ("ctypes (CBLAS)", blas._CBLAS.get(("gemm", "d")))):
            if gemm is None:
                print(f"  {name}: no CBLAS symbol found")
                continue
            alone = statistics.median(run(gemm, False) for _ in range(repeat))
            both = statistics.median(run(gemm, True) for _ in range(repeat))
            print(f"  {name:16} one after the other {1e6 * alone:7.1f} us, two threads "
                  f"{1e6 * both:7.1f} us: {alone / both:.2f}x")


if __name__ == "__main__":
    main()
