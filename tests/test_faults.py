"""Fault injection: hostile inputs and faults mid-run.

Every hostile input must end in one line naming the file and the problem, exit code 1 and no
traceback (in-process: only a cnncli.errors.CnnError with a one-line message); every fault
mid-run must leave the run directory loadable and resumable to the result of an uninterrupted
run. The CLI's "unexpected ... (a bug in cnncli ...)" line counts as a failure here.

The random cases use hypothesis with ``derandomize=True`` and bounded example counts, and
numpy Generators with fixed seeds, so every run tries the same cases. A summary line with the
number of hostile inputs tried and faults injected is written at the end of the module.
"""

from __future__ import annotations

import collections
import copy
import csv
import gzip
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.checkpoint import load_checkpoint, load_network, save_checkpoint
from cnncli.config import apply_overrides, dump_config, load_config, parse_yaml, validate
from cnncli.errors import CheckpointError, CnnError, DataError
from conftest import ROOT

SHAPES = ROOT / "configs" / "shapes.yaml"
COUNTS: collections.Counter = collections.Counter()  # "hostile" inputs tried, "faults" injected
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    """Fixed seed (derandomize) and a bounded example count: every run tries the same cases."""
    return settings(FUZZ, max_examples=examples)
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", COLUMNS="200", PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    failed = request.session.testsfailed
    line = (f"test_faults: {COUNTS['hostile']} hostile inputs tried, {COUNTS['faults']} faults "
            f"injected ({COUNTS['kills during a write']} SIGKILLs left a half-written temporary "
            "file); " + ("every one ended in a clear error or an intact, resumable run"
                            if not failed else f"{failed} test(s) FAILED"))
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    out = os.environ.get("CNNCLI_FAULT_COUNTS")
    if out:
        Path(out).write_text(json.dumps(dict(COUNTS)))


# --------------------------------------------------------------------------- helpers
def assert_one_line(message: str) -> None:
    assert message == message.strip() and message, repr(message)
    assert len(message.splitlines()) == 1, repr(message)
    assert "Traceback" not in message
    assert "a bug in cnncli" not in message, message


def assert_cli_error(result, *phrases, code: int = 1) -> str:
    """A failed invocation: exit ``code``, one line on stderr starting with 'Error:', holding
    each phrase; no traceback; never the catch-all for bugs."""
    COUNTS["hostile"] += 1
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: "), err
    assert_one_line(lines[0])
    for phrase in phrases:
        assert str(phrase) in lines[0], (phrase, lines[0])
    return lines[0]


def expect_cnn_error(fn, *args, kind=CnnError, phrases=(), **kw) -> str:
    """Run ``fn``; it must raise ``kind`` with a one-line message holding each phrase."""
    COUNTS["hostile"] += 1
    with pytest.raises(CnnError) as err:
        fn(*args, **kw)
    assert isinstance(err.value, kind), err.value
    msg = str(err.value)
    assert_one_line(msg)
    for phrase in phrases:
        assert str(phrase) in msg, (phrase, msg)
    return msg


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def params(path: Path) -> dict:
    arrays, _ = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("layers.")}


def same_run(a: Path, b: Path) -> None:
    """Two run directories hold the same result: metrics (all but seconds) and the final
    parameters, bit for bit."""
    assert strip_seconds(read_metrics(a)) == strip_seconds(read_metrics(b))
    pa, pb = params(a / "last.npz"), params(b / "last.npz")
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), k


def no_temporary_files(run: Path) -> None:
    left = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not left, left


def snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def shapes_raw(**data) -> dict:
    raw = yaml.safe_load(SHAPES.read_text())
    raw["data"].update(data)
    return raw


# --------------------------------------------------------------------------- configs
BASES = {
    "shapes": yaml.safe_load(SHAPES.read_text()),
    "digits": yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text()),
    "mnist": yaml.safe_load((ROOT / "configs" / "mnist.yaml").read_text()),
    "everything": {
        "seed": 3,
        "data": {"name": "shapes", "n": 60, "noise": 0.1, "test_size": 0.25, "stratify": True,
                 "limit": 30},
        "network": [
            {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": "same", "init": "normal",
             "std": 0.5, "impl": "reference"},
            {"type": "maxpool2d", "kernel_size": 1},
            {"type": "tanh"},
            {"type": "flatten"},
            {"type": "dense", "in_features": 18, "out_features": 4, "init": "xavier"},
            {"type": "softmax"},
        ],
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "loss": "cross_entropy",
                     "dtype": "float32", "shuffle": True, "threads": 1,
                     "optimizer": {"name": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-7,
                                   "weight_decay": 0.001},
                     "schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
                     "early_stopping": {"patience": 2, "min_delta": 0.001}},
    },
}

NAN, INF = float("nan"), float("inf")
deep_list = st.integers(2, 3000).map(lambda n: _nest(n))


def _nest(n):
    v: object = 1
    for _ in range(n):
        v = [v]
    return v


hostile_values = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**100, -10**100,
                     10**5000, 10**8, 10**12, 4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, INF, -INF, 1e308, -1e308, 5e-324, -0.0, 1e-300, 0.5, 2.0, 1e6]),
    st.text(max_size=12),
    st.sampled_from(["", "\n", "a\nb", "\x00", "\u2028", "é", "\U0001F4A5", "x" * 100_000, "-1",
                     "1e3", "nan", ".inf", "true", "null", "*a", "&a", "relu", "conv2d",
                     "!!python/object:os.system", "sgd", "adam", "cosine", "float32", "mse",
                     "shapes", "npz", "same"]),
    st.binary(max_size=8), st.dates(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-3, 3), max_size=3),
    deep_list,
    st.just(()), st.just(frozenset()),
)
hostile_keys = st.one_of(
    st.text(max_size=12), st.integers(-5, 5), st.none(), st.booleans(), st.floats(),
    st.sampled_from(["name", "type", "seed", "data", "network", "training", "epochs",
                     "learning_rate", "optimizer", "schedule", "early_stopping", "limit", "path",
                     "a\nb", "\u2028", "x" * 5000, "trainig", "Epochs", "learning-rate"]),
)


def _nodes(cfg):
    """(container, key) for every value in a nested config, iteratively."""
    out, stack = [], [cfg]
    while stack and len(out) < 500:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in list(items):
            out.append((node, k))
            if isinstance(v, (dict, list)) and len(out) < 500:
                stack.append(v)
    return out


def _typo(key: str, how: int) -> str:
    if not key:
        return "x"
    i = how % len(key)
    return [key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key.upper(), key + "s",
            key.replace("_", "-"), key[::-1]][how % 6]


@st.composite
def mutated_configs(draw):
    """A valid config with 1 to 4 mutations: keys dropped or renamed, values replaced by
    hostile ones (wrong types, huge, negative, NaN, inf, deeply nested), keys inserted,
    containers emptied or wrapped."""
    cfg = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 4))):
        nodes = _nodes(cfg)
        if not nodes:
            break
        node, key = draw(st.sampled_from(nodes))
        op = draw(st.sampled_from(["drop", "rename", "value", "value", "insert", "wrap", "type",
                                   "empty"]))
        if op == "drop":
            del node[key]
        elif op == "rename" and isinstance(node, dict):
            new = draw(st.one_of(st.just(_typo(str(key), draw(st.integers(0, 50)))), hostile_keys))
            try:
                node[new] = node.pop(key)
            except TypeError:  # an unhashable key cannot be drawn from YAML anyway
                pass
        elif op == "insert" and isinstance(node, dict):
            try:
                node[draw(hostile_keys)] = draw(hostile_values)
            except TypeError:
                pass
        elif op == "insert":
            node.insert(draw(st.integers(0, len(node))), draw(hostile_values))
        elif op == "wrap":
            node[key] = _nest(draw(st.integers(1, 2000))) if draw(st.booleans()) else [node[key]]
        elif op == "type":
            v = node[key]
            node[key] = draw(st.sampled_from([str(v), [v], {"value": v}, None, True]))
        elif op == "empty":
            node[key] = type(node[key])() if isinstance(node[key], (dict, list, str)) else None
        else:
            node[key] = draw(hostile_values)
    return cfg


def check_validation(raw, source="fuzz.yaml"):
    """Validating ``raw`` either gives a resolved config that survives the trip through
    config.yaml (dump, parse, validate: the same dict), or raises a one-line CnnError that
    names the source. Nothing else may happen."""
    COUNTS["hostile"] += 1
    try:
        cfg = validate(raw, source)
    except CnnError as exc:
        msg = str(exc)
        assert_one_line(msg)
        assert msg.startswith(f"{source}: "), msg
        return None
    again = validate(parse_yaml(dump_config(cfg)), "config.yaml")
    assert again == cfg
    COUNTS["valid"] += 1
    return cfg


@fuzz(600)
@given(raw=mutated_configs())
def test_mutated_configs_give_a_config_error_or_a_valid_config(raw):
    check_validation(raw)


