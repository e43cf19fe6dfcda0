"""The ``training.freeze`` and ``training.init_from_layers`` values (checked by the config;
used by ``cnncli.finetune``)."""

from __future__ import annotations

import re

from cnncli.schema import SchemaError, short_repr

_UNTIL = re.compile(r"^until\s+(\d{1,9})$")


def check_freeze(value):
    """The ``training.freeze`` value: a list of distinct layer indices (integers >= 0), or
    ``"until N"`` (layers 0 to N, N included). Returned as given (a list, or the string)."""
    if isinstance(value, str):
        if _UNTIL.match(value.strip()):
            return value.strip()
    elif isinstance(value, list):
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        if ok and len(set(value)) == len(value):
            return list(value)
        if ok:
            dup = next(v for v in value if value.count(v) > 1)
            raise SchemaError(f"lists layer {dup} twice; give each index once")
    raise SchemaError(f"must be a list of layer indices (integers >= 0) like [0, 1], or "
                      f"'until N' (layers 0 to N), got {short_repr(value)}")


def frozen_indices(freeze) -> list[int]:
    """The sorted layer indices a (checked) ``training.freeze`` value names."""
    if freeze is None:
        return []
    if isinstance(freeze, str):
        return list(range(int(_UNTIL.match(freeze).group(1)) + 1))
    return sorted(freeze)


def freeze_problem(freeze, init_from_layers, n_layers: int) -> list[str]:
    """Problems of ``training.freeze`` and ``training.init_from_layers`` against a network of
    ``n_layers`` layers (each a line completing nothing: it names its key)."""
    problems = []
    past = [i for i in frozen_indices(freeze) if i >= n_layers]
    if past:
        problems.append(f"training.freeze: layer {past[0] if isinstance(freeze, list) else freeze} "
                        f"is past the network's last layer ({n_layers - 1})")
    if init_from_layers is not None and init_from_layers > n_layers:
        problems.append(f"training.init_from_layers: {init_from_layers} is more than the "
                        f"network's {n_layers} layers")
    return problems
