"""YAML config -> a validated, fully resolved config (a plain dict of plain values).

Sections: ``seed``, ``data``, ``network``, ``training``. Every problem is collected and reported
at once, each naming its place (``training.learning_rate: must be a number > 0, got -0.1``).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from cnncli.errors import ConfigError, about_value
from cnncli.schema import (
    Field,
    SchemaError,
    boolean,
    choice,
    integer,
    key_name,
    number,
    optional,
    short_repr,
    string,
    unknown_key_message,
    validate_section,
)
from cnncli.text import one_line

MAX_CONFIG_BYTES = 100_000  # the shipped configs are under 1 KB; parsing 100 KB of YAML takes ~1 s
SECTIONS = ("seed", "data", "network", "training")
MAX_DEPTH = 32  # a cnncli config nests 4 levels; far deeper is a broken or hostile file
MAX_INT_BITS = 64  # no setting takes a larger integer
MAX_PARAMS = 100_000_000  # parameters of one network (800 MB in float64, before gradients)
MAX_PROBLEM_CHARS = 400


class _Loader(yaml.SafeLoader):
    """safe_load, but numbers read as a user means them (``1e-3`` is 0.001, as in YAML 1.2)
    and no aliases (``*name``), which cnncli configs do not need and "billion laughs" abuse."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) "
                              "are not supported in cnncli configs; write the value out")
        if self.depth >= MAX_DEPTH:  # refused here, long before Python's recursion limit
            mark = self.peek_event().start_mark
            raise ConfigError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                              "a cnncli config nests a few levels")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str | None = None):
    """Parse YAML text with cnncli's loader; syntax errors become one-line ConfigErrors."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{what}", source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source) from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"invalid YAML: {_problem_line(exc)}", source) from None
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        # PyYAML's constructors of explicit tags fail so on values they cannot read
        # (``!!bool x``, ``!!timestamp 1``, ``!!int ''``)
        raise ConfigError(f"invalid YAML: a tagged value cannot be read ({type(exc).__name__}: "
                          f"{_problem_line(exc)})", source) from None


def _problem_line(text) -> str:
    return one_line(text, MAX_PROBLEM_CHARS, squeeze=False)


def _report(problems: list[str], limit: int = 20) -> list[str]:
    """Problems as reported: each one line, at most ``limit`` of them (then a count)."""
    out = [_problem_line(p) for p in problems[:limit]]  # keys and values may hold line breaks
    if len(problems) > limit:
        out.append(f"and {len(problems) - limit:,} more")
    return out


def structure_problems(raw) -> list[str]:
    """Problems of shape rather than meaning, found before anything looks at the values (whose
    messages would print them): nesting deeper than MAX_DEPTH, integers of more than
    MAX_INT_BITS bits. Walks iteratively, so any depth is safe."""
    problems: list[str] = []
    stack = [(raw, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return [f"{where}: nested more than {MAX_DEPTH} levels deep; a cnncli config nests a "
                    "few levels"]
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{key_name(k)}" if where else key_name(k), depth + 1)
                         for k, v in value.items())
            stack.extend((k, f"{where} (a key)" if where else "a key", depth + 1)
                         for k in value if isinstance(k, int))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            problems.append(f"{where or 'the config'}: an integer of {value.bit_length()} bits "
                            f"is far too large for any setting")
            if len(problems) >= 10:
                break
    return problems


def read_config_file(path) -> dict:
    """The raw mapping in a config file, or a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("no such file", str(path))
    if path.is_dir():
        raise ConfigError("is a directory, expected a YAML config file", str(path))
    from cnncli.files import FileProblem, read_regular

    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except FileProblem as exc:
        if exc.problem.startswith("is "):  # too large
            raise ConfigError(f"{exc.problem.split(';')[0]}; a config may be at most "
                              f"{MAX_CONFIG_BYTES:,}", str(path)) from None
        raise ConfigError(exc.problem, str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte {exc.start})", str(path)) from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise ConfigError("is empty; expected the sections seed, data, network, training", str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping with the sections {', '.join(SECTIONS)}, got "
                          f"{type(raw).__name__}", str(path))
    problems = structure_problems(raw)
    if problems:
        raise ConfigError(_report(problems), str(path))
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["training.epochs=3", "data.noise=0.1"]`` -> a copy of raw with those values set.
    Values are parsed as YAML scalars (``3`` is an int, ``1e-3`` a float, ``true`` a bool)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise _override_error(repr(item), "expected KEY=VALUE, e.g. training.epochs=3")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise _override_error(short_repr(item),
                                  "the key must be dotted names like training.epochs")
        node = raw
        for p in parts[:-1]:
            if isinstance(node, list) and p.isascii() and p.isdigit() and int(p) < len(node):
                node = node[int(p)]
                continue
            if not isinstance(node, dict):
                raise _override_error(short_repr(item), f"{short_repr(p)} is not a section")
            if node.get(p) is None:  # a missing section, or one left empty (``training:``)
                node[p] = {}
            node = node[p]
        if not isinstance(node, dict):
            raise _override_error(short_repr(item),
                                  f"cannot set a key inside a {type(node).__name__}")
        try:
            node[parts[-1]] = parse_yaml(value, f"override {key_name(key.strip())}")
        except ConfigError as exc:
            raise _override_error(key_name(key.strip()), exc.problems) from None
        _one_learning_rate(raw, parts)
    return raw


