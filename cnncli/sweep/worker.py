"""A sweep worker: one process that takes trials from the study and trains them, one at a time,
until the sweep has its trial count. Run as ``python -m cnncli.sweep.worker SWEEP_DIR``
(``cnncli.sweep.driver`` starts them); a database URL comes in ``CNNCLI_SWEEP_STORAGE``, never
on the command line (where ``ps`` would show its password).

Workers on one machine take trials under the sweep directory's lock (``.sweep.lock``, flock):
they count the trials finished and running, ask Optuna for a new one only when the count is
short, and create its run directory (``trials/<number>/``, which stays locked while the trial
trains) before letting go. So the sweep ends with exactly ``trials`` complete-or-pruned trials,
and under the same lock a RUNNING trial whose run directory is not locked is known to be dead
(its process was killed): it is marked failed and its parameters are queued to be tried again.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from cnncli.errors import CnnError
from cnncli.files import read_regular
from cnncli.run import lock_is_held
from cnncli.sweep.storage import STORAGE_ENV, retry_trial

SWEEP_FILE = "sweep.yaml"
LOCK_FILE = ".sweep.lock"
MAX_FAILED_IN_A_ROW = 5


@contextmanager
def sweep_lock(sweep_dir: Path):
    """The sweep directory's lock (flock: released by the kernel if the holder dies)."""
    fd = os.open(Path(sweep_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_sweep(sweep_dir: Path) -> dict:
    """A sweep directory's sweep.yaml, checked as a sweep file is (a hand-edited or damaged one
    is a ConfigError naming it)."""
    from cnncli.config import parse_yaml
    from cnncli.errors import ConfigError
    from cnncli.sweep.spec import MAX_RECORD_BYTES, check_record

    path = Path(sweep_dir) / SWEEP_FILE
    try:
        text = read_regular(path, MAX_RECORD_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte {exc.start})", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    return check_record(parse_yaml(text, str(path)), str(path))


def make_sampler(sweep: dict, seed: int):
    import optuna

    from cnncli.sweep.spec import grid_space

    if sweep["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep["sampler"] == "grid":
        # every process must shuffle the grid alike (Optuna maps trial k to grid point k): the
        # sweep's own seed, not the worker's
        return optuna.samplers.GridSampler(grid_space(sweep["space"]), seed=sweep["seed"])
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(sweep: dict):
    import optuna

    if sweep["pruner"] == "median":
        return optuna.pruners.MedianPruner()
    if sweep["pruner"] == "hyperband":
        epochs = sweep["base_config"].get("training", {}).get("epochs", 10)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(int(epochs), 1))
    return optuna.pruners.NopPruner()


def worker_seed(sweep: dict, serial: int, database: bool) -> int:
    """A worker's sampler seed, from the sweep's seed and the worker's serial number in its sweep
    directory (0 for the first worker ever started there, then 1, 2, ... across runs, joins and
    resumes: no two workers replay the same samples, and a fresh sweep with one worker is
    reproducible). With a database, other machines number their workers from 0 too, so the
    sweep directory's random id goes in as well."""
    import numpy as np

    entropy = [sweep["seed"], serial]
    if database:
        entropy.append(int(sweep["sweep_id"][:8], 16))
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def next_worker_serial(sweep_dir: Path) -> int:
    """Under the sweep lock: the next worker serial number, counted in ``.workers``."""
    from cnncli.run import write_text_atomic

    path = Path(sweep_dir) / ".workers"
    with sweep_lock(sweep_dir):
        try:
            serial = int(read_regular(path, 100).decode().strip() or 0)
        except (OSError, ValueError, CnnError):
            serial = 0
        write_text_atomic(path, f"{serial + 1}\n")
    return serial


def study_counts(trials) -> dict:
    from optuna.trial import TrialState

    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return {"done": done, "running": running}


def failed_in_a_row(trials) -> tuple[int, str | None]:
    """How many trials failed with an error (a bad sample, a diverging run) since the last one
    that did not, in order of finishing; and the last error. Killed trials do not count."""
    from optuna.trial import TrialState

    finished = sorted((t for t in trials if t.state.is_finished() and t.datetime_complete),
                      key=lambda t: (t.datetime_complete, t.number))
    count, last = 0, None
    for t in reversed(finished):
        if t.state == TrialState.FAIL and "error" in t.user_attrs:
            count += 1
            last = last or t.user_attrs["error"]
        elif t.state == TrialState.FAIL:
            continue
        else:
            break
    return count, last


def reap_dead_trials(study, sweep_dir: Path, sweep_id: str, embedded: bool) -> list[int]:
    """Under the sweep lock: mark failed every RUNNING trial of this sweep directory whose run
    directory is not locked (its process is gone), and queue its parameters again. Database
    storages also fail other machines' trials whose heartbeat stopped (Optuna's own check)."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)  # database storages with heartbeats; a no-op for the journal
    storage, reaped = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        mine = t.user_attrs.get("sweep_id") == sweep_id or (embedded and "sweep_id" not in t.user_attrs)
        run_dir = t.user_attrs.get("run_dir")
        if not mine or (run_dir and lock_is_held(sweep_dir / run_dir)):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "killed", "its process ended mid-trial")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except Exception:  # another process finished it first
            continue
        retry_trial(study, t)
        reaped.append(t.number)
    return reaped


def _heartbeat(storage, trial_id: int, stop: threading.Event) -> None:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(storage):
        return
    interval = storage.get_heartbeat_interval()
    while not stop.wait(interval):
        try:
            storage.record_heartbeat(trial_id)
        except Exception:
            pass


class Worker:
    def __init__(self, sweep_dir: Path, url: str | None):
        from cnncli.sweep.storage import open_storage, open_study

        self.sweep_dir = Path(sweep_dir)
        self.sweep = read_sweep(self.sweep_dir)
        self.url = url
        self.embedded = url is None
        self.storage = open_storage(url, self.sweep_dir)
        seed = worker_seed(self.sweep, next_worker_serial(self.sweep_dir), url is not None)
        self.study = open_study(self.storage, self.sweep["study"], self.sweep["direction"],
                                create=False, sampler=make_sampler(self.sweep, seed),
                                pruner=make_pruner(self.sweep), url=url)
        self.stop = False
        self.trainer = None
        self._data = {}

    def request_stop(self, *_):
        self.stop = True
        if self.trainer is not None:
            self.trainer.stop_requested = True

    def loop(self) -> None:
        while not self.stop:
            started = self._start_trial()
            if started is None:
                return
            if started is not False:
                self._train(*started)

    def _start_trial(self):
        """Under the lock: reap, count, ask, build and check the config, create the run
        directory. Returns (trial, cfg, run), False (this trial failed at once: go on), or None
        (the sweep has what it needs, or should stop)."""
        import optuna

        from cnncli.config import validate
        from cnncli.run import RunDir
        from cnncli.sweep.spec import suggest, trial_config

        sweep = self.sweep
        with sweep_lock(self.sweep_dir):
            reap_dead_trials(self.study, self.sweep_dir, sweep["sweep_id"], self.embedded)
            trials = self.study.get_trials(deepcopy=False)
            counts = study_counts(trials)
            if self.stop or counts["done"] + counts["running"] >= sweep["trials"]:
                return None
            if failed_in_a_row(trials)[0] >= MAX_FAILED_IN_A_ROW:
                return None
            trial = self.study.ask()
            self.storage.set_trial_user_attr(trial._trial_id, "sweep_id", sweep["sweep_id"])
            try:
                params = suggest(trial, sweep["space"])
                cfg = validate(trial_config(sweep, params), f"trial {trial.number}")
            except CnnError as exc:
                trial.set_user_attr("error", str(exc))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return False
            rel = f"trials/{trial.number}"
            try:
                run = RunDir.create(self.sweep_dir / rel, cfg)
            except CnnError as exc:
                trial.set_user_attr("error", str(exc))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return False
            trial.set_user_attr("run_dir", rel)
            try:
                self.storage.record_heartbeat(trial._trial_id)
            except (AttributeError, NotImplementedError):
                pass
        return trial, cfg, run

    def _dataset(self, cfg):
        from cnncli.data import load_dataset

        key = json.dumps([cfg["data"], cfg["seed"]], sort_keys=True)
        if key not in self._data:
            self._data = {key: load_dataset(cfg["data"], cfg["seed"])}
        return self._data[key]

    def _train(self, trial, cfg, run) -> None:
        import optuna

        from cnncli.errors import TrainingError
        from cnncli.plots import plot_run_curves
        from cnncli.fit import train_epochs
        from cnncli.train import Interrupted, Trainer

        sweep, metric = self.sweep, self.sweep["metric"]
        name = f"{sweep['name']} trial {trial.number}"
        sign = 1 if sweep["direction"] == "maximize" else -1
        beat_stop = threading.Event()
        threading.Thread(target=_heartbeat, args=(self.storage, trial._trial_id, beat_stop),
                         daemon=True).start()
        start = time.monotonic()
        state, error = optuna.trial.TrialState.COMPLETE, None

        def on_epoch(row):
            trial.report(row[metric], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            run.log(f"Sweep {sweep['name']}, trial {trial.number}: "
                    + ", ".join(f"{k}={v}" for k, v in trial.params.items()))
            self.trainer = Trainer(one_core(cfg), data=self._dataset(cfg))
            if self.stop:
                self.trainer.stop_requested = True
            train_epochs(self.trainer, run, name, on_epoch=on_epoch, cfg=cfg)
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
            run.log(f"Pruned after epoch {self.trainer.epoch}")
        except Interrupted:
            state = None
        except (TrainingError, CnnError) as exc:
            state, error = optuna.trial.TrialState.FAIL, str(exc)
            run.log(f"Error: {exc}")
        except Exception as exc:  # a bug, or MemoryError: this trial fails, the sweep goes on
            state, error = optuna.trial.TrialState.FAIL, f"unexpected {type(exc).__name__}: {exc}"
            run.log(f"Error: {error}")
        finally:
            beat_stop.set()
        history = self.trainer.history if self.trainer is not None else []
        if history:
            pruned = state == optuna.trial.TrialState.PRUNED
            plot_run_curves(run.path, f"{name} (pruned after epoch {len(history)})" if pruned
                            else name, force=True)
        seconds = time.monotonic() - start
        with sweep_lock(self.sweep_dir):
            trial.set_user_attr("seconds", seconds)
            if history:
                best = max(history, key=lambda r: (sign * r[metric], -r["epoch"]))
                trial.set_user_attr("best_epoch", best["epoch"])
                trial.set_user_attr("best_value", best[metric])
                trial.set_user_attr("epochs_done", len(history))
            if state is None:  # Ctrl-C: this trial is tried again when the sweep resumes
                trial.set_user_attr("interrupted", True)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                retry_trial(self.study, _frozen(self.study, trial))
            elif state == optuna.trial.TrialState.FAIL:
                trial.set_user_attr("error", error)
                self.study.tell(trial, state=state)
            elif state == optuna.trial.TrialState.PRUNED:
                self.study.tell(trial, state=state)
            elif history:
                self.study.tell(trial, best[metric])
            else:
                trial.set_user_attr("error", "no epoch trained (training.epochs is 0?)")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        run.close()
        self.trainer = None


def one_core(cfg: dict) -> dict:
    """The config a worker trains with: thread policy 1 (no helper thread, single-threaded
    BLAS: ``cnncli.workers``) when the config leaves ``training.threads`` unset, so that N
    workers use N cores. Results are bit-identical under either policy, so the run directory
    records the config as it was (``cnn train best.yaml`` gives the same metrics)."""
    if cfg["training"].get("threads") is not None:
        return cfg
    return {**cfg, "training": {**cfg["training"], "threads": 1}}


def _frozen(study, trial):
    return study._storage.get_trial(trial._trial_id)


def _die_with_parent(parent: int) -> None:
    """End this worker when the sweep's main process dies (SIGKILL included), so no worker
    outlives it: a thread checks the parent every second."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m cnncli.sweep.worker")
    p.add_argument("sweep_dir")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--parent", type=int, default=None)
    args = p.parse_args(argv)
    if args.parent is not None:
        _die_with_parent(args.parent)
    worker = None

    def on_signal(signum, frame):
        if worker is not None:
            worker.request_stop()
        else:
            os._exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    from cnncli.sweep.storage import storage_errors

    url = os.environ.get(STORAGE_ENV) or None
    try:
        with storage_errors(url):  # the server stopped, a refusal: one line in workers.log
            worker = Worker(Path(args.sweep_dir), url)
            worker.loop()
    except CnnError as exc:
        print(f"worker {args.index}: {exc}", file=sys.stderr)
        return 1
    except Exception:  # workers.log is a file in the sweep folder: never the storage password
        import traceback

        from cnncli.sweep.storage import scrub

        print(scrub(f"worker {args.index}: {traceback.format_exc()}", url), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
