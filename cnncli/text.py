"""Small text helpers every part of cnncli writes its messages with."""

from __future__ import annotations

import difflib

_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(value, limit: int = 200, squeeze: bool = True) -> str:
    """``value`` (an exception, or any text) as one line of at most ``limit`` characters, cut
    with "..." when longer. ``squeeze``: every run of whitespace becomes one space (an exception
    with no text gives its class name); otherwise only line breaks become spaces, and the ends
    are stripped."""
    if squeeze:
        text = " ".join(str(value).split())
        if not text and isinstance(value, BaseException):
            text = type(value).__name__
    else:
        text = str(value).translate(_LINE_BREAKS).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word, options) -> str:
    """`` (did you mean 'x'?)`` naming the option closest to ``word``, or "" when none is close
    (or ``word`` is not a short string)."""
    if not isinstance(word, str) or len(word) >= 100:
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
