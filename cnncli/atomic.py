"""Atomic file writes: every file cnncli writes appears whole or not at all."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """The temporary file beside ``path`` that a write goes to first: ``.<name>.<pid>.tmp``
    (the name cut short when that would be longer than a file name may be)."""
    name = path.name
    while len(f".{name}.{os.getpid()}.tmp".encode("utf-8", "surrogateescape")) > 255:
        name = name[:-1]
    return path.with_name(f".{name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path, mode: str = "wb", **kwargs):
    """Yield a file open on a temporary file in ``path``'s directory; when the block ends
    without error, flush and fsync it, then rename it over ``path``. On any error (or a kill)
    ``path`` keeps its previous content and the temporary file is removed."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file name", str(path))
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"cannot write: the directory {path.parent} "
                                "does not exist", str(path))
    tmp = temp_name(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename not in (str(tmp), None):
            raise
        # name the file the caller asked for, not the temporary one (e.g. permission denied)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
