"""Broken and hostile configs: configs and YAML files mutated at random, random ``--set``
overrides, hostile files (huge, billion laughs, Python tags, deep nesting...), bad option
values, and validation that reports every problem at once with the same limits by every door.

Every hostile input ends in one line naming the file and the problem, exit code 1 and no
traceback (in-process: only a cnncli.errors.CnnError with a one-line message); the CLI's
"unexpected ... (a bug in cnncli ...)" line counts as a failure.

The random cases use hypothesis with ``derandomize=True`` and bounded example counts, and numpy
Generators with fixed seeds, so every run tries the same cases (helpers.COUNTS counts them; the
count is printed at the end of the session).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cnncli.config import apply_overrides, dump_config, load_config, parse_yaml, validate
from cnncli.errors import CnnError
from conftest import ROOT
from helpers import COUNTS, SHAPES, assert_cli_error, assert_one_line, error_line, fuzz, nest


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


deep_list = st.integers(2, 3000).map(lambda n: nest(n))


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
            node[key] = nest(draw(st.integers(1, 2000))) if draw(st.booleans()) else [node[key]]
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


def test_every_problem_is_reported_at_once(cnn, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {name: shapes, nosie: 0.1}\nnetwork:\n  - {type: conv2d, out_channels: 4, kernel_size: 2}\n"
                      "  - {type: flaten}\n  - {type: dense, out_features: 4}\n"
                      "training: {epochs: 0}\n")
    line = error_line(cnn("summary", config))
    assert "data.nosie: unknown key (did you mean 'noise'?)" in line
    assert "unknown layer type 'flaten' (did you mean 'flatten'?)" in line
    assert "training.epochs" in line
    config.write_text("data: {name: shapez}\nnetwork:\n  - {type: flaten}\n  - {type: dense, out_featurs: 4}\n")
    line = error_line(cnn("summary", config))
    assert "data.name" in line and "'flaten'" in line and "'out_featurs'" in line


def test_cosine_min_lr_must_be_below_the_learning_rate(cnn, tmp_path):
    line = error_line(cnn("summary", SHAPES, "--set", "training.schedule={name: cosine, min_lr: 5}"))
    assert "training.schedule.min_lr: must be below training.learning_rate (0.1)" in line
    assert cnn("summary", SHAPES, "--set", "training.schedule={name: cosine, min_lr: 0.01}").exit_code == 0


def test_hostile_shapes_values_get_the_same_limits_by_every_door(cnn, tmp_path):
    line = error_line(cnn("summary", SHAPES, "--set", "data.noise=1e308"))
    assert "data.noise: must be a number >= 0 and <= 1000" in line and "OverflowError" not in line
    line = error_line(cnn("train", SHAPES, "--set", "data.n=100000000", "--run-dir", tmp_path / "r"))
    assert "data.n: must be an integer >= 2 and <= 10000000" in line
    for option, value, limit in [("--n", "100000000", "10000000"), ("--noise", "1e308", "1000")]:
        result = cnn("generate-shapes", "-o", tmp_path / "s.npz", option, value)
        line = error_line(result, code=2)
        assert option in line and limit in line
    assert not (tmp_path / "s.npz").exists()
