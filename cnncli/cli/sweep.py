"""``cnn sweep run | resume | show``: hyperparameter sweeps on Optuna (imported lazily)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import StorageOpt, app, cli_errors, console, escape, fail

sweep_app = typer.Typer(
    help="Hyperparameter sweeps on Optuna: many trainings of one config, sampled from a space.\n\n"
         "Example: cnn sweep run configs/sweeps/shapes-lr.yaml --workers 2",
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(sweep_app, name="sweep")

WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=1, max=256,
                                         help="Trials trained at once, each in its own process with one BLAS thread.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final line.")]


@sweep_app.command("run")
def run(
    sweep_file: Annotated[Path, typer.Argument(help="The sweep YAML file.", show_default=False)],
    workers: WorkersOpt = 1,
    sweep_dir: Annotated[Optional[Path], typer.Option("--sweep-dir", metavar="DIR", help="Where to write the sweep (default: runs/<sweep>-<time>); an existing sweep directory of the same sweep is joined.", show_default=False)] = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option("--study", metavar="NAME", help="The study's name in the storage (default: the sweep file's name).", show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="Override the sweep file's trial count.", show_default=False)] = None,
    quiet: QuietOpt = False,
):
    """Run a sweep: train trials sampled from the sweep file's space until it has its count.

    Each trial is an ordinary run directory (trials/<number>/); the sweep directory also gets
    trials.csv, best.yaml (ready for cnn train) and sweep.png.

    Examples:

      cnn sweep run configs/sweeps/shapes-lr.yaml --workers 2

      cnn sweep run sweep.yaml --storage postgresql+psycopg://cnn@db-host/cnncli --study lr --workers 8
    """
    with cli_errors():
        from cnncli.run import default_run_dir
        from cnncli.sweep.driver import prepare, storage_url
        from cnncli.sweep.spec import load_sweep

        url = storage_url(storage)
        spec = load_sweep(sweep_file, trials)
        path = sweep_dir if sweep_dir is not None else default_run_dir(sweep_file)
        path, spec = prepare(spec, path, url, study)
        _run(path, spec, url, workers, quiet, storage)


@sweep_app.command("resume")
def resume(
    sweep_dir: Annotated[Path, typer.Argument(help="The sweep directory.", show_default=False)],
    workers: WorkersOpt = 1,
    storage: StorageOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", min=1, help="A new trial count (e.g. to extend a finished sweep).", show_default=False)] = None,
    quiet: QuietOpt = False,
):
    """Continue an interrupted sweep until it has its trial count.

    Finished trials are kept; a trial that was killed mid-way is marked failed and its
    parameters are tried again. --trials changes the count (a finished sweep grows).

    Examples:

      cnn sweep resume runs/shapes-lr-20260101-120000 --workers 2

      cnn sweep resume runs/shapes-lr-20260101-120000 --trials 30
    """
    with cli_errors():
        from cnncli.sweep.driver import read_sweep_dir, resume_url, set_trial_count, storage_url

        spec = read_sweep_dir(sweep_dir)
        url = resume_url(spec, storage, storage_url())
        if trials is not None:
            spec = set_trial_count(sweep_dir, trials)
        if _already_complete(sweep_dir, spec, url):
            return
        _run(sweep_dir, spec, url, workers, quiet, storage)


def _already_complete(sweep_dir: Path, spec: dict, url) -> bool:
    """Say so, as cnn train --resume does, when the sweep has all its trials; True then (its
    reports written again: a kill may have come between a trial's end and its reports)."""
    from cnncli.sweep.driver import open_sweep_study
    from cnncli.sweep.report import best_row, trial_rows, write_reports

    trials = open_sweep_study(sweep_dir, spec, url).get_trials(deepcopy=False)
    rows = trial_rows(trials, spec)
    if _done(rows) < spec["trials"]:
        return False
    write_reports(Path(sweep_dir), trials, spec, plot=True)
    out = console()
    out.print(f"{sweep_dir} is already complete: all {spec['trials']} trials are done. To run "
              f"more, resume with a higher count: cnn sweep resume {sweep_dir} --trials "
              f"{spec['trials'] + 10}", markup=False, soft_wrap=True)
    out.print(summary_line(rows, spec, best_row(rows, spec["direction"]), sweep_dir),
              markup=False, soft_wrap=True)
    return True


def resume_command(path: Path, spec: dict, workers: int, storage: str | None) -> str:
    """The command that continues this sweep as it ran: its worker count and, when sweep.yaml
    cannot give the storage's password, --storage from the environment variable (a password is
    never printed). The study's name and storage are in sweep.yaml."""
    import shlex

    from cnncli.sweep.storage import STORAGE_ENV

    command = f"cnn sweep resume {shlex.quote(str(path))}"
    if workers > 1:
        command += f" --workers {workers}"
    if spec.get("storage") and "***" in spec["storage"]:
        command += f' --storage "${STORAGE_ENV}"'
        if storage:  # given as --storage, not in the environment
            command += f" (with {STORAGE_ENV} set to the URL and its password)"
    return command


@sweep_app.command("show")
def show(
    sweep_dir: Annotated[Optional[Path], typer.Argument(help="The sweep directory.", show_default=False)] = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option("--study", metavar="NAME", help="The study's name (with --storage).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Show a sweep's trials and its best one, from its storage.

    Examples:

      cnn sweep show runs/shapes-lr-20260101-120000

      cnn sweep show --storage postgresql+psycopg://cnn@db-host/cnncli --study lr --json
    """
    with cli_errors():
        from cnncli.sweep.driver import (read_sweep_dir, resume_url, storage_url, sweep_by_url,
                                         sweep_trials)
        from cnncli.sweep.report import best_row, trial_rows

        url = storage_url(storage)
        if sweep_dir is not None:
            spec = read_sweep_dir(sweep_dir)
            url = resume_url(spec, storage, storage_url())
            trials = sweep_trials(sweep_dir, spec, url)
        else:
            if url is None or study is None:
                fail("give a SWEEP_DIR, or --storage URL and --study NAME", code=2)
            spec, trials = sweep_by_url(url, study)
        rows = trial_rows(trials, spec)
        best = best_row(rows, spec["direction"])
        if as_json:
            import json

            print(json.dumps({"study": spec["study"], "storage": spec.get("storage"),
                              "metric": spec["metric"], "direction": spec["direction"],
                              "trials": rows, "best": best}, indent=2))
            return
        out = console()
        out.print(trials_table(rows, spec, out=out))
        out.print(summary_line(rows, spec, best), markup=False, soft_wrap=True)


def _run(path: Path, spec: dict, url, workers: int, quiet: bool, storage: str | None = None):
    from cnncli.sweep.driver import run_workers
    from cnncli.sweep.report import best_row, trial_rows

    out, err = console(), console(stderr=True)
    interactive = out.is_terminal and not quiet
    if not quiet:
        out.print(f"Sweep {spec['name']}: {spec['trials']} trials of {Path(spec['base']).name}, "
                  f"{workers} worker{'s' if workers > 1 else ''}, study {spec['study']} "
                  f"({spec['storage'] or 'embedded'}) -> {path}", markup=False, soft_wrap=True)
    stop = {"count": 0}

    def on_sigint(signum, frame):
        stop["count"] += 1

    printed: set[int] = set()

    def print_finished(trials):
        for r in trial_rows(trials, spec):
            if r["state"] != "running" and r["number"] not in printed:
                printed.add(r["number"])
                out.print(trial_line(r, spec), markup=False, soft_wrap=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if interactive:
            from rich.live import Live

            with Live(console=out, refresh_per_second=4, transient=False) as live:
                result = run_workers(path, url, workers, should_stop=lambda: stop["count"] > 0,
                                     on_update=lambda t: live.update(
                                         trials_table(trial_rows(t, spec), spec, last=20, out=out)))
        else:
            result = run_workers(path, url, workers, should_stop=lambda: stop["count"] > 0,
                                 on_update=None if quiet else print_finished)
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = trial_rows(result["trials"], spec)
    command = resume_command(path, spec, workers, storage)
    if result["outcome"] == "interrupted":
        err.print(f"Interrupted: {_done(rows)} of {spec['trials']} trials done; the running ones "
                  f"will be tried again. Resume with: {command}", markup=False, soft_wrap=True)
        raise typer.Exit(code=130)
    if result["outcome"] != "done":
        fail(escape(f"{result['message']}; resume with: {command}"))
    out.print(summary_line(rows, spec, best_row(rows, spec["direction"]), path), markup=False,
              soft_wrap=True)


def _done(rows) -> int:
    from cnncli.sweep.report import DONE

    return sum(r["state"] in DONE for r in rows)


def _params(r, spec) -> str:
    return " ".join(f"{k}={_fmt(r[k])}" for k in spec["space"])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_line(r: dict, spec: dict) -> str:
    value = f"{spec['metric']} {r['value']:.4f} (epoch {r['best_epoch']})" \
        if r["value"] is not None else "no value"
    secs = f"  {r['seconds']:.1f}s" if r["seconds"] is not None else ""
    note = f"  {r['note']}" if r["note"] else ""
    return f"trial {r['number']:>3} {r['state']:<8} {value}  {_params(r, spec)}{secs}{note}"


def summary_line(rows, spec, best, path=None) -> str:
    from collections import Counter

    states = Counter(r["state"] for r in rows)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    text = f"Sweep {spec['name']}: {len(rows)} trials ({counts or 'none yet'})"
    if best is None:
        return text + "; no trial completed"
    text += (f"; best: trial {best['number']}, {spec['metric']} {best['value']:.4f} "
             f"(epoch {best['best_epoch']}), {_params(best, spec)}")
    if path is not None:
        text += f"; {Path(path) / 'best.yaml'}"
    return text


def column_names(keys) -> dict:
    """Each space key's column header: its last part (``learning_rate`` for
    training.learning_rate, ``out_features`` for network.2.out_features), with as many parts
    before it as tell two keys apart (``0.out_features``, ``2.out_features``)."""
    names = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(".".join(o.split(".")[-n:]) == tail for o in keys) == 1:
                break
        names[k] = tail
    return names


def trials_table(rows, spec, last: int | None = None, out=None):
    """The trials as a table (headers: # state <parameters> <metric> epoch seconds; a column
    nobody has a value in is left out), each note on a line of its own below it; fitted to
    ``out``'s width (see fit_table)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from cnncli.cli.app import fit_table

    out = out or console()
    shown = rows[-last:] if last else rows
    names = column_names(list(spec["space"]))
    columns = [("#", lambda r: str(r["number"])), ("state", lambda r: r["state"])]
    columns += [(names[k], lambda r, k=k: escape(_fmt(r[k]))) for k in spec["space"]]
    columns += [(spec["metric"], lambda r: f"{r['value']:.4f}" if r["value"] is not None else ""),
                ("epoch", lambda r: str(r["best_epoch"] or "")),
                ("seconds", lambda r: f"{r['seconds']:.1f}" if r["seconds"] is not None else "")]
    cells = [[get(r) for _, get in columns] for r in shown]
    keep = [i for i, (name, _) in enumerate(columns)
            if i < 2 or not shown or any(row[i] for row in cells)]
    table = Table(title=escape(f"{spec['name']}: {_done(rows)} of {spec['trials']} trials done"),
                  title_justify="left")
    for i in keep:
        table.add_column(columns[i][0], justify="left" if i == 1 else "right", no_wrap=i < 2)
    for row in cells:
        table.add_row(*[row[i] for i in keep])
    notes = [Text(f"trial {r['number']}: {r['note']}") for r in shown
             if r["note"] and r["state"] != "running"]
    return Group(fit_table(table, out), *notes)
