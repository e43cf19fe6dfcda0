"""Listing the run directories below a folder (``cnn runs``): what each holds and what state it
is in, read from its files without loading any checkpoint.

States: ``finished`` (all planned epochs, or early stopping), ``pruned`` (a sweep trial stopped
by the pruner), ``running`` (its lock is held by a live process), ``failed`` (its log ends with
an error), ``interrupted`` (stopped part-way: Ctrl-C, a kill, a reboot), ``retried`` (a sweep
trial stopped part-way whose parameters the sweep ran again as another trial), ``empty`` (a directory
with nothing in it yet), ``damaged`` (a run directory whose files cannot be read) and
``foreign`` (a directory that is not cnncli's). Sweep directories are listed too, with their
trials below them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cnncli.errors import CnnError, ConfigError, RunDirError
from cnncli.files import read_regular_tail, read_regular_text
from cnncli.run import MAX_METRICS_BYTES, lock_is_held, read_metrics, read_run_config
from cnncli.schema import _is_int, short_repr

RUN_FILES = ("config.yaml", "metrics.csv", "last.npz", "best.npz")
COLUMNS = ("name", "kind", "dataset", "epochs_done", "epochs_planned", "best_test_accuracy",
           "best_epoch", "final_test_accuracy", "seconds", "state", "note")
SORT_KEYS = ("name", "dataset", "epochs", "best", "final", "time", "state")
MAX_DEPTH = 4


def list_runs(root) -> list[dict]:
    """One row per run directory, sweep directory, empty or foreign directory below ``root``."""
    root = Path(root)
    return list(_scan(root, root, 0))


def _scan(root: Path, folder: Path, depth: int):
    try:
        # hidden folders (.git, .ipynb_checkpoints) hold no runs
        children = sorted(p for p in folder.iterdir()
                          if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        try:
            names = {p.name for p in child.iterdir()}
        except OSError as exc:
            yield _row(root, child, "run", state="damaged", note=f"cannot read ({exc.strerror})")
            continue
        if "sweep.yaml" in names:
            yield sweep_row(root, child)
            if (child / "trials").is_dir():
                yield from _as_the_sweep_says(root, child, _scan(root, child / "trials", depth + 1))
        elif names & set(RUN_FILES) or ".lock" in names or "train.log" in names:
            yield run_row(root, child, names)
        else:
            below = list(_scan(root, child, depth + 1)) if depth < MAX_DEPTH else []
            if below:
                yield from below
            elif not names:
                yield _row(root, child, "run", state="empty", note="nothing in it")
            else:
                yield _row(root, child, "other", state="foreign",
                           note="not a cnncli run directory (no config.yaml)")


def _row(root: Path, path: Path, kind: str, **values) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(name=str(path.relative_to(root)), kind=kind, **values)
    return row


def run_row(root: Path, path: Path, names: set) -> dict:
    kind = "trial" if path.parent.name == "trials" and (path.parent.parent / "sweep.yaml").is_file() \
        else "run"
    row = _row(root, path, kind)
    running = lock_is_held(path)
    if "config.yaml" not in names:
        if running:
            row.update(state="running", note="starting")
            return row
        only_leftovers = all(n == ".lock" or n.endswith(".tmp") for n in names)
        row.update(state="empty" if only_leftovers else "damaged",
                   note="a start that never wrote config.yaml" if only_leftovers else "no config.yaml")
        return row
    try:
        cfg = read_run_config(path)
        row["dataset"] = _dataset_name(cfg["data"]["name"])
        epochs = cfg["training"]["epochs"]
        if not _is_int(epochs) or epochs < 1:
            raise ValueError(f"training.epochs: must be an integer >= 1, got {short_repr(epochs)}")
        row["epochs_planned"] = int(epochs)
    except ConfigError as exc:  # its message begins with the file's path
        row.update(state="damaged", note=f"config.yaml: {_short('; '.join(exc.problems))}")
        return row
    except Exception as exc:  # any other damage: a hand-edited file
        row.update(state="damaged", note=f"config.yaml: {_short(exc)}")
        return row
    try:
        metrics = read_metrics(path, ("epoch", "test_accuracy", "seconds"), need_rows=False) \
            if "metrics.csv" in names else []
    except RunDirError as exc:  # its message begins with the file's path
        row.update(state="damaged",
                   note="metrics.csv" + _short(str(exc).removeprefix(str(path / "metrics.csv"))))
        return row
    row["epochs_done"] = len(metrics)
    if metrics:
        best = max(metrics, key=lambda r: (r["test_accuracy"], -r["epoch"]))
        row.update(best_test_accuracy=best["test_accuracy"], best_epoch=int(best["epoch"]),
                   final_test_accuracy=metrics[-1]["test_accuracy"],
                   seconds=sum(r["seconds"] for r in metrics))
        if "last.npz" not in names:
            row.update(state="damaged", note="metrics.csv has epochs but last.npz is missing")
            return row
    log = _last_lines(path / "train.log")
    if running:
        row["state"] = "running"
    elif row["epochs_done"] >= row["epochs_planned"] or any(l.startswith("Early stopping") for l in log):
        row["state"] = "finished"
    elif any(l.startswith("Pruned after epoch") for l in log):
        row["state"] = "pruned"
    elif log and log[-1].startswith("Error:"):
        row.update(state="failed", note=log[-1][len("Error:"):].strip()[:200])
    else:
        row["state"] = "interrupted"
        row["note"] = f"resume with: cnn train --resume {path}" if kind == "run" else ""
    return row


def trials_csv_rows(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep directory's trials.csv ([] when it cannot be read: a named pipe, a
    device, damage), read as a regular file of bounded size: for every reader of trials.csv."""
    try:
        text = read_regular_text(Path(sweep_dir) / "trials.csv", MAX_METRICS_BYTES)
        return list(csv.DictReader(io.StringIO(text)))
    except (OSError, csv.Error, UnicodeDecodeError, CnnError):
        return []


