"""Starting, joining and resuming a sweep: the sweep directory, the study, the worker processes.

The sweep directory holds ``sweep.yaml`` (the resolved sweep, with its ``sweep_id``, study
name and storage: ``null`` for the embedded journal, else the URL with its password masked),
``study.journal`` (the embedded study), ``trials/<number>/`` (one run directory per trial),
``trials.csv``, ``best.yaml``, ``sweep.png`` and ``workers.log`` (what workers printed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cnncli.errors import CnnError, SweepError
from cnncli.files import read_regular_tail
from cnncli.sweep.storage import STORAGE_ENV, mask_url, open_storage, open_study, storage_errors
from cnncli.sweep.worker import LOCK_FILE, SWEEP_FILE, read_sweep, sweep_lock

STOP_WAIT_SECONDS = 60  # after Ctrl-C, how long workers get to record their trial before a kill
RESPAWN_SECONDS = 30  # while other processes run the last trials, how often to check with workers
# What a start of this sweep (perhaps one that is racing us, or was killed) puts in the directory
# before sweep.yaml: the lock, the journal and its lock, the temporary file of sweep.yaml.
_OWN_FILES = {LOCK_FILE, "study.journal", "study.journal.flock"}


def _study_record(sweep: dict) -> dict:
    """What the study itself remembers of the sweep, so that other machines can check theirs."""
    keys = ("base_config", "metric", "direction", "sampler", "pruner", "seed", "space")
    return {k: sweep[k] for k in keys}


def prepare(sweep: dict, sweep_dir: Path, url: str | None, study_name: str | None) -> tuple[Path, dict]:
    """Create the sweep directory and the study, or join them when they exist and hold the same
    sweep. Nothing is left behind when this fails before the sweep started."""
    from cnncli.sweep.spec import same_sweep

    sweep = dict(sweep, study=study_name or sweep["name"], storage=mask_url(url) if url else None)
    if url is not None:  # reach the database first: a bad URL leaves no directory
        _open_and_check_study(open_storage(url), sweep, url, create=True)
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir}: exists and is not a directory")
    if sweep_dir.is_dir() and not (sweep_dir / SWEEP_FILE).is_file():
        _refuse_foreign(sweep_dir)  # before the lock file goes in
    try:
        sweep_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_dir.mkdir()
        created = True  # only this process removes it if the start fails
    except FileExistsError:
        created = False
    except OSError as exc:
        raise SweepError(f"{sweep_dir}: cannot create the sweep directory "
                         f"({exc.strerror or exc})") from None
    try:
        with sweep_lock(sweep_dir):
            if (sweep_dir / SWEEP_FILE).is_file():
                held = read_sweep(sweep_dir)
                diff = same_sweep(held, sweep)
                if held.get("study") != sweep["study"]:
                    diff.append("study")
                if held.get("storage") != sweep["storage"]:
                    diff.append("storage")
                if diff:
                    raise SweepError(f"{sweep_dir}: holds another sweep (it differs in "
                                     f"{', '.join(diff)}); choose another --sweep-dir")
                sweep = held
            else:
                _refuse_foreign(sweep_dir)
                sweep["sweep_id"] = uuid.uuid4().hex
                if url is None:
                    _open_and_check_study(open_storage(None, sweep_dir), sweep, None, create=True)
                _write_sweep(sweep_dir, sweep)
    except BaseException:
        if created:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    return sweep_dir, sweep


def set_trial_count(sweep_dir: Path, trials: int) -> dict:
    """Change a sweep's trial count in its sweep.yaml (under the sweep lock); the sweep."""
    from cnncli.sweep.spec import grid_size

    with sweep_lock(sweep_dir):
        sweep = read_sweep(sweep_dir)
        if sweep["sampler"] == "grid" and trials > grid_size(sweep["space"]):
            raise SweepError(f"--trials {trials} is more than the {grid_size(sweep['space'])} "
                             "points of the grid")
        sweep["trials"] = trials
        _write_sweep(sweep_dir, sweep)
    return sweep


def _refuse_foreign(sweep_dir: Path) -> None:
    others = sorted(p.name for p in sweep_dir.iterdir()
                    if p.name not in _OWN_FILES and not p.name.startswith(f".{SWEEP_FILE}."))
    if others:
        raise SweepError(f"{sweep_dir}: exists and is not a sweep directory (it holds "
                         f"{others[0]}); choose another --sweep-dir")