YAML_TOKENS = ["&a ", "*a", "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
               "!!binary aGk=", "!!set {a, b}", "!!timestamp 2001-12-14", "!!float x", "!!int 1.5",
               "!!timestamp x", "!!bool x", "!!int ", "!!float ",
               "!!str", "!!map", "!!omap [a: 1]", "!!pairs [a: 1]", "? ", "{", "}", "[", "]", ":",
               ": ", "- ", "\t", "'", '"', "#", "%YAML 1.1\n---\n", "%TAG ! tag:x,2000:\n---\n",
               "---\n", "...\n", "\x00", "\ufeff", "\u2028", "\x85", "1e999", "-.inf", ".nan",
               "0x10", "0o17", "1_000", "~", "null", "<<: {seed: 1}", "<<: *a", "9" * 5000,
               "\\", "|", ">", "!custom 1", "&a [*a]", "\n  - {type: relu}", "\r", "\x1b[31m",
               "seed: 1\nseed: 2\n", "[" * 40, "{a: " * 40, "- " * 40]


@st.composite
def mutated_yaml(draw):
    """The bytes of a shipped config with 1 to 5 edits: YAML tokens and random text inserted,
    spans deleted, lines duplicated or swapped, random and non-UTF-8 bytes."""
    name = draw(st.sampled_from(["shapes", "digits", "mnist"]))
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["token", "token", "text", "delete", "dup", "swap"]))
        i = draw(st.integers(0, len(text)))
        if op == "token":
            text = text[:i] + draw(st.sampled_from(YAML_TOKENS)) + text[i:]
        elif op == "text":
            text = text[:i] + draw(st.text(max_size=10)) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        else:
            lines = text.splitlines(keepends=True)
            j, k = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if op == "dup":
                lines.insert(j, lines[k])
            else:
                lines[j], lines[k] = lines[k], lines[j]
            text = "".join(lines)
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
    return data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch")


def test_mutated_yaml_files_give_a_config_error_or_a_valid_config(scratch):
    path = scratch / "fuzz.yaml"

    @fuzz(300)
    @given(data=mutated_yaml())
    def run(data):
        COUNTS["hostile"] += 1
        path.write_bytes(data)
        try:
            cfg = load_config(path)
        except CnnError as exc:
            msg = str(exc)
            assert_one_line(msg)
            assert msg.startswith(f"{path}: "), msg
            return
        assert validate(parse_yaml(dump_config(cfg))) == cfg

    run()


override_keys = st.one_of(
    st.sampled_from(["seed", "training.epochs", "training.learning_rate", "training.optimizer",
                     "training.optimizer.name", "training.optimizer.momentum", "data.n",
                     "data.name", "data.limit", "network", "network.0.kernel_size",
                     "network.2.out_features", "network.9.x", "network.x.y", "training",
                     "training.epochs.x", "a.b.c", "network.²", "network.0", ".", "..", "x.",
                     ".x", "seed.x", "training.schedule", "training.early_stopping.patience"]),
    st.text(max_size=15),
)
override_values = st.one_of(
    st.sampled_from(["3", "1e-3", "-1", "0", "nan", ".nan", ".inf", "1e999", "true", "null", "",
                     "[1, 2]", "{name: adam}", "{name: x}", "*a", "&a 1", "[", "{", "'", "!!binary aGk=",
                     "!!python/object:os.system", "9" * 5000, "[" * 40, "a\nb", "- 1", "\x00",
                     "{type: relu}", "sgd", "cosine", "2.5"]),
    st.text(max_size=15),
)


@fuzz(300)
@given(base=st.sampled_from(sorted(BASES)), sets=st.lists(
    st.one_of(st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
              st.text(max_size=10)), min_size=1, max_size=3))
def test_random_overrides_give_a_config_error_or_a_valid_config(base, sets):
    """``--set KEY=VALUE`` with random keys and values (YAML inside)."""
    try:
        raw = apply_overrides(BASES[base], sets)
    except CnnError as exc:
        COUNTS["hostile"] += 1
        assert_one_line(str(exc))
        return
    check_validation(raw, "overrides")


def test_overrides_fill_an_empty_section():
    """``training:`` left empty in a file is None: --set must still land in it."""
    raw = apply_overrides({"training": None, "seed": 1}, ["training.epochs=3"])
    assert raw == {"training": {"epochs": 3}, "seed": 1}


def _laughs(levels: int, width: int) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


