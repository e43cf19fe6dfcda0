"""One thread policy for every entry point (cnncli.parallel): the Python API runs BLAS as
``cnn train`` does without any environment variable, code outside cnncli's calls keeps its own
settings, and cnncli's pool of fixed blocks gives bit-identical results whether it runs or not."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

import cnncli
from cnncli import MSELoss, SGD, build_network, parallel
from cnncli.errors import ConfigError
from conftest import ROOT, SEED_MNIST_NET

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# The README's API loop on the seed's MNIST network, with a layer registered for the purpose
# that reads threadpoolctl from inside cnncli's arithmetic, and reads outside it.
API_LOOP = textwrap.dedent("""
    import json, sys
    import numpy as np
    from threadpoolctl import threadpool_info

    import cnncli
    from cnncli import Network, SGD, MSELoss, build_network, register
    from cnncli.layers import Layer

    def counts():
        return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas"}

    seen = {"inside": [], "inside_threads_2": [], "inside_threads_1": []}
    where = "inside"

    @register("probe")
    class Probe(Layer):
        def output_shape(self, in_shape):
            return in_shape
        def forward(self, x):
            seen[where].append(counts())
            return x
        def backward(self, dout):
            seen[where].append(counts())
            return dout

    if sys.argv[2] != "default":  # the user's own setting, made before cnncli computes anything
        from threadpoolctl import threadpool_limits
        threadpool_limits(int(sys.argv[2]), user_api="blas")
    before = counts()
    specs = json.loads(sys.argv[1])
    net = build_network(specs, input_shape=(1, 28, 28), rng=np.random.default_rng(0))
    loss, opt = MSELoss(), SGD(learning_rate=0.1)
    rng = np.random.default_rng(1)
    def step():
        x, y = rng.random((16, 1, 28, 28)), np.eye(10)[rng.integers(0, 10, 16)]
        out = net.forward(x)
        net.backward(loss.gradient(out, y))
        opt.step(net)
        net.backward_sgd(loss.gradient(net.forward(x), y), 0.1)
    for _ in range(3):
        step()
    between = counts()
    where = "inside_threads_2"
    with cnncli.threads(2):
        step()
    where = "inside_threads_1"
    with cnncli.threads(1):
        step()
    print(json.dumps({"before": before, "between": between, "after": counts(), **seen}))
