"""Small building blocks for validating config values, each failing with a precise message.

A check takes a value and returns it (normalised) or raises SchemaError("must be ..., got ...").
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

from cnncli.text import did_you_mean


class SchemaError(ValueError):
    """A value breaks a rule; the message completes ``<key>: ``."""


REQUIRED = object()

# Limits on values that enter both through a config and through command options (one number
# for each, so that a value refused in one place is refused in the other):
SHAPES_MAX_N = 10_000_000  # shapes samples: 720 MB of float64 images
SHAPES_MAX_NOISE = 1000.0  # shapes noise: far past any visible shape (larger overflows NumPy)


@dataclass(frozen=True)
class Field:
    default: Any
    check: Callable[[Any], Any]


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(minimum: int | None = None, maximum: int | None = None):
    def check(v):
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            v = int(v)
        ok = _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
        if not ok:
            rule = "an integer"
            if minimum is not None:
                rule += f" >= {minimum}"
            if maximum is not None:
                rule += f" and <= {maximum}" if minimum is not None else f" <= {maximum}"
            raise SchemaError(f"must be {rule}, got {short_repr(v)}")
        return int(v)
    return check


def number(minimum: float | None = None, strict: bool = True, maximum: float | None = None,
           max_strict: bool = False):
    def check(v):
        ok = _is_real(v) and math.isfinite(v)
        if ok and minimum is not None:
            ok = v > minimum if strict else v >= minimum
        if ok and maximum is not None:
            ok = v < maximum if max_strict else v <= maximum
        if not ok:
            parts = []
            if minimum is not None:
                parts.append(f"{'>' if strict else '>='} {minimum:g}")
            if maximum is not None:
                parts.append(f"{'<' if max_strict else '<='} {maximum:g}")
            rule = "a number" + (" " + " and ".join(parts) if parts else "")
            raise SchemaError(f"must be {rule}, got {short_repr(v)}")
        return float(v)
    return check


def boolean(v):
    if not isinstance(v, bool):
        raise SchemaError(f"must be true or false, got {short_repr(v)}")
    return v


def string(v):
    if not isinstance(v, str) or not v:
        raise SchemaError(f"must be a non-empty string, got {short_repr(v)}")
    return v


def choice(*options):
    def check(v):
        # the type too: 3.0 and true are equal to 3 and 1, but are not the integers 1 or 3
        if not any(v == o and type(v) is type(o) for o in options):
            raise SchemaError(f"must be one of {', '.join(map(str, options))}, got {short_repr(v)}"
                              f"{did_you_mean(v, options)}")
        return v
    return check


def optional(check):
    def wrapped(v):
        return None if v is None else check(v)
    return wrapped


def unknown_key_message(key, known) -> str:
    return f"unknown key{did_you_mean(key, known)}; known keys: {', '.join(known)}"


def validate_section(where: str, value, fields: dict[str, Field], problems: list[str]) -> dict:
    """Check a mapping against its fields, fill in defaults, and append each problem found."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping, got {type(value).__name__} {short_repr(value)}")
        return {}
    out = {}
    for key in value:
        if key not in fields:
            problems.append(f"{where}.{key_name(key)}: {unknown_key_message(key, fields)}")
    for key, field in fields.items():
        if key in value:
            try:
                out[key] = field.check(value[key])
            except SchemaError as exc:
                problems.append(f"{where}.{key}: {exc}")
        elif field.default is REQUIRED:
            problems.append(f"{where}.{key}: is required")
        else:
            out[key] = field.default
    return out


def short_repr(v, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters (and safe for any value a YAML file can hold)."""
    try:
        text = repr(v)
    except (RecursionError, ValueError):  # nested too deeply; an int too long to print
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def key_name(key) -> str:
    """A mapping key as printed in a dotted place such as ``training.epochs``: as is when it is a
    short printable string, else its (shortened) repr."""
    if isinstance(key, str) and key and key.isprintable() and len(key) <= 60:
        return key
    return short_repr(key)