HOSTILE_FILES = {
    # name: (bytes, phrase in the error)
    "10 MB file": (b"seed: 0\n" + b"# " + b"x" * 10_000_000 + b"\n", "a config may be at most"),
    "billion laughs": (_laughs(10, 10).encode(), "YAML aliases"),
    "alias at the top": (b"base: &b {seed: 1}\nseed: *b\n", "YAML aliases"),
    "merge key alias": (b"t: &t {epochs: 1}\ntraining:\n  <<: *t\n", "YAML aliases"),
    "python object tag": (b"seed: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    "python name tag": (b"seed: !!python/name:os.system\n", "invalid YAML"),
    "custom tag": (b"seed: !secret 1\n", "invalid YAML"),
    "unreadable timestamp": (b"seed: !!timestamp 1\n", "invalid YAML: a tagged value cannot be read"),
    "unreadable bool": (b"seed: !!bool x\n", "invalid YAML: a tagged value cannot be read"),
    "empty tagged int": (b"seed: !!int ''\n", "invalid YAML"),
    "binary value": (b"seed: !!binary aGVsbG8=\n" + SHAPES.read_bytes().split(b"\n", 2)[2], "seed: must be an integer"),
    "timestamp seed": (SHAPES.read_bytes().replace(b"seed: 0", b"seed: 2001-12-14"), "seed: must be an integer"),
    "set as network": (b"seed: 0\ndata: {name: shapes}\nnetwork: !!set {a, b}\n", "network: must be a non-empty list"),
    "non-UTF-8 bytes": (SHAPES.read_bytes().replace(b"shapes", b"sh\xffpes"), "is not UTF-8 text"),
    "UTF-16": (SHAPES.read_text().encode("utf-16"), "is not UTF-8 text"),
    "NUL byte": (b"seed: 0\x00\n", "invalid YAML"),
    "deep flow nesting": (b"seed: " + b"[" * 40_000 + b"]" * 40_000 + b"\n", "nested more than 32 levels"),
    "100 KB of tokens": (b"seed: [" + b"1, " * 33_000 + b"]\n", "seed: must be an integer"),
    "deep block nesting": ("".join(f"{'  ' * i}k{i}:\n" for i in range(60)).encode() + b"  " * 60 + b"v: 1\n", "nested more than"),
    "5000-digit integer": (b"seed: " + b"7" * 5000 + b"\n", "invalid YAML"),
    "100-digit integer": (SHAPES.read_bytes().replace(b"epochs: 50", b"epochs: " + b"9" * 100), "far too large"),
    "nan learning rate": (SHAPES.read_bytes().replace(b"learning_rate: 0.1", b"learning_rate: .nan"), "training.learning_rate: must be a number > 0, got nan"),
    "inf epochs": (SHAPES.read_bytes().replace(b"epochs: 50", b"epochs: .inf"), "training.epochs: must be an integer >= 1, got inf"),
    "huge layer": (SHAPES.read_bytes().replace(b"out_features: 8", b"out_features: 1000000000000"), "network[2] (dense): its weights"),
    "huge padding": (SHAPES.read_bytes().replace(b"kernel_size: 2}", b"kernel_size: 2, padding: 100000}"), "more than cnncli can train"),
    "negative everything": (SHAPES.read_bytes().replace(b"50", b"-50").replace(b"16", b"-16").replace(b"0.1", b"-0.1"), "4 problems"),
    "thousands of unknown keys": (b"seed: 0\n" + b"".join(b"k%d: 1\n" % i for i in range(5000)), "and 4,"),
    "only comments": (b"# nothing here\n", "is empty"),
    "a list": (b"- seed: 0\n", "must be a mapping with the sections"),
    "a scalar": (b"42\n", "must be a mapping with the sections"),
    "duplicate document": (SHAPES.read_bytes() + b"---\n" + SHAPES.read_bytes(), "invalid YAML"),
    "tab indentation": (b"training:\n\tepochs: 3\n", "invalid YAML"),
    "newline in a key": (SHAPES.read_bytes() + b'"trai\\nning": 1\n', "unknown section"),
    "line separator in a layer type": (SHAPES.read_bytes().replace(b"type: relu", b'type: "re\\u2028lu"'), "unknown layer type"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_config_files_give_one_line_exit_1(cnn, tmp_path, case):
    data, phrase = HOSTILE_FILES[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    result = cnn("train", path, "--run-dir", run)
    assert time.perf_counter() - t0 < 5, "a hostile config must fail fast"
    assert_cli_error(result, path, phrase)
    assert not run.exists()  # nothing written for an invalid config


@fuzz(60)
@given(raw=mutated_configs())
def test_mutated_configs_through_the_cli(cnn, raw):
    """The same mutations through ``cnn summary``: exit 0 with a table, or exit 1 with one line."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mutated.yaml"
        try:
            path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        except (yaml.YAMLError, ValueError, RecursionError):
            return  # not representable as YAML: validate() covers it above
        result = cnn("summary", path)
        if result.exit_code == 0:
            assert "total" in result.output
            COUNTS["hostile"] += 1
        else:
            assert_cli_error(result, path)


# --------------------------------------------------------------------------- checkpoints
MOMENTUM = "training.optimizer={name: sgd, momentum: 0.9}"


@pytest.fixture(scope="module")
def finished_run(cnn, tmp_path_factory):
    """A 3-epoch shapes run with momentum (so last.npz holds optimizer state)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 3, "--quiet", "--set", MOMENTUM)
    assert result.exit_code == 0, result.output
    return run


def save_raw(path: Path, arrays: dict, meta) -> Path:
    """An .npz as a checkpoint would be, but with anything as meta (a dict is dumped as JSON;
    a string is stored as is)."""
    payload = dict(arrays)
    if meta is not None:
        payload["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **payload)
    return path


def test_bit_flips_never_load_silently_wrong_data(finished_run, tmp_path):
    """500 single-bit flips and 100 random-byte overwrites anywhere in last.npz: each either
    fails with a one-line CheckpointError naming the file, or (a flip in a field nothing reads,
    such as a zip timestamp) loads the very same arrays and meta."""
    good = (finished_run / "last.npz").read_bytes()
    arrays0, meta0 = load_checkpoint(finished_run / "last.npz")
    rng = np.random.default_rng(1234)
    path = tmp_path / "flipped.npz"
    outcomes = collections.Counter()
    for i in range(600):
        data = bytearray(good)
        if i < 500:
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        else:  # a few bytes overwritten, biased to the headers at the start and the end
            pos = int(rng.integers(600)) if i % 2 else len(data) - 1 - int(rng.integers(300))
            data[pos:pos + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        COUNTS["faults"] += 1
        try:
            net, cfg, meta, arrays = load_network(path)
        except CheckpointError as exc:
            assert_one_line(str(exc))
            assert str(path) in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert meta == meta0
        assert arrays.keys() == arrays0.keys()
        for k in arrays:
            assert arrays[k].tobytes() == arrays0[k].tobytes(), k
    assert outcomes["refused"] > 500, outcomes


def test_bit_flips_through_eval_and_resume(cnn, finished_run, tmp_path):
    good = (finished_run / "last.npz").read_bytes()
    rng = np.random.default_rng(99)
    for i in range(6):
        data = bytearray(good)
        pos = int(rng.integers(len(data)))
        data[pos] ^= 0xFF
        bad = tmp_path / f"flip{i}.npz"
        bad.write_bytes(bytes(data))
        COUNTS["faults"] += 1
        result = cnn("eval", bad)
        if result.exit_code != 0:
            assert_cli_error(result, bad)
        run = tmp_path / f"run{i}"
        shutil.copytree(finished_run, run)
        (run / "last.npz").write_bytes(bytes(data))
        before = snapshot(run)
        result = cnn("train", "--resume", run, "--quiet")
        if result.exit_code != 0:
            assert_cli_error(result, run / "last.npz")
            assert snapshot(run) == before  # nothing touched, the damaged file kept for inspection


@pytest.mark.parametrize("tenth", range(10))
def test_truncated_checkpoints(cnn, finished_run, tmp_path, tenth):
    """last.npz cut at every tenth of its length (0: empty): eval and resume refuse it in one
    line, and the run directory is left exactly as it was."""
    good = (finished_run / "last.npz").read_bytes()
    cut = good[: len(good) * tenth // 10]
    bad = tmp_path / "cut.npz"
    bad.write_bytes(cut)
    COUNTS["faults"] += 1
    assert_cli_error(cnn("eval", bad), bad, "is empty" if tenth == 0 else "checkpoint")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "last.npz").write_bytes(cut)
    before = snapshot(run)
    assert_cli_error(cnn("train", "--resume", run, "--epochs", 5), run / "last.npz")
    assert snapshot(run) == before


def _tamper(kind: str, arrays: dict, meta: dict):
    """(arrays, meta) of a damaged or foreign checkpoint; meta may become a string."""
    a, m = dict(arrays), copy.deepcopy(meta)
    if kind == "meta is broken JSON":
        return a, json.dumps(m)[:-7]
    if kind == "meta is a JSON list":
        return a, "[1, 2, 3]"
    if kind == "meta without format_version":
        del m["format_version"]
    elif kind == "format_version is a string":
        m["format_version"] = "1"
    elif kind == "written by a newer cnncli":
        m["format_version"] = 99
    elif kind == "meta names a layer that does not exist":
        m["config"]["network"][3]["type"] = "warp_drive"
    elif kind == "meta config is a list":
        m["config"] = [1, 2]
    elif kind == "meta config nested 900 deep":
        m["config"]["data"] = _nest(900)
    elif kind == "epoch is negative":
        m["epoch"] = -3
    elif kind == "epoch is a string":
        m["epoch"] = "3"
    elif kind == "epoch is true":
        m["epoch"] = True
    elif kind == "input_shape is a string":
        m["input_shape"] = "1x3x3"
    elif kind == "input_shape holds a zero":
        m["input_shape"] = [1, 0, 3]
    elif kind == "input_shape is another image size":
        m["input_shape"] = [1, 5, 5]
    elif kind == "class_names is empty":
        m["class_names"] = []
    elif kind == "class_names are numbers":
        m["class_names"] = [1, 2, 3, 4]
    elif kind == "history is a number":
        m["history"] = 7
    elif kind == "history is short":
        m["history"] = m["history"][:1]
    elif kind == "history rows lack metrics":
        m["history"] = [{"epoch": i + 1} for i in range(m["epoch"])]
    elif kind == "best is a string":
        m["best"] = "epoch 2"
    elif kind == "early_stopping is a list":
        m["early_stopping"] = [1]
    elif kind == "rng_state is garbage":
        m["rng_state"] = {"bit_generator": "PCG64", "state": "x"}
    elif kind == "a weight of the wrong shape":
        a["layers.0.W"] = a["layers.0.W"].reshape(-1)
    elif kind == "a weight transposed":
        a["layers.2.W"] = np.ascontiguousarray(a["layers.2.W"].T)
    elif kind == "integer weights":
        a["layers.0.W"] = a["layers.0.W"].astype(np.int64)
    elif kind == "float32 weights in a float64 network":
        a["layers.0.W"] = a["layers.0.W"].astype(np.float32)
    elif kind == "complex weights":
        a["layers.0.W"] = a["layers.0.W"].astype(np.complex128)
    elif kind == "a weight missing":
        del a["layers.4.b"]
    elif kind == "an extra weight":
        a["layers.9.W"] = np.zeros(3)
    elif kind == "momentum of the wrong shape":
        a["optimizer.velocity.layers.0.W"] = np.zeros(5)
    elif kind == "momentum of the wrong dtype":
        a["optimizer.velocity.layers.0.W"] = a["optimizer.velocity.layers.0.W"].astype(np.float32)
    elif kind == "optimizer array of nothing":
        a["optimizer.junk"] = np.ones((2, 2))
    elif kind == "optimizer strings":
        a["optimizer.t"] = np.array("three")
    elif kind == "a string array":
        a["layers.0.W"] = np.array(["a", "b"])
    else:
        raise AssertionError(kind)
    return a, m


# kind: (phrase of `cnn eval`, or None where eval rightly loads the file: it reads no optimizer
#        state; phrase of `cnn train --resume`)
TAMPERED = {
    "meta is broken JSON": ("'meta' is not valid JSON", "'meta' is not valid JSON"),
    "meta is a JSON list": ("no format_version", "no format_version"),
    "meta without format_version": ("no format_version", "no format_version"),
    "format_version is a string": ("format_version must be an integer", "format_version must be an integer"),
    "written by a newer cnncli": ("by a newer cnncli", "by a newer cnncli"),
    "meta names a layer that does not exist": ("unknown layer type 'warp_drive'", "was written by another run"),
    "meta config is a list": ("config must be a mapping", "config must be a mapping"),
    "meta config nested 900 deep": ("nested more than", "nested more than"),
    "epoch is negative": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "epoch is a string": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "epoch is true": ("epoch must be an integer >= 0", "epoch must be an integer >= 0"),
    "input_shape is a string": ("input_shape must be a list", "input_shape must be a list"),
    "input_shape holds a zero": ("input_shape must be a list", "input_shape must be a list"),
    "input_shape is another image size": ("in_features is 16, but the previous layer outputs 64",
                                          "was written for 1x5x5 images in 4 classes, but this run's data has 1x3x3"),
    "class_names is empty": ("class_names must be a non-empty list", "class_names must be a non-empty list"),
    "class_names are numbers": ("class_names must be a non-empty list", "class_names must be a non-empty list"),
    "history is a number": ("history must be a list", "history must be a list"),
    "history is short": ("history must be a list of at least epoch (3) rows", "history must be a list"),
    "history rows lack metrics": ("history[0] must be the metrics of epoch 1", "history[0]"),
    "best is a string": ("best must be", "best must be"),
    "early_stopping is a list": ("early_stopping must be", "early_stopping must be"),
    "rng_state is garbage": ("rng_state is not a PCG64 state", "rng_state is not a PCG64 state"),
    "a weight of the wrong shape": ("layers.0.W has shape (16,), the network expects (4, 1, 2, 2)",
                                    "layers.0.W is float64 (16,), the network expects float64 (4, 1, 2, 2)"),
    "a weight transposed": ("layers.2.W has shape (8, 16)", "layers.2.W is float64 (8, 16)"),
    "integer weights": ("layers.0.W has dtype int64, expected floats", "layers.0.W has dtype int64"),
    "float32 weights in a float64 network": ("layers.0.W has dtype float32, the network expects float64",
                                             "layers.0.W is float32 (4, 1, 2, 2), the network expects float64"),
    "complex weights": ("layers.0.W has dtype complex128, expected floats", "complex128"),
    "a weight missing": ("missing ['layers.4.b']", "missing ['layers.4.b']"),
    "an extra weight": ("unexpected ['layers.9.W']", "unexpected ['layers.9.W']"),
    "momentum of the wrong shape": (None, "optimizer.velocity.layers.0.W is float64 (5,), but layers.0.W is float64 (4, 1, 2, 2)"),
    "momentum of the wrong dtype": (None, "optimizer.velocity.layers.0.W is float32"),
    "optimizer array of nothing": (None, "optimizer.junk belongs to no parameter"),
    "optimizer strings": ("optimizer.t has dtype <U5, expected numbers", "optimizer.t has dtype <U5"),
    "a string array": ("layers.0.W has dtype <U1, expected floats", "layers.0.W has dtype <U1"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_damaged_and_foreign_checkpoints(cnn, finished_run, tmp_path, kind):
    """Each damaged checkpoint is refused by ``cnn eval`` and by ``cnn train --resume`` in one
    line naming the file and the problem; the run directory is left exactly as it was."""
    eval_phrase, resume_phrase = TAMPERED[kind]
    arrays, meta = load_checkpoint(finished_run / "last.npz")
    arrays, meta = _tamper(kind, arrays, meta)
    bad = save_raw(tmp_path / "bad.npz", arrays, meta)
    result = cnn("eval", bad)
    if eval_phrase is None:
        assert result.exit_code == 0, result.output  # eval never reads the optimizer state
    else:
        assert_cli_error(result, bad, eval_phrase)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copyfile(bad, run / "last.npz")
    before = snapshot(run)
    result = cnn("train", "--resume", run, "--epochs", 5, "--quiet")
    assert_cli_error(result, run / "last.npz", resume_phrase)
    assert snapshot(run) == before


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _npy_bytes(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind,phrase", [
    ("zip of text", "'readme.txt' in the archive is not a NumPy array"),
    ("zip with a text member", "is not a NumPy array"),
    ("npy, not npz", "a single array, not an .npz"),
    ("object arrays", "pickled Python objects"),
    ("pickled meta", "pickled Python objects"),
    ("2-D meta", "'meta' must be a 0-d string array"),
    ("gzip file", "not an .npz archive"),
    ("text file", "not an .npz archive"),
    ("huge announced array shape", "corrupt or truncated checkpoint"),
    ("encrypted-flag zip", "corrupt or truncated checkpoint"),
])
def test_files_that_are_not_checkpoints(cnn, finished_run, tmp_path, kind, phrase):
    bad = tmp_path / "not-a-checkpoint.npz"
    good = (finished_run / "last.npz").read_bytes()
    if kind == "zip of text":
        _zip(bad, {"readme.txt": "hello"})
    elif kind == "zip with a text member":
        _zip(bad, {"meta.npy": _npy_bytes(np.array("{}")), "notes.txt": "hi"})
    elif kind == "npy, not npz":
        np.save(bad.with_suffix(".npy"), np.zeros(3))
        bad.with_suffix(".npy").rename(bad)
    elif kind == "object arrays":
        np.savez(bad, meta=np.array("{}"), w=np.array([{"a": 1}], dtype=object))
    elif kind == "pickled meta":
        np.savez(bad, meta=np.array({"format_version": 1}, dtype=object))
    elif kind == "2-D meta":
        np.savez(bad, meta=np.array([["{}"]]))
    elif kind == "gzip file":
        bad.write_bytes(gzip.compress(good))
    elif kind == "text file":
        bad.write_text("this is not a checkpoint\n")
    elif kind == "huge announced array shape":  # a member announcing a 10-billion-value array
        data = bytearray(good)
        header = b"'shape': (4, 1, 2, 2)"
        i = bytes(data).find(header)
        assert i > 0
        data[i:i + len(header)] = b"'shape': (9999999999,)".ljust(len(header))[: len(header)]
        bad.write_bytes(bytes(data))
    elif kind == "encrypted-flag zip":
        data = bytearray(good)
        data[6] |= 1  # general purpose flag bit 0 of the first local header: encrypted
        i = bytes(data).rfind(b"PK\x01\x02")
        data[i + 8] |= 1
        bad.write_bytes(bytes(data))
    COUNTS["faults"] += 1
    assert_cli_error(cnn("eval", bad), bad, phrase)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copyfile(bad, run / "last.npz")
    before = snapshot(run)
    assert_cli_error(cnn("train", "--resume", run), run / "last.npz", phrase)
    assert snapshot(run) == before


def test_resume_refuses_another_runs_checkpoint(cnn, finished_run, tmp_path):
    """A last.npz copied from another run: another network, or the same network trained with
    another seed. --resume refuses it (its config differs from the run's), touching nothing."""
    for name, sets in [("other-network", ["--set", "network.0.out_channels=6", "--set",
                                          "network.2.in_features=24"]),
                       ("other-seed", ["--seed", "7"])]:
        other = tmp_path / name
        result = cnn("train", SHAPES, "--run-dir", other, "--epochs", 2, "--quiet", "--set", MOMENTUM, *sets)
        assert result.exit_code == 0, result.output
        run = tmp_path / f"run-{name}"
        shutil.copytree(finished_run, run)
        shutil.copyfile(other / "last.npz", run / "last.npz")
        before = snapshot(run)
        msg = assert_cli_error(cnn("train", "--resume", run, "--epochs", 5),
                               run / "last.npz", "was written by another run")
        assert ("network" in msg) if name == "other-network" else ("seed: 7 -> 0" in msg)
        assert snapshot(run) == before
        # and eval of that file alone works: it is a good checkpoint, just not this run's
        assert cnn("eval", other / "last.npz").exit_code == 0


# --------------------------------------------------------------------------- data: npz
SHAPES_NET = yaml.safe_load(SHAPES.read_text())["network"]


def npz_arrays(n_train=40, n_test=20, size=(1, 3, 3), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.random((n_train, *size)), "y_train": rng.integers(0, 4, n_train),
            "x_test": rng.random((n_test, *size)), "y_test": rng.integers(0, 4, n_test),
            "class_names": np.array(["a", "b", "c", "d"])}


def npz_config(tmp_path: Path, data_path: Path, **training) -> Path:
    cfg = {"seed": 0, "data": {"name": "npz", "path": str(data_path)}, "network": SHAPES_NET,
           "training": {"epochs": 2, "batch_size": 8, **training}}
    return write_config(tmp_path / "npz.yaml", cfg)


def _bad_npz(kind: str, path: Path) -> Path:
    a = npz_arrays()
    if kind == "text file":
        path.write_text("x_train,y_train\n1,2\n")
        return path
    if kind == "npy file":
        with open(path, "wb") as f:
            np.save(f, a["x_train"])
        return path
    if kind == "truncated":
        np.savez(path, **a)
        path.write_bytes(path.read_bytes()[:700])
        return path
    if kind == "text member":
        with zipfile.ZipFile(path, "w") as z:
            for k in ("x_train", "y_train", "x_test"):
                z.writestr(k + ".npy", _npy_bytes(a[k]))
            z.writestr("y_test", "0 1 2 3")
        return path
    if kind == "missing y_test":
        del a["y_test"]
    elif kind == "wrong count":
        a["y_train"] = a["y_train"][:-1]
    elif kind == "NaN pixels":
        a["x_train"][3, 0, 1, 1] = np.nan
    elif kind == "inf pixels":
        a["x_test"][0, 0, 0, 0] = -np.inf
    elif kind == "negative label":
        a["y_train"][5] = -1
    elif kind == "label beyond class_names":
        a["y_test"][2] = 7
    elif kind == "label 2**40":
        del a["class_names"]
        a["y_train"][0] = 2**40
    elif kind == "uint64 label beyond int64":
        del a["class_names"]
        a["y_train"] = a["y_train"].astype(np.uint64)
        a["y_train"][0] = 2**64 - 1
    elif kind == "fractional labels":
        a["y_train"] = a["y_train"] + 0.5
    elif kind == "NaN labels":
        a["y_test"] = a["y_test"].astype(float)
        a["y_test"][1] = np.nan
    elif kind == "string labels":
        a["y_train"] = a["y_train"].astype(str)
    elif kind == "bad one-hot":
        y = np.zeros((40, 4))
        y[:, 0] = y[:, 1] = 1
        a["y_train"] = y
    elif kind == "mismatched image sizes":
        a["x_test"] = np.random.default_rng(1).random((20, 1, 4, 4))
    elif kind == "zero training samples":
        a["x_train"], a["y_train"] = a["x_train"][:0], a["y_train"][:0]
    elif kind == "zero test samples":
        a["x_test"], a["y_test"] = a["x_test"][:0], a["y_test"][:0]
    elif kind == "zero-pixel images":
        a["x_train"], a["x_test"] = np.zeros((40, 1, 0, 3)), np.zeros((20, 1, 0, 3))
    elif kind == "5-D images":
        a["x_train"] = a["x_train"][:, None]
    elif kind == "boolean images":
        a["x_train"] = a["x_train"] > 0.5
    elif kind == "complex images":
        a["x_train"] = a["x_train"].astype(complex)
    elif kind == "string images":
        a["x_train"] = np.full((40, 1, 3, 3), "x")
    elif kind == "object arrays":
        a["x_train"] = np.empty(40, dtype=object)
        np.savez(path, **a)  # allow_pickle is the default when saving
        return path
    elif kind == "0-d class_names":
        a["class_names"] = np.array("abcd")
    elif kind == "3 classes for a 4-output network":
        a["y_train"] %= 3
        a["y_test"] %= 3
        a["class_names"] = np.array(["a", "b", "c"])
    elif kind == "1x1 images for a 2x2 kernel":
        a["x_train"], a["x_test"] = np.zeros((40, 1, 1, 1)), np.zeros((20, 1, 1, 1))
    else:
        raise AssertionError(kind)
    np.savez(path, **a)
    return path


NPZ_CASES = {
    "text file": "not a .npz file: no zip archive found",
    "npy file": "is a single .npy array",
    "truncated": "not a .npz file: no zip archive found",
    "text member": "y_test in the archive is not a NumPy array",
    "missing y_test": "missing array(s) y_test",
    "wrong count": "y_train has 39 labels but there are 40 images",
    "NaN pixels": "x_train holds 1 NaN or infinite value(s)",
    "inf pixels": "x_test holds 1 NaN or infinite value(s)",
    "negative label": "y_train holds a negative label (-1)",
    "label beyond class_names": "labels go up to 7, but class_names has only 4 names",
    "label 2**40": "y_train holds the label 1099511627776",
    "uint64 label beyond int64": "y_train holds the label 18446744073709551615",
    "fractional labels": "y_train must hold integer class labels",
    "NaN labels": "y_test must hold integer class labels",
    "string labels": "y_train must hold integer class labels, got dtype <U",
    "bad one-hot": "y_train is 2-D, so it must be one-hot",
    "mismatched image sizes": "x_train images are 1x3x3 but x_test images are 1x4x4",
    "zero training samples": "must each hold at least one image, got 0 and 20",
    "zero test samples": "must each hold at least one image, got 40 and 0",
    "zero-pixel images": "x_train images must hold at least one pixel",
    "5-D images": "x_train must have shape (N, H, W) or (N, C, H, W)",
    "boolean images": "x_train must hold numbers",
    "complex images": "x_train must hold numbers",
    "string images": "x_train must hold numbers",
    "object arrays": "pickled Python objects",
    "0-d class_names": "class_names must be a list of 1 to 100,000 names",
    "3 classes for a 4-output network": "but the npz data has 3 classes",
    "1x1 images for a 2x2 kernel": "kernel_size 2 is larger than its (padded) input 1x1",
}


@pytest.mark.parametrize("kind", sorted(NPZ_CASES))
def test_broken_npz_data(cnn, tmp_path, kind):
    """``cnn train`` on a broken .npz: one line naming the data file and the problem, exit 1,
    and no run directory."""
    data = _bad_npz(kind, tmp_path / "my data.npz")
    config = npz_config(tmp_path, data)
    run = tmp_path / "run"
    # a good file that the config's network does not fit: the config is named
    named = config if kind in ("3 classes for a 4-output network", "1x1 images for a 2x2 kernel") else data
    assert_cli_error(cnn("train", config, "--run-dir", run), named, NPZ_CASES[kind])
    assert not run.exists()


def test_npz_loader_raises_only_data_errors(tmp_path):
    """The same files read directly: only DataError, one line."""
    from cnncli.data.npz import load_npz

    for kind in sorted(NPZ_CASES):
        data = _bad_npz(kind, tmp_path / f"{kind}.npz")
        if kind in ("3 classes for a 4-output network", "1x1 images for a 2x2 kernel"):
            load_npz(data)  # a valid file; only the network does not fit it
            continue
        expect_cnn_error(load_npz, data, kind=DataError, phrases=[data, NPZ_CASES[kind]])


def test_npz_fuzzed_bytes(tmp_path):
    """A good .npz with random bytes overwritten: a DataError, or the same arrays."""
    from cnncli.data.npz import load_npz

    good_path = tmp_path / "good.npz"
    np.savez(good_path, **npz_arrays())
    good = good_path.read_bytes()
    ref = load_npz(good_path)
    rng = np.random.default_rng(5)
    path = tmp_path / "fuzzed.npz"
    for _ in range(150):
        data = bytearray(good)
        pos = int(rng.integers(len(data)))
        data[pos:pos + 2] = rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        COUNTS["hostile"] += 1
        try:
            ds = load_npz(path)
        except DataError as exc:
            assert_one_line(str(exc))
            continue
        for k in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(ds, k), getattr(ref, k))


def test_batch_larger_than_the_training_set_trains_one_smaller_batch(cnn, tmp_path):
    run = tmp_path / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 2, "--batch-size", 1000,
                 "--set", "data.n=30", "--quiet")
    COUNTS["hostile"] += 1
    assert result.exit_code == 0, result.output
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    from cnncli.train import Trainer

    trainer = Trainer(load_config(run / "config.yaml"))
    batches = []
    trainer.train_epoch(lambda b, n, loss: batches.append((b, n)))
    assert batches == [(1, 1)]  # 20 training samples, batch_size 1000: one batch of 20


def test_data_limit_zero_and_one(cnn, tmp_path):
    assert_cli_error(cnn("train", SHAPES, "--run-dir", tmp_path / "r0", "--set", "data.limit=0"),
                     SHAPES, "data.limit: must be an integer >= 1, got 0")
    assert not (tmp_path / "r0").exists()
    result = cnn("train", SHAPES, "--run-dir", tmp_path / "r1", "--set", "data.limit=1",
                 "--epochs", 1, "--quiet")
    COUNTS["hostile"] += 1
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- data: IDX (MNIST)
def idx_bytes(a: np.ndarray, magic: bytes | None = None) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    head = magic if magic is not None else bytes([0, 0, 0x08, a.ndim])
    return head + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_mnist(folder: Path, n_train=30, n_test=10, seed=0) -> dict:
    """Four small IDX files (train images gzip-compressed, the others not). Returns the paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train_images": folder / "train-images-idx3-ubyte.gz",
        "train_labels": folder / "train-labels-idx1-ubyte",
        "test_images": folder / "t10k-images-idx3-ubyte",
        "test_labels": folder / "t10k-labels-idx1-ubyte",
    }
    files["train_images"].write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (n_train, 28, 28)))))
    files["train_labels"].write_bytes(idx_bytes(rng.integers(0, 10, n_train)))
    files["test_images"].write_bytes(idx_bytes(rng.integers(0, 256, (n_test, 28, 28))))
    files["test_labels"].write_bytes(idx_bytes(rng.integers(0, 10, n_test)))
    return files


MNIST_NET = [{"type": "conv2d", "out_channels": 2, "kernel_size": 4, "stride": 4},
             {"type": "flatten"}, {"type": "dense", "out_features": 10}]


def _damage_idx(kind: str, files: dict) -> Path:
    """Damage one file; return it (the file the error must name)."""
    rng = np.random.default_rng(3)

    def raw(key):
        data = files[key].read_bytes()
        return gzip.decompress(data) if files[key].name.endswith(".gz") else data

    def put(key, data):
        files[key].write_bytes(gzip.compress(data) if files[key].name.endswith(".gz") else data)
        return files[key]

    if kind == "wrong magic":
        return put("test_images", b"\x12\x34" + raw("test_images")[2:])
    if kind == "float data type byte":
        return put("test_labels", b"\x00\x00\x0d\x01" + raw("test_labels")[4:])
    if kind == "labels with an images magic":
        return put("test_labels", b"\x00\x00\x08\x03" + raw("test_labels")[4:])
    if kind == "zero dimensions":
        return put("train_labels", b"\x00\x00\x08\x00")
    if kind == "header cut short":
        return put("train_labels", raw("train_labels")[:6])
    if kind == "data cut short":
        return put("test_images", raw("test_images")[:-100])
    if kind == "extra bytes":
        return put("test_labels", raw("test_labels") + b"\x00\x01")
    if kind == "count mismatch":
        return put("test_labels", idx_bytes(rng.integers(0, 10, 9)))
    if kind == "label 10":
        return put("train_labels", idx_bytes(np.r_[rng.integers(0, 10, 29), 10]))
    if kind == "label 255":
        return put("test_labels", idx_bytes(np.r_[255, rng.integers(0, 10, 9)]))
    if kind == "14x14 test images":
        return put("test_images", idx_bytes(rng.integers(0, 256, (10, 14, 14))))
    if kind == "zero samples":
        put("train_images", idx_bytes(np.zeros((0, 28, 28))))
        return put("train_labels", idx_bytes(np.zeros(0)))
    if kind == "huge announced count":
        return put("test_images", b"\x00\x00\x08\x03" + struct.pack(">III", 2**32 - 1, 2**16, 2**16))
    if kind == "corrupt gzip":
        data = bytearray(files["train_images"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        files["train_images"].write_bytes(bytes(data))
        return files["train_images"]
    if kind == "truncated gzip":
        data = files["train_images"].read_bytes()
        files["train_images"].write_bytes(data[: len(data) // 2])
        return files["train_images"]
    if kind == "gzip that is not gzip":
        files["train_images"].write_bytes(b"not gzip at all")
        return files["train_images"]
    raise AssertionError(kind)


IDX_CASES = {
    "wrong magic": "bad magic number 0x12340803",
    "float data type byte": "data type byte is 0x0d",
    "labels with an images magic": "expected 0x00000801",
    "zero dimensions": "expected 0x00000801",
    "header cut short": "truncated",
    "data cut short": "truncated",
    "extra bytes": "wrong count",
    "count mismatch": "wrong count: 9 labels",
    "label 10": "label 10 at index 29 is not a digit",
    "label 255": "label 255 at index 0 is not a digit",
    "14x14 test images": "images are 14x14, MNIST images are 28x28",
    "zero samples": "must each hold at least one sample, got 0",
    "huge announced count": "implausibly many",
    "corrupt gzip": "",
    "truncated gzip": "truncated",
    "gzip that is not gzip": "not a valid gzip file",
}


@pytest.mark.parametrize("kind", sorted(IDX_CASES))
def test_broken_idx_files(cnn, tmp_path, kind):
    """MNIST from a data.path folder whose files are damaged: read_idx/load_mnist raise a
    one-line DataError naming the file; ``cnn train`` exits 1 with that line and creates no run
    directory. (IDX pixels are bytes: they cannot be NaN or infinite.)"""
    from cnncli.data.mnist import load_mnist

    folder = tmp_path / "mnist files"
    files = write_mnist(folder)
    damaged = _damage_idx(kind, files)
    phrase = IDX_CASES[kind]
    named = "data (mnist)" if kind == "zero samples" else damaged
    if kind != "zero samples":
        expect_cnn_error(load_mnist, str(folder), kind=DataError, phrases=[damaged, phrase])
    cfg = write_config(tmp_path / "mnist.yaml", {
        "data": {"name": "mnist", "path": str(folder)}, "network": MNIST_NET,
        "training": {"epochs": 1, "loss": "cross_entropy"}})
    run = tmp_path / "run"
    assert_cli_error(cnn("train", cfg, "--run-dir", run, "--offline"), named, phrase)
    assert not run.exists()


def test_good_idx_files_train(cnn, tmp_path):
    """The control: the undamaged small MNIST folder trains."""
    folder = tmp_path / "mnist"
    write_mnist(folder)
    cfg = write_config(tmp_path / "mnist.yaml", {
        "data": {"name": "mnist", "path": str(folder)}, "network": MNIST_NET,
        "training": {"epochs": 1, "loss": "cross_entropy"}})
    result = cnn("train", cfg, "--run-dir", tmp_path / "run", "--offline", "--quiet")
    assert result.exit_code == 0, result.output


def test_read_idx_fuzzed_headers(tmp_path):
    """read_idx on 300 files with random headers and lengths: a DataError or an array whose
    size matches its header."""
    from cnncli.data.mnist import read_idx

    rng = np.random.default_rng(11)
    path = tmp_path / "fuzz-idx3-ubyte"
    for i in range(300):
        ndim = int(rng.integers(0, 5))
        head = bytes([0, 0, 0x08 if i % 3 else int(rng.integers(256)), ndim])
        dims = rng.integers(0, 6, ndim) if i % 2 else rng.integers(0, 2**32, ndim, dtype=np.uint64)
        body = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        path.write_bytes(head + b"".join(struct.pack(">I", int(d)) for d in dims) + body)
        COUNTS["hostile"] += 1
        try:
            a = read_idx(path)
        except DataError as exc:
            assert_one_line(str(exc))
            assert str(path) in str(exc)
            continue
        assert a.dtype == np.uint8 and a.shape == tuple(int(d) for d in dims)
        assert a.size == len(body)


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("args,phrase", [
    (["train", str(SHAPES), "--epoch", "3"], "No such option: --epoch"),
    (["train", str(SHAPES), "--run_dir", "x"], "No such option: --run_dir"),
    (["eval", "x.npz", "--jsn"], "No such option: --jsn"),
    (["trian", str(SHAPES)], "No such command 'trian'"),
    (["train", str(SHAPES), "--epochs", "three"], "Invalid value for '--epochs'"),
    (["train", str(SHAPES), "--lr", "fast"], "Invalid value for '--lr'"),
    (["generate-shapes", "--n", "1"], "Invalid value for '--n'"),
    (["eval"], "Missing argument"),
])
def test_usage_mistakes_exit_2_with_the_option_named(cnn, args, phrase):
    """Click's usage errors: exit 2 (the usage convention), the usage line and one 'Error:' line
    naming the option; never a traceback."""
    COUNTS["hostile"] += 1
    result = cnn(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and phrase in errors[0], result.stderr


def test_bad_option_values_are_config_errors(cnn, tmp_path):
    for args, phrase in [
        (["--epochs", "0"], "training.epochs: must be an integer >= 1, got 0"),
        (["--lr", "-1"], "training.learning_rate: must be a number > 0, got -1.0"),
        (["--lr", "nan"], "training.learning_rate: must be a number > 0"),
        (["--lr", "inf"], "training.learning_rate: must be a number > 0"),
        (["--batch-size", "-5"], "training.batch_size: must be an integer >= 1, got -5"),
        (["--seed", "-1"], "seed: must be an integer >= 0 and <= 4294967295, got -1"),
        (["--seed", str(2**40)], "seed: must be an integer >= 0 and <= 4294967295"),
        (["--set", "training.epochs"], "expected KEY=VALUE"),
        (["--set", "training.epochs=[1"], "--set training.epochs: invalid YAML"),
        (["--set", "..=3"], "the key must be dotted names"),
        (["--set", "network.0.kernel_size=1e400"], "kernel_size must be an integer >= 1, got inf"),
        (["--set", "data=*x"], "YAML aliases"),
    ]:
        run = tmp_path / "run"
        assert_cli_error(cnn("train", SHAPES, "--run-dir", run, *args), phrase)
        assert not run.exists()


def test_missing_files_and_directories_where_files_belong(cnn, tmp_path, finished_run):
    missing = tmp_path / "nope"
    d = tmp_path / "a directory"
    d.mkdir()
    npz_dir = npz_config(tmp_path, d)
    npz_missing = write_config(tmp_path / "missing-npz.yaml", {
        "data": {"name": "npz", "path": str(missing)}, "network": SHAPES_NET})
    cases = [
        (["train", missing / "c.yaml"], [missing / "c.yaml", "no such file"]),
        (["train", d], [d, "is a directory, expected a YAML config file"]),
        (["summary", d], [d, "is a directory"]),
        (["gradcheck", missing], [missing, "no such file"]),
        (["eval", missing], [missing, "no such file"]),
        (["eval", d], [d, "is a directory, expected a checkpoint"]),
        (["eval", finished_run / "last.npz", "--data", missing], [missing, "no such file"]),
        (["eval", finished_run / "last.npz", "--data", d], [d, "is a directory"]),
        (["train", npz_dir, "--run-dir", tmp_path / "r"], [d, "is a directory, expected a .npz file"]),
        (["train", npz_missing, "--run-dir", tmp_path / "r"], [missing, "no such file"]),
        (["train", "--resume", missing], [missing, "no such run directory"]),
        (["train", "--resume", finished_run / "config.yaml"], ["is a file; --resume takes a run directory", f"cnn train --resume {finished_run}"]),
        (["train", "--resume", d], [d, "not a cnncli run directory (no config.yaml)"]),
        (["train", SHAPES, "--run-dir", finished_run / "config.yaml"], ["exists and is not a directory"]),
        (["generate-shapes", "--out", d], [d, "is a directory"]),
        (["generate-shapes", "--out", missing / "x.npz"], [missing / "x.npz", f"the directory {missing} does not exist"]),
    ]
    for args, phrases in cases:
        assert_cli_error(cnn(*args), *phrases)
    assert not (tmp_path / "r").exists()


def test_run_directory_that_cannot_be_created(cnn, tmp_path):
    """Root ignores permission bits, so "no write permission" is made with a path under a
    regular file (and, in test_read_only_file_system, a read-only mount)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    run = blocker / "run"
    assert_cli_error(cnn("train", SHAPES, "--run-dir", run), run, "cannot create the run directory",
                     "Not a directory")
    assert blocker.read_text() == "I am a file"
    proc_run = Path("/proc/cnncli-run")
    assert_cli_error(cnn("train", SHAPES, "--run-dir", proc_run, "--epochs", 1), proc_run,
                     "cannot create the run directory")


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no mount(8) here
        return False
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mount; skipped where mounting is not allowed (it needs root with
    CAP_SYS_ADMIN; the RLIMIT_FSIZE tests cover a full disk everywhere)."""
    mounted = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        if not _mount_tmpfs(where, size):
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        _umount(where)


def test_read_only_file_system(cnn, tmp_path, tmpfs, finished_run):
    """A run directory on a file system remounted read-only: a new run and a resume both fail
    in one line before training, and the run's files are untouched."""
    mnt = tmpfs("4m")
    run = mnt / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert_cli_error(cnn("train", SHAPES, "--run-dir", mnt / "new"), mnt / "new",
                     "cannot create the run directory", "Read-only file system")
    assert_cli_error(cnn("train", "--resume", run, "--epochs", 5), run,
                     "cannot write in the run directory", "Read-only file system")
    assert snapshot(run) == before


def test_paths_with_spaces_and_non_ascii(cnn, tmp_path):
    """Config, data, run directory and checkpoint paths with spaces and non-ASCII characters
    work end to end, and errors about them stay one line."""
    base = tmp_path / "dir with spaces" / "données 数据"
    base.mkdir(parents=True)
    data = base / "my shapes ü.npz"
    assert cnn("generate-shapes", "--out", data, "--n", 80).exit_code == 0
    config = write_config(base / "конфиг é.yaml", {
        "data": {"name": "npz", "path": str(data)}, "network": SHAPES_NET,
        "training": {"epochs": 2}})
    run = base / "rün 1 ✓"
    result = cnn("train", config, "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert str(run) in result.output
    assert cnn("eval", run / "best.npz", "--json").exit_code == 0
    result = cnn("train", "--resume", run, "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(read_metrics(run)) == 3
    assert_cli_error(cnn("eval", base / "nö such.npz"), base / "nö such.npz", "no such file")
    COUNTS["hostile"] += 4


def test_undecodable_paths_and_an_ascii_terminal(tmp_path):
    """A run directory whose name is not valid UTF-8, and non-ASCII paths printed to an ASCII
    terminal: training works, and messages are escaped, not a UnicodeEncodeError."""
    base = os.fsencode(tmp_path)
    env = dict(ENV, PYTHONIOENCODING="ascii")
    run = base + b"/r\xff\xfe"
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", str(SHAPES), "--run-dir", run,
                           "--epochs", "2"], capture_output=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(run + b"/last.npz")
    missing = base + b"/c\xff \xc3\xa9.yaml"
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", missing], capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 1
    err = done.stderr.decode("ascii")
    assert len(err.strip().splitlines()) == 1 and "no such file" in err and "Traceback" not in err
    assert "\\udcff" in err and "\\xe9" in err
    COUNTS["hostile"] += 2


# --------------------------------------------------------------------------- faults mid-run
# A run whose checkpoints are large (42k parameters + momentum: ~680 KB each, written with
# fsync), so that kills often land while a checkpoint is being written.
FAULT_EPOCHS = 24
FAULT_ARGS = ["--set", "data.n=2000", "--set", "training.shuffle=true", "--set", MOMENTUM,
              "--set", "network.2.out_features=2000", "--epochs", str(FAULT_EPOCHS)]


def start_train(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnncli", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, **kw)


def train_to_the_end(args) -> None:
    """``cnn train ARGS`` in a subprocess, like the faulted runs it is compared with."""
    proc = start_train(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run every faulted run must end up equal to."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train_to_the_end([SHAPES, "--run-dir", run, "--quiet", *FAULT_ARGS])
    assert len(read_metrics(run)) == FAULT_EPOCHS
    return run


def check_consistent(run: Path) -> int:
    """After any fault: last.npz (when there) loads, best.npz too, metrics.csv parses and holds
    the epochs of last.npz (or one fewer: a kill between the two writes). Returns the epoch."""
    epoch = 0
    if (run / "last.npz").exists():
        _, meta = load_checkpoint(run / "last.npz")
        epoch = meta["epoch"]
        assert epoch >= 1
        _, best = load_checkpoint(run / "best.npz")
        assert 1 <= best["epoch"]
    if (run / "metrics.csv").exists():
        rows = read_metrics(run)
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        assert len(rows) in (epoch, epoch - 1), (len(rows), epoch)
    if (run / "config.yaml").exists():
        load_config(run / "config.yaml")
    return epoch


def _epoch_lines(run: Path) -> int:
    try:
        return (run / "train.log").read_text(errors="replace").count(f"/{FAULT_EPOCHS}  train loss")
    except OSError:
        return 0


def _writing(run: Path, pid: int) -> bool:
    try:
        return any(name.endswith(f".{pid}.tmp") and not name.startswith(".write-test")
                   for name in os.listdir(run))
    except OSError:
        return False


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, reference_run):
    """A run killed with SIGKILL six times and restarted each time (``--resume`` once
    config.yaml exists): the first kill at a random moment of the start (imports, data, run
    directory), then alternately at a random moment shortly after an epoch of the restarted
    process ended (training, or writing best.npz, last.npz, metrics.csv, train.log, curves.png)
    and the moment a temporary file appears (in the middle of an atomic write). After
    every kill last.npz loads and agrees with metrics.csv, and no finished epoch is lost; the
    last --resume ends with metrics and parameters identical to the uninterrupted run, with no
    temporary file left."""
    run = tmp_path / "killed run"
    rng = np.random.default_rng(7)
    epochs_seen = []
    for i in range(6):
        args = (["--resume", run] if (run / "config.yaml").exists()
                else [SHAPES, "--run-dir", run, *FAULT_ARGS])
        before = _epoch_lines(run)
        proc = start_train(args)
        deadline = time.time() + 60
        if i == 0:
            time.sleep(float(rng.uniform(0.05, 0.9)))
        elif i % 2:
            while _epoch_lines(run) <= before and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.12)))
        else:  # the moment a temporary file appears: in the middle of an atomic write
            while proc.poll() is None and not _writing(run, proc.pid):
                assert time.time() < deadline
        finished = proc.poll() is not None
        proc.kill()
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, err
        if not finished:
            COUNTS["faults"] += 1
            if run.exists() and any(p.name.endswith(".tmp") for p in run.iterdir()):
                COUNTS["kills during a write"] += 1
        epochs_seen.append(check_consistent(run))
    assert epochs_seen[-1] < FAULT_EPOCHS, "the kills came too late to test anything"
    train_to_the_end(["--resume", run, "--quiet"])
    same_run(run, reference_run)
    no_temporary_files(run)
    assert epochs_seen == sorted(epochs_seen)  # a kill never loses a finished epoch


def test_kill_during_the_first_moments_leaves_a_restartable_directory(cnn, tmp_path):
    """Killed before config.yaml exists, the directory holds at most the lock and temporary
    files: a new ``cnn train --run-dir`` into it is allowed."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("12345\n")
    (run / ".config.yaml.12345.tmp").write_text("seed: 0\n")
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet")
    COUNTS["faults"] += 1
    assert result.exit_code == 0, result.output
    no_temporary_files(run)


def test_resume_removes_temporary_files_of_a_killed_run(cnn, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in (".last.npz.999.tmp", ".metrics.csv.999.tmp", ".curves.png.42.tmp"):
        (run / name).write_bytes(b"half a file")
    (run / "notes.tmp").write_text("mine")  # not ours: kept
    result = cnn("train", "--resume", run, "--epochs", 4, "--quiet")
    COUNTS["faults"] += 3
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]


FSIZE_SCRIPT = r"""
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from cnncli.checkpoint import save_checkpoint
from cnncli.errors import CnnError
from cnncli.run import RunDir


class Trainer:  # what RunDir.save_epoch asks of a trainer
    history = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 1.0,
                "test_accuracy": 0.5, "seconds": 0.1, "learning_rate": 0.1}]

    def state(self):
        return {"layers.0.W": np.zeros(5000)}, {"epoch": 2, "history": self.history * 2}


d = Path(sys.argv[1])
run = RunDir(d)
meta = {"config": {}, "epoch": 1, "input_shape": [1], "class_names": ["a"]}
save_checkpoint(d / "last.npz", {"layers.0.W": np.ones(10)}, meta)
run.write("metrics.csv", "epoch\n1\n")
run.log("line one")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
out = {}
for name, write in [
    ("last.npz", lambda: save_checkpoint(d / "last.npz", {"layers.0.W": np.zeros(5000)}, dict(meta, epoch=2))),
    ("metrics.csv", lambda: run.write("metrics.csv", "epoch\n" + "2\n" * 5000)),
    ("train.log", lambda: run.log("x" * 10000)),
    ("save_epoch", lambda: run.save_epoch(Trainer(), {"config": {}, "input_shape": [1], "class_names": ["a"]}, True)),
]:
    try:
        write()
        out[name] = "written"
    except CnnError as exc:
        out[name] = str(exc)
    except OSError as exc:
        out[name] = "OSError " + str(exc)
print(json.dumps(out))
"""

def test_full_disk_while_writing_each_file(tmp_path):
    """RLIMIT_FSIZE (writes beyond 4 KB fail with EFBIG, as on a full disk) while writing a
    checkpoint, metrics.csv, train.log and a whole epoch's files: a one-line error naming the
    file, the previous version intact byte for byte, and no temporary file left."""
    d = tmp_path / "run"
    d.mkdir()
    done = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(d)], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    COUNTS["faults"] += len(out)
    for name, msg in out.items():
        assert_one_line(msg)
        assert "File too large" in msg, (name, msg)
    assert out["last.npz"].startswith("OSError")  # the library call; RunDir words it (save_epoch)
    assert "metrics.csv: cannot write (File too large); the previous version is intact" in out["metrics.csv"]
    assert "train.log: cannot write (File too large)" in out["train.log"]
    assert "best.npz: cannot write the checkpoint" in out["save_epoch"]  # best first, then last
    arrays, meta = load_checkpoint(d / "last.npz")
    assert meta["epoch"] == 1 and np.all(arrays["layers.0.W"] == 1)
    assert not (d / "best.npz").exists()
    assert (d / "metrics.csv").read_text() == "epoch\n1\n"
    assert (d / "train.log").read_text() == "line one\n"  # not half a line more
    no_temporary_files(d)


def test_full_disk_mid_run_then_resume(tmp_path, reference_run):
    """A training run under RLIMIT_FSIZE set so that its checkpoint outgrows the limit a few
    epochs in: it stops with a one-line error naming the checkpoint; last.npz, best.npz and
    metrics.csv hold the last good epoch, no temporary file is left; without the limit,
    --resume finishes with the uninterrupted run's result."""
    arrays, meta = load_checkpoint(reference_run / "last.npz")
    probe = tmp_path / "probe.npz"
    sizes = []
    for k in (3, 4):
        m = dict(meta, epoch=k, history=meta["history"][:k])
        save_checkpoint(probe, arrays, {key: v for key, v in m.items() if key not in ("format_version", "cnncli_version")})
        sizes.append(probe.stat().st_size)
    limit = (sizes[0] + sizes[1]) // 2  # between the sizes at epochs 3 and 4
    run = tmp_path / "run"

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS], preexec_fn=limited)
    _, err = proc.communicate(timeout=120)
    COUNTS["faults"] += 1
    err = err.decode()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert ".npz: cannot write the checkpoint (File too large); the previous one is intact" in lines[0]
    epoch = check_consistent(run)
    assert 2 <= epoch < FAULT_EPOCHS, epoch
    assert len(read_metrics(run)) == epoch
    no_temporary_files(run)
    train_to_the_end(["--resume", run, "--quiet"])
    same_run(run, reference_run)


