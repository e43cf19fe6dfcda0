"""A run directory: config.yaml, metrics.csv, last.npz, best.npz, train.log and a lock.

Nothing is ever overwritten by a new run: a new run needs a missing or empty directory, and
``--resume`` continues the run a directory holds, under an exclusive lock."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import time
from pathlib import Path

from cnncli.atomic import atomic_file
from cnncli.checkpoint import save_checkpoint
from cnncli.config import dump_config
from cnncli.errors import RunDirError
from cnncli.metrics import METRIC_COLUMNS

LOCK_NAME = ".lock"
# The temporary files of atomic writes (``.<name>.<pid>.tmp``) a killed process may leave behind.
_STALE_TMP = re.compile(r"^\.(config\.yaml|metrics\.csv|last\.npz|best\.npz|curves\.png|write-test)"
                        r"\.\d+\.tmp$")


def lock_is_held(path) -> bool:
    """Whether a live process holds run directory ``path``'s lock (a killed one holds none:
    flock locks die with their process). Asks for a shared lock, so that two readers asking
    at once do not take each other for a training."""
    try:
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def default_run_dir(config_path, root="runs") -> Path:
    """``runs/<config stem>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that exists."""
    base = Path(root) / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def metrics_csv(rows: list[dict]) -> str:
    """The CSV text of metrics rows; floats written with ``repr`` (exact, reproducible)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_COLUMNS)
    for row in rows:
        w.writerow([row[c] if not isinstance(row[c], float) else repr(row[c]) for c in METRIC_COLUMNS])
    return buf.getvalue()


class RunDir:
    """One run's directory, locked for as long as this object lives (``close`` releases it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_file = None

    @classmethod
    def create(cls, path, cfg: dict) -> "RunDir":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path}: exists and is not a directory")
        _refuse_used(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{path}: cannot create the run directory ({exc.strerror or exc})") from None
        run = cls(path)
        run.lock()
        try:
            _refuse_used(path)  # again, under the lock: another start may have won the race
        except RunDirError:
            run.close()
            raise
        run.remove_stale_files()
        run.write("config.yaml", dump_config(cfg))
        run.write("metrics.csv", metrics_csv([]))
        return run

    @classmethod
    def open_existing(cls, path) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"{path}: no such run directory")
        if not (path / "config.yaml").is_file():
            raise RunDirError(f"{path}: not a cnncli run directory (no config.yaml)")
        run = cls(path)
        run.lock()
        run.remove_stale_files()
        return run

    def remove_stale_files(self) -> list[str]:
        """Delete the temporary files a killed process left (nobody else writes here: we hold
        the lock). Returns their names."""
        gone = []
        for p in self.path.iterdir():
            if _STALE_TMP.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    gone.append(p.name)
                except OSError:
                    pass
        return gone

    def lock(self) -> None:
        try:
            f = open(self.path / LOCK_NAME, "a+")
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot write in the run directory "
                              f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RunDirError(f"{self.path}: another cnn train is using this run directory "
                              "(it is locked); wait for it to finish") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            # An existing .lock opens even where nothing can be created: make sure files can be.
            probe = self.path / f".write-test.{os.getpid()}.tmp"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
            raise RunDirError(f"{self.path}: cannot write in the run directory "
                              f"({exc.strerror or exc})") from None
        self._lock_file = f

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def write(self, name: str, text: str) -> None:
        try:
            write_text_atomic(self.path / name, text)
        except OSError as exc:
            raise RunDirError(f"{self.path / name}: cannot write ({exc.strerror or exc}); "
                              "the previous version is intact") from None

    def save_epoch(self, trainer, extra_meta: dict, is_best: bool) -> None:
        """After an epoch: best.npz (when it is the best), then last.npz, then metrics.csv, each
        written atomically. last.npz is the commit point: a failure or a kill before it leaves
        the previous epoch in force (a best.npz already written is written again, identically,
        when that epoch is trained again); after it, resuming rewrites metrics.csv from it."""
        arrays, meta = trainer.state()
        meta = {**extra_meta, **meta}
        names = (["best.npz"] if is_best else []) + ["last.npz"]
        for name in names:
            try:
                save_checkpoint(self.path / name, arrays, meta)
            except OSError as exc:
                raise RunDirError(f"{self.path / name}: cannot write the checkpoint "
                                  f"({exc.strerror or exc}); the previous one is intact") from None
        self.write("metrics.csv", metrics_csv(trainer.history))

    def log(self, text: str) -> None:
        """Append one line to train.log; on a failure (a full disk) the file is cut back to its
        previous length, so it never ends in half a line."""
        path = self.path / "train.log"
        data = (text + "\n").encode("utf-8", "backslashreplace")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise RunDirError(f"{path}: cannot write ({exc.strerror or exc})") from None
        size = None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a killed writer's half line
                data = b"\n" + data
            while data:
                data = data[os.write(fd, data):]
        except OSError as exc:
            if size is not None:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
            raise RunDirError(f"{path}: cannot write ({exc.strerror or exc})") from None
        finally:
            os.close(fd)


def _refuse_used(path: Path) -> None:
    """A new run needs a missing or empty directory (the leftovers of a killed start count as
    empty)."""
    if path.is_dir() and any(not _leftover(p.name) for p in path.iterdir()):
        raise RunDirError(f"{path}: run directory exists and is not empty; choose another "
                          f"--run-dir, or continue that run with: cnn train --resume {path}")


def _leftover(name: str) -> bool:
    """What a start killed before it wrote config.yaml leaves: the lock and temporary files."""
    return name == LOCK_NAME or bool(_STALE_TMP.match(name))


def run_meta(cfg: dict, config_name: str) -> dict:
    """What every checkpoint of a run carries besides the trainer's own state (which adds the
    input description): the resolved config and the config's name."""
    return {"config": cfg, "config_name": config_name}


def train_epochs(trainer, run: RunDir, config_name: str, run_epoch=None, on_epoch=None,
                 cfg: dict | None = None) -> None:
    """Train until the planned epoch count (or early stopping), saving each epoch through
    ``run.save_epoch`` and refreshing curves.png. The loop ``cnn train`` and every sweep trial run.

    ``run_epoch(trainer) -> row`` trains one epoch (default ``trainer.train_epoch()``);
    ``on_epoch(row)`` is called after the epoch is saved (an exception there stops training,
    the epoch kept). ``cfg``: the config the checkpoints record (default ``trainer.cfg``).
    Raises what the trainer raises (``Interrupted``, ``TrainingError``).
    """
    import numpy as np

    from cnncli.plots import plot_run_curves

    meta = run_meta(cfg if cfg is not None else trainer.cfg, config_name)
    # A diverging run overflows on its way to the non-finite loss that stops it: no warnings.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while trainer.epoch < trainer.epochs and not trainer.should_stop_early():
            row = run_epoch(trainer) if run_epoch is not None else trainer.train_epoch()
            is_best = trainer.best["epoch"] == row["epoch"]
            run.save_epoch(trainer, meta, is_best)
            plot_run_curves(run.path, config_name)
            if on_epoch is not None:
                on_epoch(row)