def _override_error(shown: str, problem) -> ConfigError:
    """A bad ``KEY=VALUE`` override: "override <shown>: <problem>" (``cnn``: "--set <shown>")."""
    return about_value(ConfigError(problem, f"override {shown}"), "override", shown, problem)


def _one_learning_rate(raw: dict, parts: list[str]) -> None:
    """The learning rate may stand in ``training.learning_rate`` or in
    ``training.optimizer.learning_rate``; an override of one replaces the other (``--lr`` works
    whichever place the file used)."""
    training = raw.get("training")
    if not isinstance(training, dict):
        return
    optimizer = training.get("optimizer")
    if parts == ["training", "learning_rate"] and isinstance(optimizer, dict):
        optimizer.pop("learning_rate", None)
    elif parts == ["training", "optimizer", "learning_rate"]:
        training.pop("learning_rate", None)


def _tta(value):
    """``training.tta``: flip or flip_shift; none (like null) turns it off."""
    from cnncli.tta import TTA_MODES

    return None if value == "none" else choice(*TTA_MODES, "none")(value)


TRAINING_FIELDS = {
    "epochs": Field(10, integer(1)),
    "batch_size": Field(16, integer(1)),
    "learning_rate": Field(0.1, number(0.0)),
    "loss": Field("mse", lambda v: v if isinstance(v, dict) else choice("mse", "cross_entropy")(v)),
    "dtype": Field("float64", choice("float64", "float32")),
    "shuffle": Field(True, boolean),
    "drop_last": Field(False, boolean),  # skip a last batch smaller than batch_size
    "optimizer": Field(None, lambda v: v),
    "schedule": Field(None, lambda v: v),
    "early_stopping": Field(None, lambda v: v),
    "threads": Field(None, optional(integer(1))),
    "impl": Field(None, optional(choice("fast", "reference"))),  # None: each layer's own
    "tta": Field(None, optional(_tta)),  # the per-epoch test accuracy
    "ema": Field(None, optional(number(0.0, maximum=1.0, max_strict=True))),  # cnncli/ema.py
    # fine-tuning (cnncli.finetune): a checkpoint to start from, how many leading layers to
    # load from it (None: every leading layer that matches), the layers kept unchanged
    "init_from": Field(None, optional(string)),
    "init_from_layers": Field(None, optional(integer(1))),
    "freeze": Field(None, optional(lambda v: _check_freeze(v))),
}


def _check_freeze(value):
    from cnncli.freeze import check_freeze

    return check_freeze(value)

_unit = number(0.0, strict=False, maximum=1.0, max_strict=True)
OPTIMIZER_FIELDS = {
    "sgd": {"momentum": Field(0.0, _unit), "nesterov": Field(False, boolean),
            "weight_decay": Field(0.0, number(0.0, strict=False))},
    "adam": {"beta1": Field(0.9, _unit), "beta2": Field(0.999, _unit),
             "eps": Field(1e-8, number(0.0)), "weight_decay": Field(0.0, number(0.0, strict=False))},
}
_WARMUP = {"warmup_epochs": Field(0.0, number(0.0, strict=False)),  # any schedule; fractional
           "warmup_start_factor": Field(0.01, number(0.0, maximum=1.0))}
