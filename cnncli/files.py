"""Reading only regular files: a named pipe (FIFO) blocks ``open()`` or ``read()`` forever, and a
device (``/dev/zero``, ``/dev/urandom``) is read until memory runs out. Every file cnncli reads
goes through ``check_regular`` (before a library opens it by name: NumPy, Pillow, Optuna) or
``read_regular`` (which opens without blocking, checks the opened file, and reads at most
``limit`` bytes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cnncli.errors import CnnError

_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


class FileProblem(CnnError):
    """A file that is not a regular file, or is too large. ``problem`` is the text without the
    path (for callers that name the file their own way)."""

    def __init__(self, path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _problem(mode: int, size: int, limit: int | None) -> str | None:
    kind = _kind(mode)
    if kind is not None:
        return f"not a regular file ({kind}); expected a file"
    if limit is not None and size > limit:
        return f"is {size:,} bytes; at most {limit:,} are read"
    return None


def check_regular(path, limit: int | None = None) -> int:
    """The size of ``path``, a regular file (symlinks followed) of at most ``limit`` bytes; else
    a FileProblem. OSError (no such file, permission) passes through."""
    st = os.stat(path)
    problem = _problem(st.st_mode, st.st_size, limit)
    if problem:
        raise FileProblem(path, problem)
    return st.st_size


def is_regular(path) -> bool:
    """Whether ``path`` is a regular file (no error for a missing one)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_regular(path, limit: int | None) -> bytes:
    """The bytes of regular file ``path``, at most ``limit`` of them (a file larger than that, or
    one that grows past it while read, is a FileProblem). Opened with O_NONBLOCK, so a FIFO
    never blocks; the check is on the opened file, so a swap after the check cannot fool it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        problem = _problem(st.st_mode, st.st_size, limit)
        if problem:
            raise FileProblem(path, problem)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise FileProblem(path, f"is more than {limit:,} bytes; at most {limit:,} are read")
    return data


def read_regular_text(path, limit: int | None, errors: str = "strict") -> str:
    return read_regular(path, limit).decode("utf-8", errors)


def read_regular_tail(path, nbytes: int = 4096) -> list[str]:
    """The lines of the last ``nbytes`` of regular file ``path`` (a log), decoded leniently."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        problem = _problem(st.st_mode, st.st_size, None)
        if problem:
            raise FileProblem(path, problem)
        os.set_blocking(fd, True)
        f.seek(max(0, st.st_size - nbytes))
        return f.read(nbytes).decode("utf-8", "replace").splitlines()


def refuse_overwriting(out, inputs, what: str = "an input") -> None:
    """A FileProblem when writing ``out`` would replace one of ``inputs`` (the same file, by
    path or by inode: a link), e.g. ``--csv ck.npz`` while ck.npz is the checkpoint read."""
    out = Path(out)
    for p in inputs:
        p = Path(p)
        try:
            same = os.path.samefile(out, p)
        except OSError:
            same = out.resolve() == p.resolve()
        if same:
            raise FileProblem(out, f"is {what} being read ({p}); write to another file")
