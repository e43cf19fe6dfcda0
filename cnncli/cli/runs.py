"""``cnn runs``: the run directories below a folder, one row each."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from cnncli.cli.app import app, cli_errors, console, escape, fail, pct


@app.command("runs")
def runs(
    folder: Annotated[Path, typer.Argument(help="The folder to look in.")] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", metavar="name|dataset|epochs|best|final|time|state", help="The column to sort by.")] = "name",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the run directories below FOLDER (sweep trials included) with their state.

    States: finished, pruned, running (its lock is held), failed, retried (a sweep trial run
    again as another trial), interrupted, empty, damaged, foreign.

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
        out = console()
        out.print(_table(rows, folder, out))


def _table(rows, folder, out):
    """The runs as a table, then each row's note on a line of its own (notes are long; in
    the table they squeezed the other columns to nothing on an 80-column terminal). A sweep's
    trials that follow it are shown as ``  trials/<n>`` below it; a column with no value in any
    row is left out; long names wrap after a ``/``, ``-`` or ``_``, the headers never."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from cnncli.cli.app import fit_table, wrap_at_separators

    cells, sweep = [], None
    for r in rows:
        epochs = (f"{r['epochs_done']}/{r['epochs_planned']}"
                  if r["epochs_planned"] is not None and r["kind"] != "sweep" else "")
        best = (f"{pct(r['best_test_accuracy'])} ({r['best_epoch']})"
                if r["best_test_accuracy"] is not None else "")
        final = pct(r["final_test_accuracy"]) if r["final_test_accuracy"] is not None else ""
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else ""
        name = r["name"]
        if r["kind"] == "sweep":
            sweep = name
        elif r["kind"] == "trial" and sweep is not None and name.startswith(f"{sweep}/trials/"):
            name = "  " + name[len(sweep) + 1:]
        else:
            sweep = None
        cells.append([name, str(r["dataset"] or ""), epochs, best, final, secs, r["state"]])
    headers = ("name", "dataset", "epochs", "best", "final", "time", "state")
    keep = [i for i in range(len(headers)) if i in (0, 6) or any(c[i] for c in cells)]
    widths = {i: max(len(headers[i]), *(len(c[i]) for c in cells)) for i in keep}
    room = out.width - sum(widths[i] for i in keep[1:]) - 2 * (len(keep) - 1)
    name_width = max(len(headers[0]), min(widths[0], room), 12)
    table = Table(title=escape(f"Runs in {folder}"), title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for i in keep:
        table.add_column(headers[i], justify="left" if i in (0, 1, 6) else "right",
                         no_wrap=i != 0, overflow="fold", min_width=name_width if i == 0 else None)
    for c in cells:
        table.add_row(*[escape(wrap_at_separators(c[0], name_width)) if i == 0 else escape(c[i]) for i in keep])
    notes = [Text(f"{r['name']}: {r['note']}") for r in rows if r["note"]]
    return Group(fit_table(table, out), *notes)

