"""``cnn runs``: the run directories below a folder, one row each."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from cnncli.cli.app import app, cli_errors, console, escape, fail, pct


@app.command("runs")
def runs(
    folder: Annotated[Path, typer.Argument(help="The folder to look in.")] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", help="Sort by name, dataset, epochs, best, final, time or state.")] = "name",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the run directories below FOLDER (sweep trials included) with their state.

    States: finished, pruned, running (its lock is held), failed, interrupted, empty, damaged,
    foreign.

    Examples:

      cnn runs

      cnn runs runs/ --sort best --json
    """
    with cli_errors():
        from cnncli.runs import SORT_KEYS, list_runs, sort_rows

        if sort not in SORT_KEYS:
            fail(f"--sort: must be one of {', '.join(SORT_KEYS)}, got {escape(repr(sort))}", code=2)
        if not folder.is_dir():
            fail(escape(f"{folder}: no such folder" if not folder.exists() else
                        f"{folder}: is not a folder"))
        rows = sort_rows(list_runs(folder), sort)
        if as_json:
            import json

            print(json.dumps(rows, indent=2))
            return
        if not rows:
            console().print(escape(f"{folder}: no run directories"))
            return
        console().print(_table(rows, folder))


def _table(rows, folder):
    """The runs as a table, then each row's note on a line of its own (notes are long; in
    the table they squeezed the other columns to nothing on an 80-column terminal)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=escape(f"Runs in {folder}"), title_justify="left")
    table.add_column("name", overflow="fold", min_width=min(12, max(len(r["name"]) for r in rows)))
    for name in ("dataset", "epochs", "best", "final", "time", "state"):
        table.add_column(name, justify="left" if name in ("dataset", "state") else "right",
                         no_wrap=True)
    notes = []
    for r in rows:
        epochs = (f"{r['epochs_done']}/{r['epochs_planned']}"
                  if r["epochs_planned"] is not None and r["kind"] != "sweep" else "")
        best = (f"{pct(r['best_test_accuracy'])} ({r['best_epoch']})"
                if r["best_test_accuracy"] is not None else "")
        final = pct(r["final_test_accuracy"]) if r["final_test_accuracy"] is not None else ""
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
        table.add_row(escape(r["name"]), r["dataset"] or "", epochs, best, final, secs, r["state"])
        if r["note"]:
            notes.append(Text(f"{r['name']}: {r['note']}"))
    return Group(table, *notes)
