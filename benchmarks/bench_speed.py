#!/usr/bin/env python
"""How fast cnncli trains and scores several networks, against PyTorch and ONNX Runtime at every
thread count, and how close it comes to the machine's measured matrix-product peak.

Four tables, every number measured in its own fresh Python process:

- **peak**: float32 and float64 ``a @ b`` at 2048x2048 with NumPy's BLAS at 1 thread and at
  all cores (best of a few runs): the machine's matrix-product peak, in GFLOP/s;
- **training**: for each network (``--config``), ms per training step of cnncli's trainer (the
  default thread policy and ``threads 1``) and of PyTorch at every thread count, images/s,
  achieved GFLOP/s (conv and dense products counted from the layer shapes), the % of the peak
  on 1 core and on all cores, and the ratio to PyTorch's fastest; with ``--busy``, the same
  again with other processes keeping cores busy;
- **inference**: ``cnncli.scores`` (what ``cnn predict`` and ``cnn eval`` run) on batches of
  256 against ONNX Runtime running the model ``cnncli.export`` writes, at every
  ``intra_op_num_threads``;
- **memory**: peak resident memory of a short CIFAR-sized training run at batch 128, cnncli
  beside PyTorch.

The networks train on synthetic uint8 images of their input shape: no dataset is read.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_speed.py [--busy]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_speed.py --quick

See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_train import (KNOWN_SHAPES, CnncliRunner, TorchRunner, _fresh_net, blas_lines,
                         environment_lines, load_setup, synthetic)
from bench_train import child as train_child
from busy import spinning

ROOT = Path(__file__).resolve().parents[1]
# the three networks of issue 21, the seed's in both dtypes: PATH[:DTYPE[:BATCH]]
NETWORKS = ["configs/mnist.yaml:float64:16", "configs/mnist.yaml:float32:16",
            "configs/mnist-bn.yaml:float32:64", "benchmarks/cifar-small.yaml:float32:64"]
TABLES = ("train", "infer", "memory")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", metavar="PATH[:DTYPE[:BATCH]]",
                    help="a network to time (repeatable; comma-separated lists too); DTYPE and "
                         "BATCH default to the config's. Default: " + ", ".join(NETWORKS))
    ap.add_argument("--only", choices=TABLES, action="append",
                    help="measure only this table (repeatable); the peak is always measured")
    ap.add_argument("--repeat", type=int, default=5,
                    help="fresh processes per row (the table shows the median of their medians)")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per timed chunk (default: from the step's FLOP count, "
                         "10 to 200)")
    ap.add_argument("--chunks", type=int, default=3,
                    help="timed chunks per process (the process reports their median)")
    ap.add_argument("--busy", type=int, nargs="?", const=1, default=0,
                    help="also time training with this many other processes spinning (default 1)")
    ap.add_argument("--torch-threads", default=None,
                    help="PyTorch and ONNX Runtime thread counts, e.g. '1,2' (default: 1 to the "
                         "number of cores)")
    ap.add_argument("--input-shape", default=None, metavar="C,H,W",
                    help="input shape for configs whose dataset the benchmark does not know "
                         f"(known: {', '.join(KNOWN_SHAPES)}, and any dataset this cnncli loads)")
    ap.add_argument("--classes", type=int, default=None, help="class count with --input-shape")
    ap.add_argument("--infer-batch", type=int, default=256, help="images per scored batch")
    ap.add_argument("--infer-batches", type=int, default=4, help="batches per timed chunk")
    ap.add_argument("--memory-config", default="benchmarks/cifar-small.yaml:float32:128",
                    metavar="PATH[:DTYPE[:BATCH]]", help="the network of the memory table")
    ap.add_argument("--memory-steps", type=int, default=20, help="training steps of that run")
    ap.add_argument("--peak-size", type=int, default=2048, help="n of the n x n peak product")
    ap.add_argument("--peak-runs", type=int, default=5, help="products timed (best counts)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: 1 process a row, 2 steps, one batch, small products "
                         "(the numbers mean nothing)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = ap.parse_args(argv)
    if args.child:
        return args
    if args.quick:
        args.repeat, args.chunks, args.steps = 1, 1, args.steps or 2
        args.infer_batches, args.memory_steps = 1, 2
        args.peak_size, args.peak_runs = min(args.peak_size, 512), 1
    for name in ("repeat", "chunks", "infer_batch", "infer_batches", "memory_steps", "peak_size",
                 "peak_runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be >= 1")
    args.only = set(args.only or TABLES)
    try:
        args.networks = [parse_network(s) for item in (args.config or NETWORKS)
                         for s in item.split(",") if s.strip()]
        args.memory = parse_network(args.memory_config)
        args.torch_threads = ([int(t) for t in args.torch_threads.split(",")]
                              if args.torch_threads else list(range(1, cores() + 1)))
        args.input_shape = ([int(d) for d in args.input_shape.split(",")]
                            if args.input_shape else None)
    except ValueError as exc:
        ap.error(str(exc))
    if any(t < 1 for t in args.torch_threads):
        ap.error("thread counts must be >= 1")
    if args.input_shape is not None and (len(args.input_shape) != 3 or args.classes is None):
        ap.error("--input-shape takes C,H,W and needs --classes")
    return args


def parse_network(text: str) -> dict:
    """'PATH[:DTYPE[:BATCH]]' -> {config (absolute), dtype or None, batch_size or None}."""
    path, *rest = text.strip().split(":")
    if len(rest) > 2:
        raise ValueError(f"{text!r}: expected PATH[:DTYPE[:BATCH]]")
    p = Path(path)
    if not p.exists() and (ROOT / path).exists():
        p = ROOT / path
    if not p.exists():
        raise ValueError(f"{text!r}: no such config file")
    dtype = np.dtype(rest[0]).name if rest and rest[0] else None
    if dtype not in (None, "float32", "float64"):
        raise ValueError(f"{text!r}: the dtype must be float32 or float64")
    batch = int(rest[1]) if len(rest) > 1 and rest[1] else None
    if batch is not None and batch < 1:
        raise ValueError(f"{text!r}: the batch size must be >= 1")
    return {"config": str(p.resolve()), "dtype": dtype, "batch_size": batch, "name": p.stem}


# ----------------------------------------------------------------------------- FLOP count
def flops_per_sample(net) -> tuple[int, int]:
    """(forward, backward) floating-point operations per sample of the network's matrix
    products, counted from the layer shapes: a conv2d forward is 2*C_out*C_in*K*K*P*Q (P x Q its
    output), a dense forward 2*in*out; the backward pass is twice the forward (weight gradient
    and input gradient), except for the first layer, whose input gradient is never computed.
    Bias, batch norm, activation, pooling, loss and update work is not counted."""
    shape, fwd, bwd = net.input_shape, 0, 0
    for i, layer in enumerate(net.layers):
        out = layer.output_shape(shape)
        if layer.type_name == "conv2d":
            k = layer.kernel_size
            f = 2 * layer.out_channels * layer.in_channels * k * k * out[1] * out[2]
        elif layer.type_name == "dense":
            f = 2 * layer.in_features * layer.out_features
        else:
            f = 0
        fwd += f
        bwd += f if i == 0 else 2 * f
        shape = out
    return fwd, bwd


# ----------------------------------------------------------------------------- children
def _setup(spec):
    cfg, in_shape, n_classes, _ = load_setup(spec["config"], spec["batch_size"],
                                             spec.get("input_shape"), spec.get("classes"))
    dtype = np.dtype(spec["dtype"] or cfg["training"]["dtype"])
    cfg["training"]["dtype"] = dtype.name
    return cfg, in_shape, n_classes, dtype


def peak_child(spec: dict) -> dict:
    """GFLOP/s of the best of ``runs`` n x n products per dtype, BLAS at ``threads``."""
    from threadpoolctl import threadpool_limits

    n, out = spec["size"], {}
    with threadpool_limits(limits=spec["threads"], user_api="blas"):
        for dtype in ("float32", "float64"):
            rng = np.random.default_rng(0)
            a = rng.standard_normal((n, n)).astype(dtype)
            b = rng.standard_normal((n, n)).astype(dtype)
            c = a @ b  # warm-up: threads started, pages touched
            best = float("inf")
            for _ in range(spec["runs"]):
                start = time.perf_counter()
                np.matmul(a, b, out=c)
                best = min(best, time.perf_counter() - start)
            out[dtype] = 2 * n**3 / best / 1e9
        return {"gflops": out, "blas": blas_lines()}


def infer_child(spec: dict) -> dict:
    """Seconds per scored batch of ``cnncli.scores`` (impl cnncli) or of ONNX Runtime on the
    exported model (impl ort), over ``chunks`` passes of ``batches`` batches."""
    import cnncli

    cfg, in_shape, n_classes, dtype = _setup(spec)
    net = _fresh_net(cfg, in_shape, dtype)
    bs, batches = spec["batch"], spec["batches"]
    data = synthetic(in_shape, n_classes, bs * batches, seed=3)
    x = data.x_train  # uint8, as a dataset stores images
    meta = {"input_scale": data.scale, "dtype": dtype.name}
    out = {}
    if spec["impl"] == "cnncli":
        threads = spec["threads"]
        policy = cnncli.threads(threads) if threads is not None else contextlib.nullcontext()

        def run():
            with policy:
                return cnncli.scores(net, x, meta, batch_size=bs)
        with cnncli.threads(threads):
            out["blas"] = blas_lines()
    else:
        import onnxruntime as ort

        from cnncli.export import to_onnx

        model = to_onnx(net, {**meta, "input_shape": list(in_shape), "pixel_max": 255.0,
                              "class_names": [str(i) for i in range(n_classes)]})  # float32
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = spec["threads"], 1
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])

        def run():  # from the stored uint8 images too: the cast is part of the work
            return np.concatenate([sess.run(None, {"input": x[i:i + bs].astype(np.float32)})[0]
                                   for i in range(0, len(x), bs)])
        ours = cnncli.scores(net, x, meta, batch_size=bs)
        out["agreement"] = float(np.abs(run() - ours).max())  # both score the same model
        out["blas"] = [f"  onnxruntime {ort.__version__}: intra_op_num_threads {spec['threads']}, "
                       "inter_op_num_threads 1"]
    run()  # warm-up
    times = []
    for _ in range(spec["chunks"]):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / batches)
    out["times"] = times
    return out


def memory_child(spec: dict) -> dict:
    """Peak resident memory (ru_maxrss) before and after ``steps`` training steps."""
    cfg, in_shape, n_classes, dtype = _setup(spec)
    bs = cfg["training"]["batch_size"]
    data = synthetic(in_shape, n_classes, spec["steps"] * bs, seed=1)
    if spec["impl"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
        runner = TorchRunner(cfg, _fresh_net(cfg, in_shape, dtype), data, data, dtype)
    else:
        runner = CnncliRunner(cfg, "fast", data, data, spec["threads"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runner.run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"before": before * scale, "peak": peak * scale}


def child(spec: dict) -> dict:
    kind = spec.pop("kind")
    if kind == "peak":
        return peak_child(spec)
    if kind == "train":
        return train_child(spec)
    if kind == "infer":
        return infer_child(spec)
    return memory_child(spec)


def run_child(spec: dict) -> dict:
    """``child(spec)`` in a fresh interpreter with this one's environment."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"measurement {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(cases: dict, repeat: int, title: str, setups: dict) -> dict:
    """Run every case ``repeat`` times, interleaved (another order each round); returns
    case -> list of per-process results."""
    results = {key: [] for key in cases}
    keys = list(cases)
    for rnd in range(repeat):
        k = rnd % len(keys)
        for key in keys[k:] + keys[:k]:
            res = run_child(dict(cases[key]))
            results[key].append(res)
            if "times" in res:
                shown = f"{1e3 * statistics.median(res['times']):.3f} ms"
            elif "gflops" in res:
                shown = ", ".join(f"{d} {v:.1f} GFLOP/s" for d, v in res["gflops"].items())
            else:
                shown = f"{res['peak'] / 2**20:.0f} MiB peak"
            print(f"  {title} round {rnd + 1}/{repeat}: {' / '.join(map(str, key))}: {shown}",
                  file=sys.stderr, flush=True)
            if "blas" in res:
                setups.setdefault(tuple(res["blas"]), set()).add(key[-1])
    return results


