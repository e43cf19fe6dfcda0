"""A sweep's reports, from the study as its storage holds it: ``trials.csv`` (one row per
trial), ``best.yaml`` (the best trial's full config, ready for ``cnn train``) and ``sweep.png``
(value per trial with the running best; value against each parameter)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

FIXED_COLUMNS = ["number", "state"]
TAIL_COLUMNS = ["value", "best_epoch", "seconds", "run_dir", "note"]
STATES = {"COMPLETE": "finished", "PRUNED": "pruned", "RUNNING": "running", "FAIL": "failed"}
"""A trial's state under the names ``cnn runs`` gives run directories (Optuna's COMPLETE,
PRUNED, RUNNING, FAIL); a failed trial whose parameters were queued again (it was interrupted or
its process died) is ``retried``."""
DONE = ("finished", "pruned")


def trial_rows(trials, sweep: dict) -> list[dict]:
    """One dict per trial that started (queued ones are left out), in trial-number order.
    ``state`` is one of STATES' names or ``retried`` (its note names the trial that replaced
    it); ``value`` is the trial's best epoch's metric (so far, for a pruned or failed one);
    ``run_dir`` is relative to the sweep directory, and empty for trials another machine ran."""
    rows = []
    replaced_by = {t.user_attrs["retry_of"]: t.number for t in sorted(trials, key=lambda t: t.number)
                   if isinstance(t.user_attrs.get("retry_of"), int)}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name == "WAITING":
            continue
        attrs = t.user_attrs
        value = t.value if t.state.name == "COMPLETE" else attrs.get("best_value")
        mine = attrs.get("sweep_id") == sweep["sweep_id"]
        state = STATES.get(t.state.name, t.state.name.lower())
        again = f"retried as trial {replaced_by[t.number]}" if t.number in replaced_by \
            else "its parameters queued again"
        note = attrs.get("error") or (f"interrupted; {again}" if attrs.get("interrupted") else "") \
            or (f"killed: {attrs['killed']}; {again}" if attrs.get("killed") else "")
        if t.state.name == "RUNNING":
            note = "running"
        elif t.state.name == "FAIL" and not note:
            note = f"no result: its process died (no heartbeat); {again}"
        if t.state.name == "FAIL" and not attrs.get("error"):
            state = "retried"
        rows.append({"number": t.number, "state": state,
                     **{k: t.params.get(k) for k in sweep["space"]},
                     "value": value, "best_epoch": attrs.get("best_epoch"),
                     "seconds": attrs.get("seconds"),
                     "run_dir": attrs.get("run_dir", "") if mine else "", "note": note})
    return rows


def best_row(rows: list[dict], direction: str) -> dict | None:
    done = [r for r in rows if r["state"] == "finished" and r["value"] is not None]
    if not done:
        return None
    sign = 1 if direction == "maximize" else -1
    return max(done, key=lambda r: (sign * r["value"], -r["number"]))


def trials_csv(rows: list[dict], sweep: dict) -> str:
    buf = io.StringIO()
    columns = FIXED_COLUMNS + list(sweep["space"]) + TAIL_COLUMNS
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c]
                    for c in columns])
    return buf.getvalue()


def best_config_text(sweep: dict, row: dict) -> str:
    """The best trial's resolved config as YAML, with a comment saying where it comes from."""
    from cnncli.config import dump_config, validate
    from cnncli.sweep.spec import trial_config

    params = {k: row[k] for k in sweep["space"]}
    cfg = validate(trial_config(sweep, params), f"trial {row['number']}")
    head = (f"# Best trial of sweep {sweep['name']} (study {sweep['study']}): trial "
            f"{row['number']}, {sweep['metric']} {row['value']!r} at epoch {row['best_epoch']}\n"
            f"# cnn train best.yaml  trains it again (same seed, same metrics)\n")
    return head + dump_config(cfg)


def write_reports(sweep_dir: Path, trials, sweep: dict, plot: bool = True) -> list[dict]:
    """Write trials.csv, best.yaml (once a trial completed) and, with ``plot``, sweep.png."""
    from cnncli.run import write_text_atomic

    sweep_dir = Path(sweep_dir)
    rows = trial_rows(trials, sweep)
    write_text_atomic(sweep_dir / "trials.csv", trials_csv(rows, sweep))
    best = best_row(rows, sweep["direction"])
    if best is not None:
        write_text_atomic(sweep_dir / "best.yaml", best_config_text(sweep, best))
    if plot and any(r["value"] is not None for r in rows):
        sweep_figure(sweep_dir / "sweep.png", rows, sweep)
    return rows


def sweep_figure(path: Path, rows: list[dict], sweep: dict) -> Path:
    """Value per trial in order, with the running best; then the value against each parameter
    (log axes for log ranges; choices as categories)."""
    from matplotlib.ticker import MaxNLocator

    from cnncli.plots import new_figure, save_figure

    keys = list(sweep["space"])
    n = 1 + len(keys)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig = new_figure(4.0 * cols, 3.2 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    colors = {"finished": "tab:blue", "pruned": "tab:orange", "failed": "tab:red",
              "retried": "tab:gray"}
    shown = [r for r in rows if r["value"] is not None and not math.isnan(r["value"])]
    ax = axes[0]
    for state, color in colors.items():
        pts = [r for r in shown if r["state"] == state]
        if pts:
            ax.scatter([r["number"] for r in pts], [r["value"] for r in pts], s=18, color=color,
                       label=state)
    sign = 1 if sweep["direction"] == "maximize" else -1
    best, xs, ys = None, [], []
    for r in sorted(shown, key=lambda r: r["number"]):
        if r["state"] == "finished" and (best is None or sign * r["value"] > sign * best):
            best = r["value"]
        if best is not None:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(sweep["metric"])
    ax.set_title(f"{sweep['name']}: {len(rows)} trials")
    ax.legend(fontsize=7)
    for ax, key in zip(axes[1:], keys):
        entry = sweep["space"][key]
        for state, color in colors.items():
            pts = [r for r in shown if r["state"] == state and r[key] is not None]
            if not pts:
                continue
            xv = [r[key] if entry["kind"] != "choice" else _choice_index(entry, r[key]) for r in pts]
            ax.scatter(xv, [r["value"] for r in pts], s=18, color=color)
        if entry["kind"] == "choice":  # categories in the sweep file's order, not as text
            ax.set_xticks(range(len(entry["choices"])), [str(c) for c in entry["choices"]])
            ax.set_xlim(-0.5, len(entry["choices"]) - 0.5)
        if entry.get("log"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(sweep["metric"])
    for ax in axes[n:]:
        ax.set_visible(False)
    return save_figure(fig, path)


def _choice_index(entry: dict, value) -> int:
    for i, c in enumerate(entry["choices"]):
        if c == value and type(c) is type(value):
            return i
    return next((i for i, c in enumerate(entry["choices"]) if str(c) == str(value)), 0)
