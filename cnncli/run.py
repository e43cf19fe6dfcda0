"""A run directory: config.yaml, metrics.csv, last.npz, best.npz, train.log and a lock.

Nothing is ever overwritten by a new run: a new run needs a missing or empty directory, and
resuming continues the run a directory holds, under an exclusive lock. This module writes the
files and reads them back: ``read_metrics`` (plots and ``cnn runs``), ``resume_config`` and
``resume`` (the checks before a run goes on, and loading its last.npz)."""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import re
import stat
import time
from pathlib import Path

from cnncli.atomic import atomic_file
from cnncli.checkpoint import save_checkpoint
from cnncli.config import dump_config
from cnncli.errors import CheckpointError, ConfigError, RunDirError
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
        fd = os.open(Path(path) / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: no wait
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def config_name(config_path) -> str:
    """The name a config gives its runs: its file's stem, except a sweep's ``best.yaml``, named
    after its sweep (``shapes-lr-best``, from the first line cnn sweep writes in it)."""
    import re

    path, head = Path(config_path), ""
    try:
        if path.is_file():  # never open a named pipe or a device
            with open(path, "rb") as f:
                head = f.read(300).decode("utf-8", "replace")
    except OSError:
        pass
    m = re.match(r"# Best trial of sweep ([\w.+-]+) \(study ", head)
    return f"{m.group(1)}-best" if m else path.stem


def default_run_dir(config_path, root="runs") -> Path:
    """``runs/<config name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that exists."""
    base = Path(root) / f"{config_name(config_path)}-{time.strftime('%Y%m%d-%H%M%S')}"
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


def read_run_config(run_path) -> dict:
    """The raw mapping in ``RUN_DIR/config.yaml`` (not validated), or a ConfigError."""
    from cnncli.config import read_config_file

    return read_config_file(Path(run_path) / "config.yaml")


MAX_METRICS_BYTES = 64_000_000  # a million epochs' rows
CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def read_metrics(run_path, columns=CURVE_COLUMNS, need_rows: bool = True) -> list[dict]:
    """The rows of ``RUN_DIR/metrics.csv`` as ``{column: float}`` for ``columns`` (epoch as int).

    Raises RunDirError when the directory or the file is missing, when a column is missing or a
    value is not a number, and (``need_rows``) when there is no row (no epoch has finished)."""
    run_path = Path(run_path)
    if not run_path.exists():
        raise RunDirError(f"{run_path}: no such run directory")
    if not run_path.is_dir():
        raise RunDirError(f"{run_path}: not a directory; give a run directory (it holds metrics.csv)")
    path = run_path / "metrics.csv"
    if not path.exists():
        raise RunDirError(f"{run_path}: no metrics.csv, so not a cnncli run directory")
    from cnncli.files import FileProblem, read_regular_text

    try:
        text = read_regular_text(path, MAX_METRICS_BYTES)
    except FileProblem as exc:
        raise RunDirError(f"{path}: {exc.problem} (a metrics.csv)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise RunDirError(f"{path}: is empty (no header); not a cnncli metrics file")
    missing = [c for c in columns if c not in reader.fieldnames]
    if missing:
        raise RunDirError(f"{path}: lacks the column(s) {', '.join(missing)}; found "
                          f"{', '.join(reader.fieldnames) or 'none'}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        row = {}
        for c in columns:
            try:
                row[c] = float(raw[c])
            except (TypeError, ValueError):
                raise RunDirError(f"{path}, line {line}: {c} is {raw[c]!r}, expected a number") from None
        if "epoch" in row:
            e = row["epoch"]
            if not (math.isfinite(e) and e >= 1 and e == int(e)):
                raise RunDirError(f"{path}, line {line}: epoch is {raw['epoch']!r}, expected a whole "
                                  "number >= 1")
            row["epoch"] = int(row["epoch"])
        rows.append(row)
    if need_rows and not rows:
        raise RunDirError(f"{path}: no finished epoch yet (a header and no rows)")
    return rows


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
        run.write_config(cfg)
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

    def write_config(self, cfg: dict) -> None:
        """config.yaml: the resolved config the run trains with."""
        self.write("config.yaml", dump_config(cfg))

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
        raise RunDirUsed(path)


class RunDirUsed(RunDirError):
    """A new run's directory holds files already (``path``: that directory)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{path}: run directory exists and is not empty; choose another "
                         "directory, or continue the run it holds")


def _leftover(name: str) -> bool:
    """What a start killed before it wrote config.yaml leaves: the lock and temporary files."""
    return name == LOCK_NAME or bool(_STALE_TMP.match(name))


def run_meta(cfg: dict, config_name: str) -> dict:
    """What every checkpoint of a run carries besides the trainer's own state (which adds the
    input description): the resolved config and the config's name."""
    return {"config": cfg, "config_name": config_name}


# ---------------------------------------------------------------- resuming
def _diff_beyond_epochs(stored: dict, wanted: dict) -> list[str]:
    """How two configs differ, the epoch count aside (the one thing a resumed run may change)."""
    from cnncli.config import config_diff

    return [d for d in config_diff(stored, wanted) if not d.startswith("training.epochs:")]


def resume_config(path, config=None, overrides=()) -> dict:
    """The config to continue the run in directory ``path`` with: its config.yaml with
    ``overrides`` applied, or config file ``config`` with ``overrides``. A ConfigError when it
    differs from the run's in anything but the epoch count."""
    from cnncli.config import absolute_data_path, apply_overrides, load_config, validate

    path = Path(path)
    # A run's config.yaml holds an absolute data.path; one written by an older cnncli may hold
    # a relative one, which was read from the current directory: still is.
    stored_raw = absolute_data_path(read_run_config(path), Path.cwd())
    stored = validate(stored_raw, str(path / "config.yaml"))
    raw = dict(stored)
    wanted = load_config(config, overrides) if config is not None \
        else validate(absolute_data_path(apply_overrides(raw, overrides), Path.cwd()), "overrides")
    diff = _diff_beyond_epochs(stored, wanted)
    if diff:
        raise ConfigError(f"cannot resume {path}: the config differs from the run's in "
                          + "; ".join(diff) + " (only the epoch count may change)")
    return wanted


def resume(run: RunDir, cfg: dict, trainer=None, offline: bool = False):
    """Continue ``run`` with config ``cfg`` (see ``resume_config``): a Trainer (``trainer``, or a
    new one) holding the state of the run's last.npz, after checking that the checkpoint is this
    run's (its config, input shape, classes and data fingerprint) and fits the network; then
    metrics.csv is written again from the checkpoint. Returns ``(trainer, loaded)``; ``loaded``
    is False when no epoch had finished (no last.npz: the run starts at epoch 1).

    Raises CheckpointError when last.npz is not this run's, ConfigError when ``cfg``'s epoch
    count is below the epochs already trained. Does not write config.yaml (``run.write_config``).
    ``offline``: a new trainer's dataset is never downloaded."""
    import copy

    from cnncli.checkpoint import check_resumable, checkpoint_config, load_checkpoint
    from cnncli.config import absolute_data_path
    from cnncli.data import load_dataset
    from cnncli.train import Trainer

    if trainer is None:
        trainer = Trainer(cfg, data=load_dataset(cfg["data"], cfg["seed"], offline))
    last = run.path / "last.npz"
    if not last.exists():
        return trainer, False
    arrays, meta = load_checkpoint(last)
    try:  # re-validated, so that keys added to cnncli since get their defaults
        stored = checkpoint_config(last, meta)
    except CheckpointError:
        stored = meta["config"]  # as it is: the checks below name what does not fit
    # an older cnncli saved data.path as given, relative to the current directory
    stored = absolute_data_path(copy.deepcopy(stored), Path.cwd())
    diff = _diff_beyond_epochs(stored, cfg)
    if diff:
        raise CheckpointError(f"{last}: was written by another run (its config differs in "
                              + "; ".join(diff[:3]) + (" ..." if len(diff) > 3 else "")
                              + "); it is left as it is")
    data = trainer.data
    shape = tuple(data.input_shape)
    if tuple(meta["input_shape"]) != shape or len(meta["class_names"]) != data.n_classes:
        raise CheckpointError(
            f"{last}: was written for {'x'.join(map(str, meta['input_shape']))} images in "
            f"{len(meta['class_names'])} classes, but this run's data has "
            f"{'x'.join(map(str, shape))} images in {data.n_classes} classes")
    recorded = meta.get("data_fingerprint")
    if recorded is not None and recorded != trainer.data_fingerprint:
        raise CheckpointError(
            f"{last}: this run's data ({cfg['data']['name']}, now "
            f"{len(data.y_train):,} training / {len(data.y_test):,} test "
            "samples) is not the data it was trained on: files were changed, added or "
            "removed since; resuming would not continue the same run. Restore the data, "
            "or start a new run")
    check_resumable(last, arrays, trainer.net.params, trainer.net.buffers)
    try:
        trainer.load_state(arrays, meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{last}: does not fit this run's network: {exc}") from None
    if trainer.epochs < trainer.epoch:
        raise EpochsBelowTrained(trainer.epochs, trainer.epoch, run.path)
    run.write("metrics.csv", metrics_csv(trainer.history))
    return trainer, True


class EpochsBelowTrained(ConfigError):
    """A resumed run's epoch count is below the epochs it has already trained."""

    def __init__(self, epochs: int, trained: int, path):
        self.epochs, self.trained, self.path = epochs, trained, path
        super().__init__(f"training.epochs {epochs} is below the {trained} epochs {path} "
                         "has already trained")
