"""The one way cnncli opens an ``.npz`` archive it did not write itself (checkpoints, datasets,
images to predict): ``allow_pickle=False`` always, every member checked to be a NumPy array, and
every way a damaged archive fails turned into one ``NpzReadError`` that the caller words."""

from __future__ import annotations

import numpy as np

from cnncli.errors import CnnError
from cnncli.text import one_line


class NpzReadError(Exception):
    """Why an archive could not be read. ``reason``: ``single`` (a lone .npy array, not an
    archive), ``pickled`` (object arrays), ``not_array`` (member ``key`` is not a .npy),
    ``value`` (numpy refused it with a ValueError) or ``broken`` (anything else: zip, zlib, a
    huge announced shape); ``cause`` is the exception behind it and ``detail`` its one line."""

    def __init__(self, reason: str, cause: BaseException | None = None, key: str | None = None):
        self.reason, self.cause, self.key = reason, cause, key
        self.detail = one_line(cause) if cause is not None else ""
        super().__init__(f"{reason}: {self.detail or key}")


def read_npz(path, pick=None) -> dict[str, np.ndarray]:
    """The arrays of archive ``path``: those ``pick(names)`` chooses from the member names (all
    of them by default; ``pick`` may raise a CnnError, which passes through)."""
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):
            raise NpzReadError("single")
        with f:
            names = list(f.files) if pick is None else pick(f.files)
            arrays = {k: f[k] for k in names}
    except (CnnError, NpzReadError):
        raise
    except ValueError as exc:
        raise NpzReadError("pickled" if "pickle" in str(exc).lower() else "value", exc) from None
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways: zip, npy
        # header (even a tokenize error), zlib, a huge announced shape (MemoryError)
        raise NpzReadError("broken", exc) from None
    odd = next((k for k, a in arrays.items() if not isinstance(a, np.ndarray)), None)
    if odd is not None:
        raise NpzReadError("not_array", key=odd)
    return arrays