# ----------------------------------------------------------------------------- tables
def table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown table (the lines print as they paste)."""
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def fmt(v: float) -> str:
    """Three significant digits, no exponent for everyday sizes."""
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def thread_label(impl: str, threads) -> str:
    if impl == "torch":
        return f"PyTorch, {threads} thread{'s' if threads > 1 else ''}"
    if impl == "ort":
        return f"ONNX Runtime, {threads} thread{'s' if threads > 1 else ''}"
    what = {"fast": "cnncli trainer", "cnncli": "cnncli.scores"}[impl]
    return f"{what}, " + ("default" if threads is None else f"threads {threads}")


def median_time(results) -> float:
    return statistics.median(statistics.median(r["times"]) for r in results)


def describe_networks(networks, args) -> dict:
    """name -> what the tables need of each network, built here without training."""
    out = {}
    for nw in networks:
        cfg, in_shape, n_classes, _ = load_setup(nw["config"], nw["batch_size"],
                                                 args.input_shape, args.classes)
        dtype = nw["dtype"] or cfg["training"]["dtype"]
        net = _fresh_net(cfg, in_shape, np.dtype(dtype))
        fwd, bwd = flops_per_sample(net)
        bs = cfg["training"]["batch_size"]
        key = f"{nw['name']} {dtype} b{bs}"
        out[key] = {**nw, "dtype": dtype, "batch_size": bs, "in_shape": in_shape,
                    "fwd": fwd, "bwd": bwd, "step_flops": bs * (fwd + bwd),
                    "params": net.num_params(),
                    "layers": ", ".join(layer.type_name for layer in net.layers)}
    return out


def train_tables(nets, args, peak, setups, have_torch):
    """The training cases of every network, measured idle (and busy with --busy)."""
    cases = {}
    for key, nw in nets.items():
        steps = args.steps or max(10, min(200, int(20e9 / max(nw["step_flops"], 1))))
        base = {"kind": "train", "config": nw["config"], "batch_size": nw["batch_size"],
                "dtype": nw["dtype"], "steps": steps, "chunks": args.chunks,
                "input_shape": args.input_shape, "classes": args.classes}
        for t in (None, 1):
            cases[(key, thread_label("fast", t))] = {**base, "impl": "fast", "threads": t}
        if have_torch:
            for t in args.torch_threads:
                cases[(key, thread_label("torch", t))] = {**base, "impl": "torch", "threads": t}
    runs = [("idle", measure(cases, args.repeat, "train", setups))]
    checks = []
    if have_torch:  # both sides do the same work: 3 identical steps, parameters compared, in
        # float64 (where rounding stays at ~1e-16) and in the row's dtype (float32's rounding
        # differences grow with each step)
        for key, nw in nets.items():
            found = []
            for dtype in dict.fromkeys(("float64", nw["dtype"])):
                spec = {"kind": "train", "impl": "check", "config": nw["config"],
                        "batch_size": nw["batch_size"], "dtype": dtype,
                        "input_shape": args.input_shape, "classes": args.classes}
                found.append(f"{run_child(spec)['check']:.1e} in {dtype}")
            checks.append(f"- {key}: cnncli's and PyTorch's parameters after 3 identical steps "
                          f"differ by {', '.join(found)} (relative to each layer's largest; "
                          "dropout off)")
    if args.busy:
        with spinning(args.busy):
            runs.append((f"{args.busy} busy", measure(cases, args.repeat, "train busy", setups)))
    n_all = max(peak)
    head = ["network", "dtype", "batch", "implementation", "ms/step", "process medians (ms)",
            "images/s", "GFLOP/s", "% of 1-core peak", f"% of {n_all}-core peak",
            "vs PyTorch's fastest"]
    lines, summary = [], []
    for state, results in runs:
        rows = []
        for key, nw in nets.items():
            mine = {k: v for k, v in results.items() if k[0] == key}
            times = {k[1]: median_time(v) for k, v in mine.items()}
            torch_rows = [name for name in times if name.startswith("PyTorch")]
            best = min(torch_rows, key=times.get) if torch_rows else None
            for name, t in times.items():
                gflops = nw["step_flops"] / t / 1e9
                spread = " ".join(f"{1e3 * statistics.median(r['times']):.2f}"
                                  for r in sorted(mine[(key, name)],
                                                  key=lambda r: statistics.median(r["times"])))
                vs = ("fastest" if name == best else
                      f"{t / times[best]:.2f}x" if best else "-")
                rows.append([nw["name"], nw["dtype"], nw["batch_size"], name, fmt(1e3 * t),
                             spread, fmt(nw["batch_size"] / t), fmt(gflops),
                             f"{100 * gflops / peak[1][nw['dtype']]:.1f}",
                             f"{100 * gflops / peak[n_all][nw['dtype']]:.1f}", vs])
            default, single = times[thread_label("fast", None)], times[thread_label("fast", 1)]
            line = (f"- {state}: {key}: cnncli default {fmt(1e3 * default)} ms/step, "
                    f"default / threads 1 = {default / single:.2f}")
            if best:
                line += f", default / PyTorch's fastest ({best}) = {default / times[best]:.2f}"
            summary.append(line)
        title = ("Training, idle" if state == "idle" else
                 f"Training with {args.busy} other process(es) keeping a core busy (--busy)")
        lines += ["", f"### {title}", ""] + table(head, rows)
    return lines + [""] + summary + checks


def infer_table(nets, args, setups, have_ort):
    cases = {}
    for key, nw in nets.items():
        base = {"kind": "infer", "config": nw["config"], "batch_size": nw["batch_size"],
                "dtype": nw["dtype"], "batch": args.infer_batch, "batches": args.infer_batches,
                "chunks": args.chunks, "input_shape": args.input_shape, "classes": args.classes}
        for t in (None, 1):
            cases[(key, thread_label("cnncli", t))] = {**base, "impl": "cnncli", "threads": t}
        if have_ort:
            for t in args.torch_threads:
                cases[(key, thread_label("ort", t))] = {**base, "impl": "ort", "threads": t}
    results = measure(cases, args.repeat, "inference", setups)
    bs = args.infer_batch
    head = ["network", "dtype", "implementation", f"ms per batch of {bs}", "images/s",
            "µs/image", "GFLOP/s", "vs ONNX Runtime's fastest"]
    rows, notes = [], []
    for key, nw in nets.items():
        mine = {k[1]: median_time(v) for k, v in results.items() if k[0] == key}
        ort_rows = [name for name in mine if name.startswith("ONNX")]
        best = min(ort_rows, key=mine.get) if ort_rows else None
        for name, t in mine.items():
            dtype = "float32" if name.startswith("ONNX") else nw["dtype"]
            vs = "fastest" if name == best else f"{t / mine[best]:.2f}x" if best else "-"
            rows.append([nw["name"], dtype, name, fmt(1e3 * t), fmt(bs / t), fmt(1e6 * t / bs),
                         fmt(bs * nw["fwd"] / t / 1e9), vs])
        agree = [r["agreement"] for k, v in results.items() if k[0] == key for r in v
                 if "agreement" in r]
        if agree:
            notes.append(f"- {key}: cnncli and ONNX Runtime scores differ by at most "
                         f"{max(agree):.1e}")
    return ["", "### Inference: scores of batches of " + str(bs), ""] + table(head, rows) \
        + [""] + notes


def memory_table(args, setups, have_torch):
    nw = args.memory
    cfg, in_shape, _, _ = load_setup(nw["config"], nw["batch_size"], args.input_shape,
                                     args.classes)
    bs = cfg["training"]["batch_size"]
    dtype = nw["dtype"] or cfg["training"]["dtype"]
    base = {"kind": "memory", "config": nw["config"], "batch_size": bs, "dtype": dtype,
            "steps": args.memory_steps, "input_shape": args.input_shape, "classes": args.classes}
    cases = {(thread_label("fast", t),): {**base, "impl": "fast", "threads": t}
             for t in (None, 1)}
    if have_torch:
        cases.update({(thread_label("torch", t),): {**base, "impl": "torch", "threads": t}
                      for t in args.torch_threads})
    results = measure(cases, args.repeat, "memory", setups)
    mib = 2**20
    peaks = {k[0]: statistics.median(r["peak"] for r in v) / mib for k, v in results.items()}
    befores = {k[0]: statistics.median(r["before"] for r in v) / mib for k, v in results.items()}
    torch_rows = [name for name in peaks if name.startswith("PyTorch")]
    least = min(torch_rows, key=peaks.get) if torch_rows else None
    head = ["implementation", "peak RSS (MiB)", "before training (MiB)", "growth (MiB)",
            "vs PyTorch's smallest peak"]
    rows = [[name, f"{peaks[name]:.0f}", f"{befores[name]:.0f}",
             f"{peaks[name] - befores[name]:.0f}",
             "smallest" if name == least else f"{peaks[name] / peaks[least]:.2f}x" if least
             else "-"] for name in peaks]
    title = (f"Memory: {nw['name']} {dtype}, batch {bs}, {args.memory_steps} training steps, "
             f"input {'x'.join(map(str, in_shape))}")
    return ["", f"### {title}", ""] + table(head, rows)


def shown_path(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    torch_v, ort_v = installed("torch"), installed("onnxruntime")
    extra = ", ".join(f"{n} {v}" for n, v in (("torch", torch_v), ("onnxruntime", ort_v)) if v)
    print("\n".join(environment_lines(extra)))
    if not torch_v:
        print("  note: PyTorch is not installed (pip install '.[bench]'): no PyTorch rows")
    if not ort_v:
        print("  note: onnxruntime is not installed (pip install '.[onnx]'): no ONNX Runtime rows")
    if args.quick:
        print("  note: --quick: a smoke test, the numbers mean nothing")
    nets = describe_networks(args.networks, args)
    print("\nNetworks (FLOP per sample of the conv and dense products; a training step is "
          "batch x (forward + backward)):")
    for key, nw in nets.items():
        print(f"- {key} ({shown_path(nw['config'])}): "
              f"input {'x'.join(map(str, nw['in_shape']))}, {nw['params']:,} parameters, "
              f"forward {nw['fwd'] / 1e6:.2f} MFLOP, backward {nw['bwd'] / 1e6:.2f} MFLOP, "
              f"training step {nw['step_flops'] / 1e9:.3g} GFLOP; {nw['layers']}")
    setups: dict = {}

    threads = sorted({1, cores()})
    peak_cases = {(f"{t} thread{'s' if t > 1 else ''}",): {"kind": "peak", "threads": t,
                                                           "size": args.peak_size,
                                                           "runs": args.peak_runs}
                  for t in threads}
    res = measure(peak_cases, 1, "peak", setups)
    peak = {t: res[key][0]["gflops"] for t, key in zip(threads, peak_cases)}
    n = args.peak_size
    out = ["", f"### Matrix-product peak: NumPy `a @ b` at {n}x{n}, best of {args.peak_runs}, "
                "GFLOP/s", ""]
    out += table(["dtype"] + [f"BLAS {t} thread{'s' if t > 1 else ''}" for t in threads],
                 [[d] + [fmt(peak[t][d]) for t in threads] for d in ("float32", "float64")])
    print("\n".join(out), flush=True)

    if "train" in args.only:
        print("\n".join(train_tables(nets, args, peak, setups, bool(torch_v))), flush=True)
    if "infer" in args.only:
        print("\n".join(infer_table(nets, args, setups, bool(ort_v))), flush=True)
    if "memory" in args.only:
        print("\n".join(memory_table(args, setups, bool(torch_v))), flush=True)

    print("\nBLAS in each process (inside cnncli's calls for cnncli), threadpoolctl:")
    for lines, users in setups.items():
        print(f"- {', '.join(sorted(users))}:")
        print("\n".join(lines))
    print(f"\nmedian over {args.repeat} fresh process(es) per row of each process's median of "
          f"{args.chunks} timed chunk(s); load average after: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