SCHEDULE_FIELDS = {
    "constant": {**_WARMUP},
    "step": {"step_size": Field(10, integer(1)), "gamma": Field(0.1, number(0.0, maximum=1.0)),
             **_WARMUP},
    "cosine": {"min_lr": Field(0.0, number(0.0, strict=False)),
               "interval": Field("epoch", choice("epoch", "step")), **_WARMUP},
    "onecycle": {"pct_start": Field(0.3, number(0.0, maximum=1.0, max_strict=True)),
                 "div_factor": Field(25.0, number(0.0)),
                 "final_div_factor": Field(1e4, number(0.0)), **_WARMUP},
}
def _class_weights(v):
    """``auto``, a list of weights (one per class) or a mapping {class name: weight}; weights
    are numbers >= 0, not all 0."""
    if v == "auto":
        return v
    weight = number(0.0, strict=False)
    if isinstance(v, (list, tuple)) and v:
        out = [weight(w) for w in v]
    elif isinstance(v, dict) and v:
        if not all(isinstance(k, str) for k in v):
            raise SchemaError(f"the keys of a mapping must be class names, got {short_repr(v)}")
        out = {k: weight(w) for k, w in v.items()}
    else:
        raise SchemaError(f"must be auto, a list of weights (one per class) or a mapping "
                          f"{{class name: weight}}, got {short_repr(v)}")
    if not any((out.values() if isinstance(out, dict) else out)):
        raise SchemaError("the weights must not all be 0")
    return out


LOSS_FIELDS = {"name": Field("cross_entropy", choice("mse", "cross_entropy")),
               "label_smoothing": Field(0.0, number(0.0, strict=False, maximum=1.0,
                                                    max_strict=True)),
               "class_weights": Field(None, optional(_class_weights))}


def _loss_section(value, problems: list) -> dict | str | None:
    """``training.loss``: a name (``mse``, ``cross_entropy``) stays as it is; the mapping form
    ``{name: cross_entropy, label_smoothing: 0.1, class_weights: auto}`` is checked and filled."""
    if not isinstance(value, dict):
        return value
    out = validate_section("training.loss", value, LOSS_FIELDS, problems)
    if out.get("name") == "mse":
        for key in ("label_smoothing", "class_weights"):
            if value.get(key) not in (None, 0, 0.0):
                problems.append(f"training.loss.{key}: only cross_entropy takes it (the loss is "
                                f"mse)")
    return out


EARLY_STOPPING_FIELDS = {"patience": Field(5, integer(1)),
                         "min_delta": Field(0.0, number(0.0, strict=False))}


def _named_section(where, value, kinds: dict, problems, default_name, extra=()):
    """A mapping with a ``name`` choosing one of ``kinds``, each with its own fields."""
    if value is None:
        value = {"name": default_name}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping like {{name: {default_name}}}, got "
                        f"{short_repr(value)}")
        return None
    name = value.get("name", default_name)
    try:
        choice(*kinds)(name)
    except SchemaError as exc:
        problems.append(f"{where}.name: {exc}")
        return None
    fields = {"name": Field(name, lambda v: v), **kinds[name], **{k: Field(None, lambda v: v) for k in extra}}
    return validate_section(where, value, fields, problems)


