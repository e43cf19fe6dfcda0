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
from contextlib import contextmanager
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
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)(?P<pw>[^&#]*)")


def mask_url(url: str) -> str:
    """The URL with its password (``user:PASSWORD@``, ``?password=``) replaced by ``***``, parsed
    as the database driver parses it (SQLAlchemy's ``make_url``). A URL SQLAlchemy cannot parse
    shows nothing of what comes before its last ``@``."""
    try:
        from sqlalchemy.engine import make_url

        if url_problem(url):  # a raw '@' in the password: the driver's parse would show a part
            raise ValueError(url)
        parsed = make_url(url)
        # no password: the URL as the user wrote it (render_as_string re-quotes ":memory:")
        shown = url if parsed.password is None else parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - malformed: a bad port, an unclosed bracket, no scheme
        m = _SCHEME.match(url)
        rest = url[m.end():] if m else url
        at = rest.rfind("@")  # all before the last @ hidden (a query may hide host too)
        shown = ((m.group(0) if m else "") + "***" + rest[at:]) if at >= 0 else url
    return _QUERY_PASSWORD.sub(lambda q: q["head"] + "***", shown)


def url_passwords(url: str) -> list[str]:
    """Every form of the URL's password(s) a message could repeat: as written (percent-encoded)
    and as decoded; longest first."""
    from urllib.parse import quote, unquote

    found = set()
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
        if pw:
            found |= {str(pw), quote(str(pw), safe="")}
    except Exception:  # noqa: BLE001
        pass
    m = _SCHEME.match(url)
    rest = url[m.end():] if m else url
    if "@" in rest:  # as written: between the first ':' of the user part and the last '@'
        userinfo = rest[:rest.rfind("@")]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    for q in _QUERY_PASSWORD.finditer(url):
        found.add(q["pw"])
    found = {p for f in found for p in (f, unquote(f)) if p and p != "***"}
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """A message with the URL's password (should a driver repeat it) masked."""
    for pw in url_passwords(url) if url else ():
        text = text.replace(pw, "***")
    return text


def url_problem(url: str) -> str | None:
    """Why the driver would misread the URL's user or password, or None: a raw ``@``, ``/``,
    ``#`` or ``?`` in them (URL syntax ends the password there, or at the first ``@``)."""
    m = _SCHEME.match(url)
    if not m:
        return None
    rest = url[m.end():]
    if rest.startswith("/") or "@" not in rest:
        return None  # no user part (sqlite:///path)
    head = rest.split("?", 1)[0]
    if head.count("@") > 1:
        return "its password (or user name) holds a raw '@'"
    userinfo = rest[:rest.find("@")]
    if ":" not in userinfo:
        return None
    bad = next((c for c in "/#?" if c in userinfo), None)
    if bad is not None:
        return f"its password (or user name) holds a raw {bad!r}"
    return None


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO, warns about experimental arguments, and logs a
    warning of several lines when a database query fails before it retries another way: the
    sweep reports trials itself, and a database that fails is one line (SweepError), so only
    Optuna's errors are shown. Without Optuna: a SweepError saying what to install."""
    try:
        import optuna
    except ImportError:
        raise SweepError("cnn sweep needs Optuna, an optional dependency: pip install "
                         "'cnncli[sweep]' (and 'cnncli[postgres]' for PostgreSQL)") from None

    optuna.logging.set_verbosity(optuna.logging.ERROR)
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
        check_journal(journal)
        return JournalStorage(JournalFileBackend(str(journal), lock_obj=FlockLock(journal)))
    return _open_database(url)


JOURNAL_OPS = range(0, 11)  # Optuna's JournalOperation codes (CREATE_STUDY .. DISCARD_TRIALS)


def check_journal(journal: Path) -> None:
    """A SweepError naming the first damaged line of the journal (a garbage line, binary junk,
    a record that is not an Optuna journal operation): Optuna would fail on it with a bare
    JSONDecodeError, UnicodeDecodeError or AssertionError. A missing journal is fine (a new
    one), and so is an unterminated last line (cut by a killed writer; the lock removes it)."""
    import json

    from cnncli.files import FileProblem, check_regular

    try:
        check_regular(journal)
    except FileNotFoundError:
        return
    except FileProblem as exc:
        raise SweepError(str(exc)) from None
    with open(journal, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "binary junk, not UTF-8 text"
            except ValueError:
                problem = "not a JSON record"
            else:
                op = record.get("op_code") if isinstance(record, dict) else None
                if not isinstance(record, dict):
                    problem = "not a JSON object"
                elif type(op) is not int or op not in JOURNAL_OPS:
                    problem = f"an unknown op_code {str(op)[:20]!r}"
                elif not isinstance(record.get("worker_id"), str):
                    problem = "no worker_id"
                else:
                    continue
            raise SweepError(f"{journal}, line {number}: damaged ({problem}); the study cannot be "
                             "read (restore the file, or remove that line and what follows)")


def _open_database(url: str):
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage
    from sqlalchemy import exc as sa_exc

    shown = mask_url(url)
    problem = url_problem(url)
    if problem:
        raise SweepError(f"--storage {shown}: {problem}; percent-encode it (@ is %40, / is %2F, "
                         "# is %23, ? is %3F, % is %25)")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sa_exc.ArgumentError:
        raise SweepError(f"--storage {shown}: not a database URL (expected e.g. "
                         "postgresql+psycopg://user@host/dbname)") from None
    except ValueError as exc:  # a port that is not a number, an unclosed [IPv6] bracket
        what = "an unclosed '[' around the IPv6 host" if re.search(r"(^|@)\[[^\]]*$", url.split("/", 3)[2]
                                                                 if url.count("/") >= 2 else url) \
            else "the port is not a number"
        raise SweepError(f"--storage {shown}: not a valid database URL ({what}; expected e.g. "
                         "postgresql+psycopg://user@host:5432/dbname)") from None
    if parsed.get_backend_name() == "sqlite" and (parsed.database in (None, "", ":memory:")
                                                  or "memory" in str(parsed.query.get("mode", ""))):
        raise SweepError(f"--storage {shown}: an in-memory database is not shared with the worker "
                         "processes; give a file (sqlite:///sweep.db) or leave --storage out")
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
        except optuna.exceptions.StorageInternalError:
            with storage_errors(url):
                raise
    raise SweepError(f"--storage {shown}: cannot set up the tables "
                     f"({scrub(_first_line(last), url)})")


@contextmanager
def storage_errors(url: str | None):
    """A storage that fails while in use (the server stopped, a role without rights on the
    tables, a value a column cannot hold) as a one-line SweepError, its password scrubbed."""
    import optuna
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except (optuna.exceptions.StorageInternalError, sa_exc.SQLAlchemyError) as exc:
        cause = exc
        while cause.__cause__ is not None or getattr(cause, "orig", None) is not None:
            cause = getattr(cause, "orig", None) or cause.__cause__
        where = f"--storage {mask_url(url)}" if url else "the study"
        raise SweepError(f"{where}: the database refused or stopped "
                         f"({scrub(_first_line(cause), url)})") from None


def retry_trial(study, trial) -> None:
    """Queue a trial's parameters to be tried again (the next ``ask`` takes them): for a trial
    whose process died (no heartbeat, an unlocked run directory) or was interrupted."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _first_line(exc) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__


MAX_STUDY_NAME = 512  # Optuna's study_name column


def open_study(storage, name: str, direction: str, create: bool, sampler=None, pruner=None,
               url: str | None = None):
    """Create (``create``) or load the study ``name``. Creating tolerates another process
    creating it at the same moment."""
    import optuna
    from sqlalchemy import exc as sa_exc

    if not isinstance(name, str) or not 1 <= len(name) <= MAX_STUDY_NAME:
        raise SweepError(f"--study: a study name must have 1 to {MAX_STUDY_NAME} characters, got "
                         f"{len(str(name)):,}")
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
        except (optuna.exceptions.StorageInternalError, sa_exc.SQLAlchemyError):
            with storage_errors(url):
                raise
    raise SweepError(f"cannot create the study {name!r}: another process keeps racing for it")