""")


def _scipy_own(path):
    return parallel.is_scipy_vendored(path)


@pytest.mark.parametrize("user", ["default", "3"])
def test_the_readme_api_loop_runs_blas_single_threaded_inside_cnncli_and_leaves_the_rest_alone(user):
    import json

    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    specs = [SEED_MNIST_NET[0], {"type": "probe"}, *SEED_MNIST_NET[1:4], {"type": "probe"},
             *SEED_MNIST_NET[4:]]
    proc = subprocess.run([sys.executable, "-c", API_LOOP, json.dumps(specs), user], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    numpy_libs = [p for p in got["before"] if not _scipy_own(p)]
    assert numpy_libs, got["before"]  # NumPy's BLAS is there, threadpoolctl sees it
    if user != "default":
        assert {got["before"][p] for p in numpy_libs} == {int(user)}
    assert len(got["inside"]) == 3 * 2 * 2 * 2  # 3 steps, 2 passes, 2 forward+backward, 2 probes
    for libs in got["inside"]:
        # The documented default: every BLAS library single-threaded inside cnncli's calls
        # (SciPy's own copy, loaded by cnncli, is among them).
        assert set(libs.values()) == {1}, libs
        assert any(_scipy_own(p) for p in libs), libs
    for libs in got["inside_threads_2"]:
        assert {n for p, n in libs.items() if not _scipy_own(p)} == {2}, libs
        assert {n for p, n in libs.items() if _scipy_own(p)} == {1}, libs
    for libs in got["inside_threads_1"]:
        assert set(libs.values()) == {1}, libs
    # Outside cnncli's calls the process keeps its own setting (OpenBLAS's default: one thread
    # per core).
    for outside in ("between", "after"):
        for path in numpy_libs:
            assert got[outside][path] == got["before"][path], (outside, got)


def _numpy_blas():
    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and not parallel.is_scipy_vendored(lib.filepath)]


def test_a_call_restores_the_callers_thread_counts_even_when_it_fails():
    net = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng(0))
    seen = []
    real = net.layers[2].forward

    def spy(x):
        seen.append([lib.get_num_threads() for lib in _numpy_blas()])
        return real(x)

    net.layers[2].forward = spy
    with threadpool_limits(limits=3, user_api="blas"):
        net.forward(np.zeros((2, 1, 28, 28)))
        with pytest.raises(ValueError):
            net.forward(np.zeros((2, 1, 28, 29)))  # 2400 values for a 2304-input dense layer
        assert {lib.get_num_threads() for lib in _numpy_blas()} == {3}
        with cnncli.threads(2):
            net.forward(np.zeros((2, 1, 28, 28)))
            assert {lib.get_num_threads() for lib in _numpy_blas()} == {2}
        assert {lib.get_num_threads() for lib in _numpy_blas()} == {3}
    ones = [1] * len(_numpy_blas())
    assert seen == [ones, ones, [2] * len(_numpy_blas())]


def test_the_policy_holds_in_any_python_thread():
    # threadpoolctl lets only one Python thread set OpenBLAS's (process-wide) count; the policy
    # must hold for a call from another thread too, e.g. a notebook's or a GUI's worker.
    net = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng(0))
    seen = []
    real = net.layers[2].forward
    net.layers[2].forward = lambda x: seen.append(
        [lib.get_num_threads() for lib in _numpy_blas()]) or real(x)
    with threadpool_limits(limits=3, user_api="blas"):  # this thread now controls OpenBLAS
        worker = threading.Thread(target=net.forward, args=(np.zeros((2, 1, 28, 28)),))
        worker.start()
        worker.join()
        assert {lib.get_num_threads() for lib in _numpy_blas()} == {3}
    assert seen == [[1] * len(_numpy_blas())]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_threads_refuses_anything_but_a_positive_integer_or_none(bad):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1 or None"):
        cnncli.threads(bad)


def _train(dtype, fused, steps=20):
    net = build_network(SEED_MNIST_NET, (1, 28, 28), np.random.default_rng([3, 1]), dtype)
    loss, opt = MSELoss(), SGD(0.1)
    rng = np.random.default_rng([3, 2])
    for _ in range(steps):
        x = rng.random((16, 1, 28, 28)).astype(dtype)
        y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 16)]
        out = net.forward(x)
        if fused:
            net.backward_sgd(loss.gradient(out, y), 0.1)
        else:
            net.backward(loss.gradient(out, y))
            opt.step(net)
    return net


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_pool_gives_bit_identical_parameters_on_or_off(monkeypatch, dtype, fused):
    from cnncli.layers import dense

    # float32 splits only larger layers: split the seed's here too, to check the blocked path
    monkeypatch.setattr(dense, "SPLIT_BYTES", 2**20)
    with cnncli.threads(1):
        off = _train(dtype, fused)
    # On: force one pool thread even on a one-core machine, never backing off on a busy one,
    # and see that it took blocks.
    _fresh_pool(monkeypatch)
    taken = []
    work = parallel._Batch.work

    def counted(batch):
        before = batch.next
        work(batch)
        taken.append((threading.current_thread().name, batch.next > before))

    monkeypatch.setattr(parallel._Batch, "work", counted)
    with cnncli.threads(None):
        on = _train(dtype, fused)
    assert any(name.startswith("cnncli-pool") for name, _ in taken)
    # a batch per step for the forward product; the fused backward's one does both products
    # per block of W's rows (input gradient, then the update), the API loop's backward and
    # step one each
    batches = 2 if fused else 3
    assert sum(1 for name, _ in taken if name == threading.current_thread().name) == 20 * batches
    for key, p in off.params.items():
        assert p.dtype == dtype
        assert p.tobytes() == on.params[key].tobytes(), key


def test_whichever_way_each_call_runs_its_blocks_the_parameters_are_the_same(monkeypatch):
    import random

    with cnncli.threads(1):
        one = _train(np.float64, True)
    _fresh_pool(monkeypatch, always=False)
    coin = random.Random(7)
    monkeypatch.setattr(parallel._Choices, "pooled", lambda self, t: coin.random() < 0.5)
    mixed = _train(np.float64, True)  # no threads block: the README's loop, choices per call
    assert len(parallel._choices.timings) == 2  # Network.forward, Network.backward_sgd
    for key, p in one.params.items():
        assert p.tobytes() == mixed.params[key].tobytes(), key


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_pool(monkeypatch):
    # multiprocessing forks on Linux: the child has none of the parent's threads.
    import multiprocessing

    _fresh_pool(monkeypatch)
    with cnncli.threads(None):
        parent = _train(np.float64, True, steps=2)  # the parent's pool is running
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as workers:
        child = workers.apply_async(_child_params).get(timeout=60)
    for key, p in parent.params.items():
        assert p.tobytes() == child[key], key


def _child_params():
    assert parallel._pool is None  # reset at the fork
    with cnncli.threads(None):
        net = _train(np.float64, True, steps=2)
    assert parallel._pool is not None and parallel._pool.size == 1
    return {key: p.tobytes() for key, p in net.params.items()}


def test_run_blocks_runs_each_block_once_and_never_waits_for_a_stalled_thread(monkeypatch):
    _fresh_pool(monkeypatch)
    release = threading.Event()
    ran = []

    def block(i):
        def run():
            name = threading.current_thread().name
            ran.append((i, name))
            if name.startswith("cnncli-pool"):
                release.wait(10)  # the pool's thread stalls, as if another process held its core
            else:
                time.sleep(0.05)
        return run

    finished = threading.Event()

    def go():
        with cnncli.threads(None):
            parallel.run_blocks([block(i) for i in range(6)])
        finished.set()

    caller = threading.Thread(target=go, name="caller")
    caller.start()
    deadline = time.monotonic() + 10
    while len(ran) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert sorted(i for i, _ in ran) == list(range(6))  # each block once
        on_pool = [i for i, name in ran if name.startswith("cnncli-pool")]
        assert len(on_pool) == 1, ran  # the stalled thread took one; the caller did the rest
        time.sleep(0.1)
        assert not finished.is_set()  # ... and waits only for the block that was started
    finally:
        release.set()
        caller.join(10)
    assert finished.is_set()


def _fresh_pool(monkeypatch, always=True):
    """One pool thread even on a one-core machine, a new pool, and (``always``) every call's
    blocks on the pool, whatever has been measured."""
    monkeypatch.setattr(parallel, "pool_workers", lambda n: 1 if n is None else 0)
    monkeypatch.setattr(parallel, "_pool", None)
    monkeypatch.setattr(parallel, "_choices", parallel._Choices())
    if always:
        monkeypatch.setattr(parallel._Choices, "pooled", lambda self, timing: True)


def test_each_kind_of_call_runs_its_blocks_the_way_that_has_been_faster(monkeypatch):
    _fresh_pool(monkeypatch, always=False)
    ways = []  # per call: its blocks on the pool or not, as decided
    decide = parallel._Choices.pooled
    monkeypatch.setattr(parallel._Choices, "pooled", lambda self, t: ways.append(decide(self, t)) or ways[-1])

    @parallel.applied
    def work(x, alone, pooled):
        """Two blocks that sleep ``alone`` or ``pooled`` seconds, by how they run (a stand-in
        for a layer whose call slows down or speeds up on the pool)."""
        parallel.run_blocks([lambda: time.sleep(pooled if parallel._calls.pooling else alone)] * 2)

    def run(x, calls, alone, pooled):
        ways.clear()
        for _ in range(calls):
            work(x, alone, pooled)
        return list(ways)

    slow_kind, fast_kind = np.zeros(3), np.zeros(4)  # kinds differ by their argument's shape
    # slower on the pool (as when another process holds the other core): three calls each
    # way, then alone, with ever rarer tries of three calls on the pool (from the 32nd, 64th,
    # 128th ... call)
    slow = run(slow_kind, 40, alone=0.001, pooled=0.05)
    # faster on the pool: on the pool, with as rare tries alone
    fast = run(fast_kind, 40, alone=0.05, pooled=0.005)
    # (the first call of a kind runs on the pool untimed: it warms caches up)
    tries = [True] * 3 + [False] * 3
    assert slow[:6] == fast[:6] == tries
    assert slow[6:] == [False] * 25 + [True] * 3 + [False] * 5, slow
    assert fast[6:] == [not way for way in slow[6:]], fast
    timing = parallel._choices.timings
    key = ("test_each_kind_of_call_runs_its_blocks_the_way_that_has_been_faster.<locals>.work", (3,))
    assert timing[key].alone < timing[key].pooled
    key = key[:1] + ((4,),)
    assert timing[key].pooled < timing[key].alone
    with cnncli.threads(1):  # another policy: nothing pooled, nothing timed
        work(slow_kind, 0.0, 0.0)
    assert timing[key[:1] + ((3,),)].count == 39


@pytest.mark.parametrize("lasting", [False, True])
def test_the_pool_is_taken_only_after_winning_two_tries_in_a_row(monkeypatch, lasting):
    _fresh_pool(monkeypatch, always=False)
    ways = []  # per call: its blocks on the pool or not, as decided
    decide = parallel._Choices.pooled
    monkeypatch.setattr(parallel._Choices, "pooled", lambda self, t: ways.append(decide(self, t)) or ways[-1])

    def pooled_seconds():  # the pool turns fast at the 32nd call, for one try or for good
        fast = len(ways) >= 32 if lasting else 32 <= len(ways) <= 34
        return 0.0005 if fast else 0.02

    @parallel.applied
    def work(x):
        parallel.run_blocks([lambda: time.sleep(pooled_seconds() if parallel._calls.pooling else 0.002)] * 2)

    for _ in range(71):  # the first call of a kind runs untimed
        work(np.zeros(5))
    tries, alone = [True] * 3 + [False] * 3, [False] * 25
    # the pool's first win (calls 32-34) brings the next try forward to call 64, not the pool
    assert ways[:63] == tries + alone + [True] * 3 + [False] * 29, ways
    if lasting:  # it wins again: from then on the pool
        assert ways[63:] == [True] * 7, ways
    else:  # it loses: alone, the lucky try forgotten
        assert ways[63:] == [True] * 3 + [False] * 4, ways


def test_an_error_in_a_block_reaches_the_caller(monkeypatch):
    _fresh_pool(monkeypatch)

    def boom():
        raise FloatingPointError("in a block")

    ran = []
    with cnncli.threads(None), pytest.raises(FloatingPointError, match="in a block"):
        parallel.run_blocks([boom, lambda: ran.append(1), boom, lambda: ran.append(2)])
    assert sorted(ran) == [1, 2]  # the other blocks still ran


def test_the_partition_depends_on_the_shape_alone():
    from cnncli.layers import Dense

    big = Dense(2304, 256, rng=np.random.default_rng(0))
    assert big.blocks() == ([(0, 128), (128, 256)], [(0, 1152), (1152, 2304)])
    assert Dense(1023, 515, rng=np.random.default_rng(0)).blocks() == (
        [(0, 257), (257, 515)], [(0, 511), (511, 1023)])
    # the same layer in float32 is half the bytes: its products are too small to gain
    assert Dense(2304, 256, rng=np.random.default_rng(0), dtype=np.float32).blocks() is None
    assert Dense(256, 128, rng=np.random.default_rng(0)).blocks() is None
    for n in (None, 1, 2):
        with cnncli.threads(n):
            assert big.blocks() == ([(0, 128), (128, 256)], [(0, 1152), (1152, 2304)])