def _dataset_name(name) -> str:
    """A config's data.name, which a row shows (and sorts by): a string, else a ValueError (the
    run is listed as damaged)."""
    from cnncli.data import DATASETS

    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"data.name: must be one of {', '.join(DATASETS)}, got {short_repr(name)}")
    return name


def sweep_row(root: Path, path: Path) -> dict:
    from cnncli.sweep.worker import read_sweep

    row = _row(root, path, "sweep")
    try:
        sweep = read_sweep(path)
        row["dataset"] = _dataset_name(sweep["base_config"]["data"]["name"])
        wanted = int(sweep["trials"])
    except ConfigError as exc:  # its message begins with the file's path
        row.update(state="damaged", note=f"sweep.yaml: {_short('; '.join(exc.problems))}")
        return row
    except Exception as exc:
        row.update(state="damaged", note=f"sweep.yaml: {_short(exc)}")
        return row
    states = []
    try:
        text = read_regular_text(path / "trials.csv", MAX_METRICS_BYTES)
        states = [r.get("state") for r in csv.DictReader(io.StringIO(text))]
    except (OSError, csv.Error, UnicodeDecodeError, CnnError):
        pass
    done = sum(s in ("COMPLETE", "PRUNED", "finished", "pruned") for s in states)
    live = lock_is_held_any(path / "trials")
    row["state"] = "running" if live else "finished" if done >= wanted else "interrupted"
    row["note"] = f"{done} of {wanted} trials done" + ("" if live or done >= wanted else
                                                       f"; resume with: cnn sweep resume {path}")
    return row


def _as_the_sweep_says(root: Path, sweep_dir: Path, rows):
    """Trial rows, a trial that the sweep retried (its trials.csv says ``retried``) marked so,
    with the sweep's note naming the trial that replaced it."""
    retried = {r.get("run_dir"): r.get("note") or "" for r in trials_csv_rows(sweep_dir)
               if r.get("state") == "retried"}
    for row in rows:
        rel = (root / row["name"]).relative_to(sweep_dir).as_posix()
        if row["kind"] == "trial" and rel in retried and row["state"] != "running":
            row.update(state="retried", note=retried[rel])
        yield row


def natural_key(name: str) -> list:
    """``trials/2`` before ``trials/10``: digit runs compare as numbers."""
    import re

    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", name) if part]


def lock_is_held_any(trials: Path) -> bool:
    try:
        return any(lock_is_held(p) for p in trials.iterdir() if p.is_dir())
    except OSError:
        return False


def _last_lines(path: Path, n: int = 5) -> list[str]:
    try:
        lines = read_regular_tail(path)
    except (OSError, CnnError):
        return []
    return [ln.strip() for ln in lines if ln.strip()][-n:]


def _short(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    """Sort by one of SORT_KEYS; rows without that value go last. Accuracies and times sort
    highest first, the rest in ascending order."""
    field = {"epochs": "epochs_done", "best": "best_test_accuracy", "final": "final_test_accuracy",
             "time": "seconds"}.get(key, key)
    descending = key in ("best", "final", "time", "epochs")
    if key == "name":
        return sorted(rows, key=lambda r: natural_key(r["name"]))
    have = [r for r in rows if r[field] is not None]
    missing = [r for r in rows if r[field] is None]
    return sorted(have, key=lambda r: r[field], reverse=descending) + missing
