"""The sweep file: which config to start from, what to search, how many trials, and the metric.

```yaml
base: ../shapes.yaml            # relative to the sweep file
trials: 12                      # complete + pruned trials wanted
metric: test_accuracy           # a metrics.csv column; a trial's value is its best epoch's
direction: maximize             # or minimize (default: maximize for accuracies, else minimize)
sampler: tpe                    # tpe (default), random, grid
pruner: none                    # none (default), median, hyperband
seed: 0                         # the sampler's seed (default: the base config's seed)
space:                          # dotted keys, exactly as --set takes them
  training.learning_rate: {low: 0.01, high: 1.0, log: true}
  training.batch_size: {choices: [8, 16, 32]}
  network.2.out_features: {low: 4, high: 32, step: 4}
```

``load_sweep`` checks everything and reports every problem at once (a ConfigError); the result
is a plain dict, written to the sweep directory as ``sweep.yaml``. Each trial's config is the base
config with the sampled values set (``trial_config``), then validated like any config.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnncli.config import apply_overrides, read_config, read_config_file, validate
from cnncli.errors import ConfigError
from cnncli.schema import _is_int, _is_real, key_name, short_repr, unknown_key_message

KEYS = ("base", "trials", "metric", "direction", "sampler", "pruner", "seed", "space")
METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
RANGE_KEYS = ("low", "high", "log", "step")
MAX_TRIALS = 100_000
MAX_ABS = 1e15  # a range's bounds: beyond this, high - low overflows or ints lose exactness
MAX_STEPS = 1_000_000  # values of one stepped range (a float step of 1e-300 is a mistake)
MAX_GRID = 1_000_000  # points of a whole grid (built in memory by the grid sampler)


def load_sweep(path, trials: int | None = None) -> dict:
    """Read and check a sweep file; ``trials`` overrides its trial count. Returns the resolved
    sweep: ``name``, ``base`` (absolute path), ``base_config`` (the base file's mapping), the
    settings with their defaults, and ``space`` normalised (each entry a dict with ``kind``
    float, int or choice)."""
    path = Path(path)
    raw = read_config_file(path)  # the same reading rules and one-line errors as a config
    source = str(path)
    problems: list[str] = []
    for key in raw:
        if key not in KEYS:
            problems.append(f"{key_name(key)}: {unknown_key_message(key, KEYS)}")
    sweep: dict = {"name": path.stem}

    base_cfg = base_raw = None
    base = raw.get("base")
    if base is None:
        problems.append("base: is required (the config every trial starts from, relative to "
                        "this file)")
    elif not isinstance(base, str) or not base:
        problems.append(f"base: must be the path of a config file, got {short_repr(base)}")
    else:
        base_path = (path.parent / base).resolve()
        sweep["base"] = str(base_path)
        try:
            base_raw = read_config(base_path)  # data.path made absolute, from the base's folder
            base_cfg = validate(base_raw, str(base_path))
        except ConfigError as exc:
            problems.append(f"base: {exc}")

    _check_settings(raw, sweep, problems, base_cfg, base_raw, trials)
    if problems:
        raise ConfigError(problems, source)
    sweep["base_config"] = base_raw
    return sweep


def _check_settings(raw: dict, sweep: dict, problems: list[str], base_cfg, base_raw,
                    trials: int | None = None, record: bool = False) -> None:
    """The settings of a sweep file (or, ``record``, of a sweep directory's sweep.yaml, whose
    space entries carry their ``kind``) checked into ``sweep``; problems appended."""
    n = raw.get("trials", 10) if trials is None else trials
    if not _is_int(n) or not 1 <= n <= MAX_TRIALS:
        problems.append(f"trials: must be an integer >= 1 and <= {MAX_TRIALS:,}, got {short_repr(n)}")
    sweep["trials"] = n

    metric = raw.get("metric", "test_accuracy")
    if metric not in METRICS:
        problems.append(f"metric: {_one_of(metric, METRICS)} (a metrics.csv column)")
    sweep["metric"] = metric
    default_direction = "maximize" if "accuracy" in str(metric) else "minimize"
    direction = raw.get("direction", default_direction)
    if direction not in ("maximize", "minimize"):
        problems.append(f"direction: {_one_of(direction, ('maximize', 'minimize'))}")
    sweep["direction"] = direction
    for key, options, default in (("sampler", SAMPLERS, "tpe"), ("pruner", PRUNERS, "none")):
        value = raw.get(key, default)
        if value is None and key == "pruner":
            value = "none"
        if value not in options:
            problems.append(f"{key}: {_one_of(value, options)}")
        sweep[key] = value
    seed = raw.get("seed", base_cfg["seed"] if base_cfg else 0)
    if not _is_int(seed) or not 0 <= seed < 2**32:
        problems.append(f"seed: must be an integer >= 0 and < 2**32, got {short_repr(seed)}")
    sweep["seed"] = seed

    space = raw.get("space")
    sweep["space"] = {}
    if not isinstance(space, dict) or not space:
        problems.append("space: must be a mapping of dotted keys to ranges, like "
                        "{training.learning_rate: {low: 0.01, high: 1.0, log: true}}, got "
                        f"{short_repr(space)}")
    else:
        for key, rng in space.items():
            if record and isinstance(rng, dict):
                rng = {k: v for k, v in rng.items() if k != "kind"}
                if rng.get("step") is None and "step" in rng:
                    del rng["step"]
            entry = _check_range(f"space.{key_name(key)}", rng, sweep["sampler"], problems)
            if base_cfg is not None and not _check_key(key, base_cfg, base_raw, problems):
                continue
            if entry is not None:
                sweep["space"][key] = entry
    if sweep["sampler"] == "grid" and not problems:
        size = grid_size(sweep["space"])
        if size > MAX_GRID:
            problems.append(f"space: the grid has {size:,} points; at most {MAX_GRID:,}")
        elif _is_int(n) and n > size:
            problems.append(f"trials: {n} is more than the {size} points of the grid; ask for at "
                            f"most {size}")


def _one_of(value, options) -> str:
    from cnncli.schema import SchemaError, choice

    try:
        choice(*options)(value)
    except SchemaError as exc:
        return str(exc)
    return ""


def _check_range(where: str, rng, sampler: str, problems: list[str]) -> dict | None:
    """One space entry -> ``{kind: float|int, low, high, log, step}`` or ``{kind: choice,
    choices}``; problems appended."""
    if not isinstance(rng, dict):
        problems.append(f"{where}: must be a range like {{low: 0.01, high: 1.0}} or "
                        f"{{choices: [8, 16]}}, got {short_repr(rng)}")
        return None
    if "choices" in rng:
        extra = [k for k in rng if k != "choices"]
        if extra:
            problems.append(f"{where}.{key_name(extra[0])}: a choices entry takes no other key")
        choices = rng["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: must be a non-empty list, got {short_repr(choices)}")
            return None
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            problems.append(f"{where}.choices: each choice must be a number, a string, true/false "
                            f"or null, got {short_repr(bad[0])}")
            return None
        if len(set(map(json.dumps, choices))) != len(choices):
            problems.append(f"{where}.choices: lists a value twice")
            return None
        return {"kind": "choice", "choices": choices}
    for key in rng:
        if key not in RANGE_KEYS:
            problems.append(f"{where}.{key_name(key)}: {unknown_key_message(key, RANGE_KEYS + ('choices',))}")
    low, high = rng.get("low"), rng.get("high")
    log, step = rng.get("log", False), rng.get("step")
    bad = False
    for name, v in (("low", low), ("high", high)):
        if v is None:
            problems.append(f"{where}.{name}: is required (or give choices: [...])")
            bad = True
        elif not _is_real(v) or v != v or v in (float("inf"), float("-inf")):
            problems.append(f"{where}.{name}: must be a finite number, got {short_repr(v)}")
            bad = True
        elif abs(v) > MAX_ABS:
            problems.append(f"{where}.{name}: must be between -{MAX_ABS:g} and {MAX_ABS:g}, got "
                            f"{short_repr(v)}")
            bad = True
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false, got {short_repr(log)}")
        bad = True
    if step is not None and (not _is_real(step) or not step > 0):
        problems.append(f"{where}.step: must be a number > 0, got {short_repr(step)}")
        bad = True
    if bad:
        return None
    kind = "int" if _is_int(low) and _is_int(high) and (step is None or _is_int(step)) else "float"
    if low > high:
        problems.append(f"{where}: low ({low}) is above high ({high})")
        return None
    if low == high:
        problems.append(f"{where}: the range is empty (low and high are both {low}); set a fixed "
                        "value in the base config instead")
        return None
    if log and low <= 0:
        problems.append(f"{where}.log: a log range needs low > 0, got low {low}")
        return None
    if log and step is not None:
        problems.append(f"{where}: log and step exclude each other")
        return None
    if step is not None and step > high - low:
        problems.append(f"{where}.step: {step} is wider than the range {low}..{high}")
        return None
    if step is not None and (high - low) / step > MAX_STEPS:
        problems.append(f"{where}.step: {step} makes more than {MAX_STEPS:,} values from {low} to "
                        f"{high}; give a coarser step")
        return None
    if sampler == "grid" and kind == "int" and (high - low) // (step or 1) + 1 > MAX_STEPS:
        problems.append(f"{where}: a grid of {(high - low) // (step or 1) + 1:,} values; the grid "
                        f"sampler takes at most {MAX_STEPS:,} per key (give a step, or choices)")
        return None
    if sampler == "grid" and kind == "float" and step is None:
        problems.append(f"{where}: the grid sampler needs discrete values: give a step or "
                        "choices, or use integer bounds")
        return None
    if kind == "int":
        return {"kind": "int", "low": int(low), "high": int(high), "log": log,
                "step": int(step) if step is not None else 1}
    return {"kind": "float", "low": float(low), "high": float(high), "log": log,
            "step": float(step) if step is not None else None}


def _check_key(key, base_cfg: dict, base_raw: dict, problems: list[str]) -> bool:
    """A dotted key must name a setting of the resolved base config (defaults count), and
    ``--set`` must take it."""
    where = f"space.{key_name(key)}"
    if not isinstance(key, str) or not key:
        problems.append(f"{where}: a key must be a dotted name like training.learning_rate")
        return False
    node, done = base_cfg, []
    for part in key.split("."):
        if isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node, done = node[int(part)], done + [part]
            continue
        if isinstance(node, dict) and part in node:
            node, done = node[part], done + [part]
            continue
        prefix = ".".join(done)
        if isinstance(node, dict):
            known = [f"{prefix}.{k}" if prefix else str(k) for k in node]
            full = ".".join(done + [part])
            problems.append(f"{where}: {unknown_key_message(full, known)}")
        elif isinstance(node, list):
            problems.append(f"{where}: {prefix} is a list of {len(node)}; {part!r} is not an "
                            f"index 0..{len(node) - 1}")
        else:
            problems.append(f"{where}: {prefix} is a value ({short_repr(node)}), not a section")
        return False
    if isinstance(node, (dict, list)):
        problems.append(f"{where}: names a whole section; sweep one of its values, like {key}.…")
        return False
    try:
        apply_overrides(base_raw, [f"{key}={json.dumps(node)}"])
    except ConfigError as exc:
        problems.append(f"{where}: {exc}")
        return False
    return True


def grid_space(space: dict) -> dict[str, list]:
    """The grid sampler's points per parameter."""
    out = {}
    for key, e in space.items():
        if e["kind"] == "choice":
            out[key] = list(e["choices"])
        elif e["kind"] == "int":
            out[key] = list(range(e["low"], e["high"] + 1, e["step"]))
        else:
            count = _grid_count(e)
            out[key] = [e["low"] + i * e["step"] for i in range(count)]
    return out


def _grid_count(e: dict) -> int:
    if e["kind"] == "choice":
        return len(e["choices"])
    if e["kind"] == "int":
        return len(range(e["low"], e["high"] + 1, e["step"]))
    return int((e["high"] - e["low"]) / e["step"] + 1e-9) + 1


def grid_size(space: dict) -> int:
    """The grid's point count, computed without building it."""
    size = 1
    for e in space.values():
        size *= _grid_count(e)
    return size


def suggest(trial, space: dict) -> dict:
    """Ask an Optuna trial for one value per space entry; returns ``{dotted key: value}``."""
    out = {}
    for key, e in space.items():
        if e["kind"] == "choice":
            out[key] = trial.suggest_categorical(key, e["choices"])
        elif e["kind"] == "int":
            out[key] = trial.suggest_int(key, e["low"], e["high"], step=e["step"], log=e["log"])
        else:
            out[key] = trial.suggest_float(key, e["low"], e["high"], step=e["step"], log=e["log"])
    return out


def trial_config(sweep: dict, params: dict) -> dict:
    """The raw config of a trial: the base config with each sampled value set, as ``--set``
    would (validate it before use)."""
    return apply_overrides(sweep["base_config"], [f"{k}={json.dumps(v)}" for k, v in params.items()])


def same_sweep(a: dict, b: dict) -> list[str]:
    """The settings in which two resolved sweeps differ (those that change what a trial is)."""
    keys = ("base_config", "metric", "direction", "sampler", "pruner", "seed", "space")
    return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


MAX_RECORD_BYTES = 10_000_000


def check_record(record, source: str) -> dict:
    """A sweep directory's ``sweep.yaml`` (as parsed), checked as a sweep file is (every setting,
    the space, the base config) plus its own keys; the record, or a ConfigError naming
    ``source``."""
    if not isinstance(record, dict):
        raise ConfigError(f"is not a cnn sweep record (a mapping with sweep_id, study, space, "
                          f"...), got {short_repr(record)}", source)
    problems: list[str] = []
    for key in ("name", "study", "sweep_id", "base", "base_config", "trials", "space"):
        if key not in record:
            problems.append(f"{key}: is required")
    for key in ("name", "study", "sweep_id"):
        value = record.get(key)
        if key in record and (not isinstance(value, str) or not value):
            problems.append(f"{key}: must be a non-empty string, got {short_repr(value)}")
    name = record.get("name")
    if isinstance(name, str) and ("/" in name or "\0" in name):
        # the stem of a sweep file never holds one ('[/bold]' would also be a Rich closing tag)
        problems.append(f"name: must be a sweep file's name (no '/' or NUL), got "
                        f"{short_repr(name)}")
    storage = record.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage):
        problems.append(f"storage: must be a database URL or null (the embedded journal), got "
                        f"{short_repr(storage)}")
    base = record.get("base")
    if "base" in record and (not isinstance(base, str) or not base):
        problems.append(f"base: must be the path of a config file, got {short_repr(base)}")
    base_raw, base_cfg = record.get("base_config"), None
    if not isinstance(base_raw, dict):
        if "base_config" in record:
            problems.append(f"base_config: must be the base config's mapping, got "
                            f"{short_repr(base_raw)}")
        base_raw = None
    else:
        try:
            base_cfg = validate(base_raw, "base_config")
        except ConfigError as exc:
            problems.append(str(exc))
    sweep: dict = {}
    _check_settings(record, sweep, problems, base_cfg, base_raw, record=True)
    if problems:
        raise ConfigError(problems, source)
    return record
