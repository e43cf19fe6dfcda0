"""Keep other processes spinning on the CPU while a benchmark runs (``--busy``): a machine
with cores taken by someone else, as a user's often has."""

from __future__ import annotations

import contextlib
import subprocess
import sys


@contextlib.contextmanager
def spinning(n: int):
    """Start ``n`` processes that spin until the block ends; yields how many run."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield len(spinners)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