def _write_sweep(sweep_dir: Path, sweep: dict) -> None:
    import yaml

    from cnncli.run import write_text_atomic

    order = ["name", "study", "storage", "sweep_id", "base", "trials", "metric", "direction",
             "sampler", "pruner", "seed", "space", "base_config"]
    text = ("# The resolved sweep (written by cnn sweep run; cnn sweep resume reads it).\n"
            + yaml.safe_dump({k: sweep[k] for k in order}, sort_keys=False, width=100))
    write_text_atomic(sweep_dir / SWEEP_FILE, text)


def _open_and_check_study(storage, sweep: dict, url: str | None, create: bool):
    study = open_study(storage, sweep["study"], sweep["direction"], create=create, url=url)
    record = _study_record(sweep)
    with storage_errors(url):
        held = study.user_attrs.get("cnncli_sweep")
        if held is None:
            study.set_user_attr("cnncli_sweep", record)
    if held is not None:
        from cnncli.sweep.spec import same_sweep

        diff = same_sweep(held, record)
        if diff:
            where = f" in {mask_url(url)}" if url else ""
            raise SweepError(f"the study {sweep['study']!r}{where} holds another sweep (it "
                             f"differs in {', '.join(diff)}); choose another --study")
    if study.metric_names is None:
        _name_the_metric(study, sweep["metric"])
    return study


def _name_the_metric(study, metric: str) -> None:
    """The objective's name, e.g. test_accuracy, as optuna-dashboard shows it (not
    "Objective 0")."""
    import warnings

    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore")
        study.set_metric_names([metric])


def resume_url(sweep: dict, given: str | None, env: str | None = None) -> str | None:
    """The storage URL to resume with: the one in sweep.yaml, or (when its password is masked
    there) the one given by --storage (``given``) or CNNCLI_SWEEP_STORAGE (``env``), which must
    match it. An embedded sweep ignores the environment variable and refuses --storage."""
    stored = sweep.get("storage")
    if stored is None:
        if given:
            raise SweepError("this sweep's study is embedded in its directory; --storage does not "
                             "apply")
        return None
    url = given or env
    if url is None:
        if "***" in stored:
            raise SweepError(f"this sweep's study is in {stored}: give its URL with the password "
                             f"(--storage or {STORAGE_ENV})")
        return stored
    if mask_url(url) != stored:
        raise SweepError(f"--storage {mask_url(url)} is not this sweep's storage ({stored})")
    return url


def read_sweep_dir(sweep_dir: Path) -> dict:
    """The sweep record of sweep directory ``sweep_dir`` (its sweep.yaml), checked to be one."""
    if not (sweep_dir / SWEEP_FILE).exists():
        raise SweepError(f"{sweep_dir}: not a sweep directory (no sweep.yaml)")
    return read_sweep(sweep_dir)  # checked: a damaged one is a one-line ConfigError


def storage_url(given: str | None = None) -> str | None:
    """The database URL given (``--storage``), else the one in ``STORAGE_ENV``, else None (the
    study embedded in the sweep directory)."""
    return given or os.environ.get(STORAGE_ENV) or None


def sweep_by_url(url: str, study: str) -> tuple[dict, list]:
    """A sweep found by its storage's URL and its study's name alone, with no sweep directory:
    its record as a sweep spec (no ``sweep_id``; ``storage`` the masked URL) and its trials. A
    SweepError when no such study exists or cnn sweep did not make it."""
    st = open_study(open_storage(url), study, "maximize", create=False, url=url)
    with storage_errors(url):
        record = st.user_attrs.get("cnncli_sweep")
    if not isinstance(record, dict):
        raise SweepError(f"the study {study!r} in {mask_url(url)} was not made by cnn sweep")
    spec = {**record, "name": study, "study": study, "storage": mask_url(url), "sweep_id": None}
    with storage_errors(url):
        return spec, st.get_trials(deepcopy=False)


def open_sweep_study(sweep_dir: Path, sweep: dict, url: str | None):
    return open_study(open_storage(url, sweep_dir), sweep["study"], sweep["direction"],
                      create=False, url=url)


def sweep_trials(sweep_dir: Path, sweep: dict, url: str | None) -> list:
    """The trials of a sweep directory's study (a storage failing: a one-line SweepError)."""
    study = open_sweep_study(sweep_dir, sweep, url)
    with storage_errors(url):
        return study.get_trials(deepcopy=False)


