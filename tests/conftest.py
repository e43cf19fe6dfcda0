import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def mnist_candidates() -> list[Path]:
    """Where tests look for the four MNIST files, in order: the shared data folder beside the
    repository, $CNNCLI_DATA_DIR/mnist, then the cache (``$XDG_CACHE_HOME/cnncli/mnist``, else
    ``~/.cache/cnncli/mnist``), as ``cnn data download mnist`` fills them."""
    folders = [SHARED_MNIST]
    if os.environ.get("CNNCLI_DATA_DIR"):
        folders.append(Path(os.environ["CNNCLI_DATA_DIR"]).expanduser() / "mnist")
    if os.environ.get("XDG_CACHE_HOME"):
        folders.append(Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cnncli" / "mnist")
    folders.append(Path.home() / ".cache" / "cnncli" / "mnist")
    return list(dict.fromkeys(folders))


def find_mnist(folders=None) -> Path | None:
    """The first folder of ``folders`` (default: mnist_candidates) holding all four MNIST files
    (each gzip-compressed or not), or None."""
    from cnncli.data.mnist import missing_files

    for folder in mnist_candidates() if folders is None else folders:
        if folder.is_dir() and not missing_files(folder):
            return folder
    return None


MNIST_DIR = find_mnist()
needs_mnist = pytest.mark.skipif(
    MNIST_DIR is None,
    reason="no folder holds the four MNIST files; looked in "
           + ", ".join(map(str, mnist_candidates())) + " (run: cnn data download mnist)")

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


def run_cnn(*args, env: dict | None = None, input: str | None = None):
    """``cnn ARGS...`` in this process: the Typer app invoked through typer.testing.CliRunner,
    each argument passed through str() (so paths and numbers may be given as they are).
    Returns the click Result (exit_code, output, stdout, stderr, exception). For module-level
    helpers; tests and fixtures take the ``cnn`` fixture."""
    from cnncli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env, input=input)


@pytest.fixture(scope="session")
def cnn():
    """The command line as a function: ``cnn("train", config, "--epochs", 2)`` runs
    ``cnn train CONFIG --epochs 2`` in-process and returns the click Result (see run_cnn).
    Session-scoped (it holds no state), so fixtures of any scope may use it."""
    return run_cnn


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


# ----------------------------------------------------------------- runs the fault tests share
@pytest.fixture(scope="session")
def finished_run(cnn, tmp_path_factory):
    """A 3-epoch shapes run with momentum (so last.npz holds optimizer state). Tests copy it
    before changing anything in it."""
    from helpers import MOMENTUM, SHAPES

    run = tmp_path_factory.mktemp("ckpt") / "run"
    result = cnn("train", SHAPES, "--run-dir", run, "--epochs", 3, "--quiet", "--set", MOMENTUM)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The uninterrupted run (helpers.FAULT_ARGS, in a subprocess) every faulted run must end up
    equal to."""
    from helpers import FAULT_ARGS, FAULT_EPOCHS, SHAPES, read_metrics, train_to_the_end

    run = tmp_path_factory.mktemp("reference") / "run"
    train_to_the_end([SHAPES, "--run-dir", run, "--quiet", *FAULT_ARGS])
    assert len(read_metrics(run)) == FAULT_EPOCHS
    return run


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mount; skipped where mounting is not allowed (it needs root with
    CAP_SYS_ADMIN; the RLIMIT_FSIZE tests cover a full disk everywhere)."""
    from helpers import mount_tmpfs, umount

    mounted = []

    def make(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        if not mount_tmpfs(where, size):
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        umount(where)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The tally of hostile inputs tried and faults injected (helpers.COUNTS), when any test
    counted one; also written as JSON to $CNNCLI_FAULT_COUNTS when that is set."""
    import json
    import sys

    helpers = sys.modules.get("helpers")
    if helpers is None or not helpers.COUNTS:
        return
    counts = helpers.COUNTS
    failed = len(terminalreporter.stats.get("failed", []))
    terminalreporter.write_line(
        f"fault injection: {counts['hostile']} hostile inputs tried, {counts['faults']} faults "
        f"injected ({counts['kills during a write']} SIGKILLs left a half-written temporary file); "
        + ("every one ended in a clear error or an intact, resumable run"
           if not failed else f"{failed} test(s) FAILED"))
    out = os.environ.get("CNNCLI_FAULT_COUNTS")
    if out:
        Path(out).write_text(json.dumps(dict(counts)))