def validate(raw: dict, source: str | None = None, known_data: tuple | None = None) -> dict:
    """Check every section, fill in defaults and return the resolved config; raises one
    ConfigError listing every problem. ``known_data``: (input shape, number of classes), to
    check the network without looking at the dataset (a checkpoint's own record)."""
    from cnncli.data import DATASETS, dataset_fields

    if not isinstance(raw, dict):
        raise ConfigError(f"must be a mapping with the sections {', '.join(SECTIONS)}, got "
                          f"{type(raw).__name__}", source)
    problems = structure_problems(raw)
    if problems:
        raise ConfigError(_report(problems), source)
    for key in raw:
        if key not in SECTIONS:
            problems.append(f"{key_name(key)}: "
                            f"{unknown_key_message(key, SECTIONS).replace('key', 'section', 1)}")
    cfg: dict = {}
    try:
        cfg["seed"] = integer(0, 2**32 - 1)(raw.get("seed", 0))
    except SchemaError as exc:
        problems.append(f"seed: {exc}")

    data = raw.get("data")
    if data is None:
        problems.append(f"data: is required (a mapping with name: one of {', '.join(DATASETS)})")
    elif not isinstance(data, dict):
        problems.append(f"data: must be a mapping like {{name: shapes}}, got {short_repr(data)}")
    else:
        name = data.get("name")
        if not isinstance(name, str) or name not in DATASETS:
            try:
                choice(*DATASETS)(name)
            except SchemaError as exc:
                problems.append(f"data.name: {exc}" if "name" in data else
                                f"data.name: is required (one of {', '.join(DATASETS)})")
        else:
            fields = {"name": Field(name, lambda v: v), **dataset_fields(name)}
            cfg["data"] = validate_section("data", data, fields, problems)

    training = validate_section("training", raw.get("training"), TRAINING_FIELDS, problems)
    if training:
        opt = _named_section("training.optimizer", training.get("optimizer"), OPTIMIZER_FIELDS,
                             problems, "sgd", extra=("learning_rate",))
        if opt is not None:
            lr = opt.pop("learning_rate", None)
            if lr is not None:
                try:
                    lr = number(0.0)(lr)
                    if "learning_rate" in (raw.get("training") or {}) and \
                            lr != training.get("learning_rate", lr):
                        problems.append("training.optimizer.learning_rate: differs from "
                                        "training.learning_rate; give it once")
                    training["learning_rate"] = lr
                except SchemaError as exc:
                    problems.append(f"training.optimizer.learning_rate: {exc}")
            training["optimizer"] = opt
        sched = _named_section("training.schedule", training.get("schedule"), SCHEDULE_FIELDS,
                               problems, "constant")
        lr = training.get("learning_rate")
        if sched and sched["name"] == "cosine" and "min_lr" in sched and lr is not None \
                and sched["min_lr"] >= lr:
            problems.append(f"training.schedule.min_lr: must be below training.learning_rate "
                            f"({lr:g}), the rate the cosine schedule falls from, got "
                            f"{sched['min_lr']:g}")
        if sched and training.get("epochs") is not None and \
                sched.get("warmup_epochs", 0) > training["epochs"]:
            problems.append(f"training.schedule.warmup_epochs: must be at most training.epochs "
                            f"({training.get('epochs')}), got {sched['warmup_epochs']:g}")
        training["schedule"] = sched
        training["loss"] = _loss_section(training.get("loss"), problems)
        es = training.get("early_stopping")
        if es is not None:
            training["early_stopping"] = validate_section("training.early_stopping", es,
                                                          EARLY_STOPPING_FIELDS, problems)
        cfg["training"] = training

    network = raw.get("network")
    if network is None:
        problems.append("network: is required (a list of layers like - {type: conv2d, ...})")
    elif not isinstance(network, list) or not network:
        problems.append(f"network: must be a non-empty list of layers, got {short_repr(network)}")
    else:  # checked even when other sections have problems: every problem is reported at once
        data_ok = "data" in cfg and not any(p.startswith("data") for p in problems)
        training_ok = not any(p.startswith("training") for p in problems)
        if data_ok or known_data:
            cfg["network"] = _check_network(cfg, network, problems, known_data, training_ok)
            if training_ok and cfg["network"]:
                from cnncli.freeze import freeze_problem

                problems.extend(freeze_problem(cfg["training"]["freeze"],
                                               cfg["training"]["init_from_layers"],
                                               len(cfg["network"])))
        else:  # no input shape to build against: check the layer types and keys
            problems.extend(_layer_spec_problems(network))
    if problems:
        raise ConfigError(_report(problems), source)
    return {k: cfg[k] for k in SECTIONS}


LOGIT_LAYERS = ("dense", "global_avg_pool2d", "softmax")  # what cross_entropy may follow


def _layer_spec_problems(network: list) -> list[str]:
    """Unknown layer types and keys, found without building the network."""
    from cnncli.layers import layer_class
    from cnncli.layers.base import check_keys

    problems = []
    for i, spec in enumerate(network):
        if not isinstance(spec, dict):
            problems.append(f"network[{i}]: must be a mapping like {{type: relu}}, got "
                            f"{short_repr(spec)}")
            continue
        kind = spec.get("type")
        where = f"network[{i}] ({kind})" if isinstance(kind, str) else f"network[{i}]"
        try:
            check_keys(layer_class(kind), {k: v for k, v in spec.items() if k != "type"})
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
    return problems


