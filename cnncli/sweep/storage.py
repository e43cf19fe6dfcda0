"""Where a sweep's study lives: an embedded journal file in the sweep directory, or a database
(PostgreSQL for many machines) named by a URL. Optuna is imported here, lazily by the callers.

The embedded store is Optuna's journal file (``study.journal``), not SQLite: SQLite fails with
several writing processes ("database is locked", optuna#4002), while the journal is an
append-only log that any number of processes share. Its own locks (a symlink or an O_EXCL file)
stay behind when their holder is killed, and every other process then waits out a 30 s grace
period (optuna#5921); ``FlockLock`` uses ``flock(2)`` instead, which the kernel releases when
the holder dies, and cuts off a half-written last record a killed writer may leave (the journal
would refuse every record after it).
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import time
import warnings
from pathlib import Path

from cnncli.errors import SweepError

STORAGE_ENV = "CNNCLI_SWEEP_STORAGE"  # a database URL from the environment (never on a command line)
JOURNAL_NAME = "study.journal"
HEARTBEAT_SECONDS = 10  # database storages: how often a running trial says it is alive
GRACE_SECONDS = 60  # ... and how long after its last word it counts as killed
_PASSWORD = re.compile(r"(?P<head>^[A-Za-z][A-Za-z0-9+.\-]*://[^:@/?#]*:)(?P<pw>[^@/?#]*)(?=@)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)(?P<pw>[^&#]*)")


def mask_url(url: str) -> str:
    """The URL with its password (``user:PASSWORD@``, ``?password=``) replaced by ``***``."""
    url = _PASSWORD.sub(lambda m: m["head"] + "***", url)
    return _QUERY_PASSWORD.sub(lambda m: m["head"] + "***", url)


def url_password(url: str) -> str | None:
    m = _PASSWORD.search(url) or _QUERY_PASSWORD.search(url)
    return m["pw"] if m and m["pw"] else None


def scrub(text: str, url: str | None) -> str:
    """A message with the URL's password (should a driver repeat it) masked."""
    pw = url_password(url) if url else None
    return text.replace(pw, "***") if pw else text


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental arguments: the sweep
    reports trials itself. Without Optuna: a SweepError saying what to install."""
    try:
        import optuna
    except ImportError:
        raise SweepError("cnn sweep needs Optuna, an optional dependency: pip install "
                         "'cnncli[sweep]' (and 'cnncli[postgres]' for PostgreSQL)") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


class FlockLock:
    """The journal's write lock: ``flock(2)`` on a side file, released by the kernel when the
    holder exits in any way (SIGKILL included). Optuna's JournalFileBackend only calls
    ``acquire()`` and ``release()`` on its lock object."""

    def __init__(self, journal: Path):
        self.journal = Path(journal)
        self.path = self.journal.with_name(self.journal.name + ".flock")
        self._fd = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        _cut_half_record(self.journal)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _cut_half_record(journal: Path) -> None:
    """Under the write lock: if the journal does not end in a newline, its last record was cut
    short by a killed writer (nobody saw it complete); remove that partial line."""
    try:
        with open(journal, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = size
            while keep > 0:
                start = max(0, keep - 65536)
                f.seek(start)
                chunk = f.read(keep - start)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    keep = start + nl + 1
                    break
                keep = start
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        pass


def open_storage(url: str | None, sweep_dir: Path | None = None):
    """An Optuna storage: the embedded journal of ``sweep_dir`` when ``url`` is None, else the
    database at ``url``. Bad URLs and unreachable databases raise a one-line SweepError."""
    quiet_optuna()
    if url is None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal = Path(sweep_dir) / JOURNAL_NAME
        return JournalStorage(JournalFileBackend(str(journal), lock_obj=FlockLock(journal)))
    return _open_database(url)


def _open_database(url: str):
    import sqlalchemy
    from optuna.storages import RDBStorage
    from sqlalchemy import exc as sa_exc

    shown = mask_url(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise SweepError(f"--storage {shown}: not a database URL (expected e.g. "
                         "postgresql+psycopg://user@host/dbname)") from None
    kwargs = {}
    if parsed.get_backend_name() == "postgresql":
        kwargs = {"connect_args": {"connect_timeout": 10}}
    last = None
    for attempt in range(8):
        try:
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                              grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=retry_trial)
        except sa_exc.NoSuchModuleError:
            raise SweepError(f"--storage {shown}: unknown database scheme "
                             f"{parsed.drivername!r} (expected e.g. postgresql+psycopg://...)") from None
        except ImportError as exc:
            cause = exc.__cause__ or exc
            name = getattr(cause, "name", None) or str(cause)
            raise SweepError(f"--storage {shown}: the database driver {name!r} is not installed "
                             f"(for PostgreSQL: pip install 'cnncli[postgres]' and a "
                             f"postgresql+psycopg:// URL)") from None
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError) as exc:
            # Two machines creating the tables of an empty database at the same moment: one
            # loses the race on a table or a type; the tables exist now, so try again.
            last = exc
            time.sleep(0.2 + random.random() * (attempt + 1) * 0.3)
        except sa_exc.OperationalError as exc:
            raise SweepError(f"--storage {shown}: cannot connect "
                             f"({scrub(_first_line(exc.orig or exc), url)})") from None
        except sa_exc.SQLAlchemyError as exc:
            raise SweepError(f"--storage {shown}: {scrub(_first_line(exc), url)}") from None
    raise SweepError(f"--storage {shown}: cannot set up the tables "
                     f"({scrub(_first_line(last), url)})")


def retry_trial(study, trial) -> None:
    """Queue a trial's parameters to be tried again (the next ``ask`` takes them): for a trial
    whose process died (no heartbeat, an unlocked run directory) or was interrupted."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _first_line(exc) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__


def open_study(storage, name: str, direction: str, create: bool, sampler=None, pruner=None,
               url: str | None = None):
    """Create (``create``) or load the study ``name``. Creating tolerates another process
    creating it at the same moment."""
    import optuna
    from sqlalchemy import exc as sa_exc

    for attempt in range(8):
        try:
            if create:
                return optuna.create_study(storage=storage, study_name=name, direction=direction,
                                           sampler=sampler, pruner=pruner, load_if_exists=True)
            return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        except KeyError:
            raise SweepError(f"no study {name!r} in the storage"
                             + (f" {mask_url(url)}" if url else "")) from None
        except (sa_exc.IntegrityError, optuna.exceptions.DuplicatedStudyError):
            time.sleep(0.1 + random.random() * (attempt + 1) * 0.2)
        except sa_exc.OperationalError as exc:
            raise SweepError(f"--storage {mask_url(url or '')}: "
                             f"{scrub(_first_line(exc.orig or exc), url)}") from None
    raise SweepError(f"cannot create the study {name!r}: another process keeps racing for it")
