import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"

SEED_MNIST_NET = [  # the seed post's MNIST network: 1x28x28 -> 10
    {"type": "conv2d", "out_channels": 4, "kernel_size": 5},  # -> 4x24x24
    {"type": "flatten"},
    {"type": "dense", "out_features": 256}, {"type": "relu"},
    {"type": "dense", "out_features": 128}, {"type": "relu"},
    {"type": "dense", "out_features": 32}, {"type": "relu"},
    {"type": "dense", "out_features": 10},
    {"type": "sigmoid"},
]

# Rich wraps long lines at the terminal width; tests read whole lines.
os.environ.setdefault("COLUMNS", "200")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """configs/digits.yaml's data (seed 0) as `cnn data export digits` writes it: an image folder
    with digits' own train/ and test/ split."""
    from cnncli.data import load_dataset
    from cnncli.data.folder import export_folder

    out = tmp_path_factory.mktemp("export") / "digits-folder"
    export_folder(load_dataset({"name": "digits", "test_size": 0.25, "limit": None}, 0), out)
    return out