def _check_network(cfg: dict, network: list, problems: list, known_data=None,
                   training_ok: bool = True) -> list:
    """Build the network once against the dataset's input shape; return the resolved specs."""
    from cnncli.data import DATASETS
    from cnncli.errors import CnnError
    from cnncli.network import build_network

    try:
        in_shape, n_classes = known_data or DATASETS[cfg["data"]["name"]].describe(cfg["data"])
    except CnnError as exc:
        problems.append(f"data: {exc}")
        problems.extend(_layer_spec_problems(network))
        return []
    try:
        net = build_network(network, in_shape, _BudgetRng(MAX_PARAMS))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return []
    except MemoryError:
        problems.append("network: too large to build in memory")
        return []
    out = net.output_shape
    if out != (n_classes,):
        problems.append(f"network: outputs {'x'.join(map(str, out))} values per sample, but the "
                        f"{cfg['data']['name']} data has {n_classes} classes (end with a dense "
                        f"layer of out_features: {n_classes})")
    loss = cfg["training"].get("loss") if training_ok else None
    weights = loss.get("class_weights") if isinstance(loss, dict) else None
    if isinstance(weights, list) and len(weights) != n_classes:
        problems.append(f"training.loss.class_weights: {len(weights)} weight(s) given, but the "
                        f"{cfg['data']['name']} data has {n_classes} classes (one per class, in "
                        f"label order)")
    if isinstance(loss, dict):
        loss = loss.get("name")
    if training_ok and loss == "cross_entropy" \
            and net.layers[-1].type_name not in LOGIT_LAYERS:
        problems.append(f"training.loss: cross_entropy needs the network to end in a dense layer "
                        f"(logits), a global_avg_pool2d (one logit per channel) or a softmax "
                        f"layer, not {net.layers[-1].type_name}")
    return net.specs


class _BudgetRng:
    """Draws the throwaway initial weights of the network built to check a config, and refuses
    (ConfigError) a draw that would take it past ``budget`` parameters, before anything is
    allocated: ``out_features: 1000000000000`` is a clear error, never an attempt to allocate
    terabytes. Layers draw their weights with ``standard_normal(shape)``; anything else is
    passed to a real Generator."""

    def __init__(self, budget: int):
        import numpy as np

        self._np = np
        self._rng = np.random.default_rng(0)
        self.left = budget
        self.budget = budget

    def standard_normal(self, size=None, *args, **kw):
        shape = (size,) if isinstance(size, int) else tuple(size or ())
        count = 1
        for d in shape:
            count *= int(d)
        if count > self.left:
            raise ConfigError(f"its weights ({'x'.join(map(str, shape))} = {count:,} values) take "
                              f"the network past {self.budget:,} parameters, more than cnncli "
                              "can train")
        self.left -= count
        return self._np.zeros(shape)  # the checking network is thrown away: no need to draw

    def __getattr__(self, name):
        return getattr(self._rng, name)


def _absolute(raw: dict, section: str, key: str, base) -> dict:
    """``raw`` with a relative path at ``raw[section][key]`` made absolute against the folder
    ``base`` (``~`` expanded first); anything else, such as a path that is not a string, is
    left to validation. The path is not resolved further (symlinks stay as written)."""
    part = raw.get(section) if isinstance(raw, dict) else None
    path = part.get(key) if isinstance(part, dict) else None
    if isinstance(path, str) and path and "\0" not in path:
        path = os.path.expanduser(path)
        part[key] = os.path.normpath(os.path.join(os.path.abspath(base), path))
    return raw


def absolute_data_path(raw: dict, base) -> dict:
    """``raw`` with a relative ``data.path`` made absolute against the folder ``base``."""
    return _absolute(raw, "data", "path", base)


def absolute_init_from(raw: dict, base) -> dict:
    """``raw`` with a relative ``training.init_from`` made absolute against ``base``."""
    return _absolute(raw, "training", "init_from", base)


def read_config(path, overrides: list[str] = ()) -> dict:
    """The raw mapping of a config file with its overrides applied, and ``data.path`` absolute:
    a path written in the file is relative to the file's folder (as most tools read paths in
    their config files), a path given with ``--set data.path=...`` to the current directory (as
    a shell reads it)."""
    raw = absolute_data_path(read_config_file(path), Path(path).parent)
    raw = absolute_init_from(raw, Path(path).parent)
    if overrides:
        raw = absolute_data_path(apply_overrides(raw, list(overrides)), Path.cwd())
        raw = absolute_init_from(raw, Path.cwd())
    return raw


def load_config(path, overrides: list[str] = ()) -> dict:
    """Read, override, validate: the resolved config of a file (``data.path`` absolute, see
    read_config)."""
    return validate(read_config(path, overrides), str(path))


def dump_config(cfg: dict) -> str:
    """The resolved config as YAML, in section order."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=100)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as ``key: a -> b``."""
    out = []
    for key in list(dict.fromkeys([*a, *b])):
        where = f"{prefix}{key_name(key)}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, where + ".")
        elif va != vb:
            out.append(f"{where}: {short_repr(va, 80)} -> {short_repr(vb, 80)}")
    return out