def test_full_tmpfs_mid_run_then_resume(tmp_path, tmpfs, reference_run):
    """The same on a real full file system (a 1.8 MB tmpfs: ENOSPC): a clear error, every file
    complete, and the run, copied to a roomier disk, resumes to the uninterrupted result."""
    mnt = tmpfs("1800k")  # room for two checkpoints and a bit: full at epoch 2
    run = mnt / "run"
    proc = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS])
    _, err = proc.communicate(timeout=120)
    COUNTS["faults"] += 1
    err = err.decode()
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0], lines[0]
    check_consistent(run)
    no_temporary_files(run)
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    train_to_the_end(["--resume", moved, "--quiet"])
    same_run(moved, reference_run)


def test_two_trainings_in_one_run_directory(cnn, tmp_path, reference_run):
    """While one ``cnn train`` runs, a second one in the same directory (a new run or a
    --resume) refuses in one line; the first finishes unharmed, equal to the uninterrupted run.
    Two starts racing for one empty directory: exactly one trains."""
    run = tmp_path / "run"
    first = start_train([SHAPES, "--run-dir", run, *FAULT_ARGS])
    deadline = time.time() + 60
    while not ((run / "metrics.csv").exists() and read_metrics(run)):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.02)
    assert_cli_error(cnn("train", SHAPES, "--run-dir", run, *FAULT_ARGS), run, "exists and is not empty")
    assert_cli_error(cnn("train", "--resume", run), run, "another cnn train is using this run directory")
    second = start_train(["--resume", run])
    _, err = second.communicate(timeout=60)
    assert second.returncode == 1 and b"is using this run directory" in err, err
    COUNTS["faults"] += 3
    assert first.wait(timeout=120) == 0, first.communicate()
    same_run(run, reference_run)

    race = tmp_path / "race"
    procs = [start_train([SHAPES, "--run-dir", race, *FAULT_ARGS, "--epochs", 3]) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    errs = [p.communicate()[1].decode() for p in procs]
    COUNTS["faults"] += 1
    assert codes == [0, 1], errs
    loser = [e for p, e in zip(procs, errs) if p.returncode == 1][0]
    assert ("is using this run directory" in loser or "exists and is not empty" in loser), loser
    assert check_consistent(race) == 3 and len(read_metrics(race)) == 3
    rows = strip_seconds(read_metrics(race))
    assert rows == strip_seconds(read_metrics(reference_run))[:3]  # the winner trained alone


def test_nan_mid_run_keeps_the_last_good_checkpoints(cnn, tmp_path, monkeypatch):
    """The learning rate jumps to 1e6 at epoch 3 (a fault injected into the schedule): training
    stops with the non-finite-loss message, naming the last good epoch; last.npz and best.npz
    hold epochs <= 2 with finite parameters, metrics.csv has 2 rows. --resume after the fault
    is gone continues to the result of a run that never saw it."""
    import cnncli.train as train_module

    linear = write_config(tmp_path / "linear.yaml", {**shapes_raw(), "network": SHAPES_NET[:-1]})
    normal = train_module.learning_rate_at
    monkeypatch.setattr(train_module, "learning_rate_at",
                        lambda t, epoch: 1e6 if epoch >= 3 else normal(t, epoch))
    run = tmp_path / "run"
    result = cnn("train", linear, "--run-dir", run, "--epochs", 6)
    COUNTS["faults"] += 1
    assert result.exit_code == 1
    line = assert_cli_error(result, "epoch 3, batch", "not finite", "lower learning rate",
                            f"{run / 'last.npz'} keeps epoch 2, the last good one")
    assert "1e+06" in line
    _, last = load_checkpoint(run / "last.npz")
    _, best = load_checkpoint(run / "best.npz")
    assert last["epoch"] == 2 and best["epoch"] <= 2
    for path in (run / "last.npz", run / "best.npz"):
        assert all(np.isfinite(v).all() for v in params(path).values())
    assert len(read_metrics(run)) == 2
    assert "keeps epoch 2" in (run / "train.log").read_text()
    no_temporary_files(run)

    monkeypatch.setattr(train_module, "learning_rate_at", normal)
    assert cnn("train", "--resume", run, "--quiet").exit_code == 0
    clean = tmp_path / "clean"
    assert cnn("train", linear, "--run-dir", clean, "--epochs", 6, "--quiet").exit_code == 0
    same_run(run, clean)

    assert_cli_error(cnn("train", linear, "--run-dir", tmp_path / "at-once", "--lr", "1e6"),
                     "epoch 1, batch", "no epoch had finished, so no checkpoint was written")
    assert not (tmp_path / "at-once" / "last.npz").exists()
