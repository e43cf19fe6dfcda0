import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

# Rich wraps long lines at the terminal width; tests read whole lines.
os.environ.setdefault("COLUMNS", "200")


@pytest.fixture
def root() -> Path:
    return ROOT
