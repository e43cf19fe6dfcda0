"""benchmarks/bench_speed.py: the FLOP count, the PyTorch mapping of every layer type, and a
``--quick`` run of the whole script on one small network (its tables' headers, every row's
numbers). Nothing here checks a speed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed (it is in "
                                 "'.[bench]', not '.[test]'): pip install -e '.[bench]'")
needs_both = pytest.mark.skipif(
    not (HAVE_TORCH and HAVE_ORT),
    reason="the benchmark compares with PyTorch and ONNX Runtime; not installed: "
           + ", ".join(n for n, ok in (("torch (pip install -e '.[bench]')", HAVE_TORCH),
                                       ("onnxruntime (pip install -e '.[onnx]')", HAVE_ORT))
                       if not ok))

CONFIGS = ["configs/mnist.yaml", "configs/mnist-bn.yaml", "benchmarks/cifar-small.yaml"]


def test_flop_count_from_the_layer_shapes():
    """The CIFAR-sized network: 58.4 MFLOP forward per sample (conv 3->32, 32->32 at 32x32,
    32->64, 64->64 at 16x16, 64->128 at 8x8, dense 128->10), backward twice that less the first
    conv's input gradient; the seed's network 1.37 MFLOP forward."""
    from bench_speed import flops_per_sample
    from bench_train import _fresh_net, load_setup

    cfg, shape, classes, _ = load_setup(ROOT / "benchmarks" / "cifar-small.yaml", None)
    assert (shape, classes) == ((3, 32, 32), 10)  # without the dataset
    fwd, bwd = flops_per_sample(_fresh_net(cfg, shape, np.float32))
    convs = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8)]
    expect = sum(2 * o * i * 9 * s * s for i, o, s in convs) + 2 * 128 * 10
    assert fwd == expect and round(fwd / 1e6, 1) == 58.4
    assert bwd == 2 * fwd - 2 * 32 * 3 * 9 * 32 * 32

    cfg, shape, _, _ = load_setup(ROOT / "configs" / "mnist.yaml", None)
    fwd, bwd = flops_per_sample(_fresh_net(cfg, shape, np.float64))
    dense = 2 * (2304 * 256 + 256 * 128 + 128 * 32 + 32 * 10)
    assert fwd == 2 * 4 * 25 * 24 * 24 + dense and bwd == 2 * 4 * 25 * 24 * 24 + 2 * dense


def test_input_shape_override():
    from bench_train import load_setup

    cfg, shape, classes, _ = load_setup(ROOT / "benchmarks" / "cifar-small.yaml", 8,
                                        input_shape=[3, 16, 16], n_classes=10)
    assert shape == (3, 16, 16) and classes == 10 and cfg["training"]["batch_size"] == 8


@needs_torch
@pytest.mark.parametrize("config", CONFIGS)
def test_torch_model_computes_what_cnncli_computes(config):
    """Every layer type of the three benchmark networks maps to a torch module holding the same
    weights: the same outputs in float64, in train mode (batch statistics; dropout off) and in
    eval mode (running statistics, updated by the train-mode pass alike)."""
    import torch
    from bench_train import _fresh_net, load_setup, torch_model

    cfg, shape, _, _ = load_setup(ROOT / config, None)
    cfg["network"] = [{**s, "p": 0.0} if s["type"] == "dropout" else s for s in cfg["network"]]
    net = _fresh_net(cfg, shape, np.float64)
    model = torch_model(net, np.float64)
    x = np.random.default_rng(0).random((6, *shape))
    for mode in ("train", "eval"):
        getattr(net, mode)()
        getattr(model, mode)()
        ours = net.forward(x)
        with torch.no_grad():
            theirs = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12, err_msg=mode)


def _tables(text: str) -> dict[str, list[list[str]]]:
    """'### title' -> the rows (cells) of the Markdown table below it, header first."""
    tables, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = []
        elif line.startswith("|") and title is not None and not line.startswith("|---"):
            tables[title].append([c.strip() for c in line.strip("|").split("|")])
    return tables


NUMBER = re.compile(r"^-?\d+(\.\d+)?(e[+-]?\d+)?$")
RATIO = re.compile(r"^(\d+\.\d+x|fastest|smallest)$")


def _check(rows, numeric: list[str], ratio: str, n_rows: int):
    head, body = rows[0], rows[1:]
    assert len(body) == n_rows, rows
    for row in body:
        assert len(row) == len(head), row
        cells = dict(zip(head, row))
        for col in numeric:
            assert NUMBER.match(cells[col]), (col, row)
        assert RATIO.match(cells[ratio]), (ratio, row)
    return head, body


@pytest.mark.slow
@needs_both
def test_quick_run_prints_every_table(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_speed.py"), "--quick",
         "--config", "configs/mnist.yaml:float32", "--memory-config", "configs/mnist.yaml:float32:16",
         "--torch-threads", "1,2"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    tables = _tables(out)
    titles = list(tables)
    assert [t.split(":")[0] for t in titles] == ["Matrix-product peak", "Training, idle",
                                                 "Inference", "Memory"], titles

    head, body = tables[titles[0]][0], tables[titles[0]][1:]
    assert head[0] == "dtype" and [r[0] for r in body] == ["float32", "float64"]
    assert all(NUMBER.match(c) for r in body for c in r[1:]), body

    head, body = _check(tables[titles[1]], ["batch", "ms/step", "images/s", "GFLOP/s",
                                            "% of 1-core peak"], "vs PyTorch's fastest", 4)
    assert head[:5] == ["network", "dtype", "batch", "implementation", "ms/step"]
    assert any(h.startswith("% of") and h.endswith("-core peak") and "1-core" not in h
               for h in head)
    assert [r[3] for r in body] == ["cnncli trainer, default", "cnncli trainer, threads 1",
                                    "PyTorch, 1 thread", "PyTorch, 2 threads"]
    assert sum(r[-1] == "fastest" for r in body) == 1

    head, body = _check(tables[titles[2]], ["ms per batch of 256", "images/s", "µs/image",
                                            "GFLOP/s"], "vs ONNX Runtime's fastest", 4)
    assert [r[2] for r in body] == ["cnncli.scores, default", "cnncli.scores, threads 1",
                                    "ONNX Runtime, 1 thread", "ONNX Runtime, 2 threads"]

    head, body = _check(tables[titles[3]], ["peak RSS (MiB)", "before training (MiB)",
                                            "growth (MiB)"], "vs PyTorch's smallest peak", 4)
    assert "batch 16" in titles[3]

    assert "default / threads 1 =" in out and "scores differ by at most" in out
    m = re.search(r"parameters after 3 identical steps differ by (\S+) in float64, (\S+) in "
                  r"float32 ", out)
    assert m and float(m.group(1)) < 1e-12 and float(m.group(2)) < 1e-3, out  # the same work
    assert re.search(r"kernel \w+, num_threads", out)  # the BLAS kernel in use is printed