def run_workers(sweep_dir: Path, url: str | None, workers: int, on_update=None,
                should_stop=lambda: False, poll: float = 0.5) -> dict:
    """Run ``workers`` worker processes until the sweep has its trials, calling
    ``on_update(trials)`` as the study changes and writing the reports. ``should_stop()``
    true (Ctrl-C) asks the workers to stop; each records its trial as failed and queued again.

    Returns ``{"outcome": "done" | "interrupted" | "failed" | "incomplete", "message": ...,
    "trials": [...]}``."""
    from cnncli.sweep.report import write_reports
    from cnncli.sweep.worker import MAX_FAILED_IN_A_ROW, failed_in_a_row, study_counts

    sweep_dir = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    study = open_sweep_study(sweep_dir, sweep, url)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop(STORAGE_ENV, None)
    if url is not None:
        env[STORAGE_ENV] = url
    log = open(sweep_dir / "workers.log", "ab")

    def start() -> list:
        return [subprocess.Popen(
            [sys.executable, "-m", "cnncli.sweep.worker", str(sweep_dir), "--index", str(i),
             "--parent", str(os.getpid())],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log) for i in range(workers)]

    def finished(trials) -> int:
        return sum(t.state.is_finished() for t in trials)

    procs: list = []
    interrupted, deadline, last_seen = False, None, None
    try:
        procs = start()
        started_at, finished_at_start = time.monotonic(), 0
        while True:
            alive = [p for p in procs if p.poll() is None]
            with storage_errors(url):
                trials = study.get_trials(deepcopy=False)
            seen = [(t.number, t.state.name) for t in trials]
            if seen != last_seen:
                last_seen = seen
                write_reports(sweep_dir, trials, sweep, plot=False)
            if on_update is not None:
                on_update(trials)
            if should_stop() and not interrupted:
                interrupted, deadline = True, time.monotonic() + STOP_WAIT_SECONDS
                for p in alive:
                    p.send_signal(signal.SIGINT)
            if not alive:
                counts = study_counts(trials)
                if (interrupted or counts["done"] >= sweep["trials"]
                        or failed_in_a_row(trials)[0] >= MAX_FAILED_IN_A_ROW
                        or any(p.returncode for p in procs)):
                    break
                # Our workers stopped because other processes (a joined run, other machines)
                # run the trials still needed: wait for those, and start workers again when
                # the count falls short (one of those trials failed, or its process died).
                if counts["running"] and time.monotonic() - started_at < RESPAWN_SECONDS:
                    time.sleep(poll)
                    continue
                if not counts["running"] and finished(trials) == finished_at_start:
                    break  # a round of workers that did nothing: do not loop
                procs = procs + start()
                started_at, finished_at_start = time.monotonic(), finished(trials)
                continue
            if deadline is not None and time.monotonic() > deadline:
                for p in alive:
                    p.kill()
            time.sleep(poll)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        log.close()
    with storage_errors(url):
        trials = study.get_trials(deepcopy=False)
    write_reports(sweep_dir, trials, sweep, plot=True)
    if on_update is not None:
        on_update(trials)
    counts = study_counts(trials)
    failures, last_error = failed_in_a_row(trials)
    result = {"trials": trials, "sweep": sweep, "message": None}
    if counts["done"] >= sweep["trials"]:
        result["outcome"] = "done"
    elif interrupted:
        result["outcome"] = "interrupted"
    elif failures >= MAX_FAILED_IN_A_ROW:
        result["outcome"] = "failed"
        result["message"] = (f"{failures} trials failed in a row, so the sweep stopped; the last: "
                             f"{last_error}")
    else:
        codes = [p.returncode for p in procs if p.returncode]
        result["outcome"] = "incomplete"
        result["message"] = (f"{counts['done']} of {sweep['trials']} trials are done, but the "
                             f"workers stopped (exit codes {', '.join(map(str, codes)) or '0'}); "
                             f"{_last_log_line(sweep_dir / 'workers.log', url)}")
    return result


def _last_log_line(path: Path, url: str | None) -> str:
    from cnncli.sweep.storage import scrub

    try:
        lines = [ln for ln in read_regular_tail(path) if ln.strip()]
    except (OSError, CnnError):
        lines = []
    return scrub(f"see {path}" + (f" (last line: {lines[-1].strip()[:200]})" if lines else ""), url)
