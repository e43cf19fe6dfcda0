"""``cnn lr-find``: the learning-rate range test, a picture and a labelled suggestion."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from cnncli.cli.app import (ConfigArg, ForceOpt, OfflineOpt, app, cli_errors, console, escape,
                            fail, refuse_existing, set_option)

SetOpt = set_option("training.batch_size=64")


@app.command("lr-find")
def lr_find(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The loss-vs-rate picture to write.")] = Path("lr-find.png"),
    start_lr: Annotated[float, typer.Option("--start-lr", metavar="FLOAT", help="The first rate tried.")] = 1e-7,
    end_lr: Annotated[float, typer.Option("--end-lr", metavar="FLOAT", help="The last rate tried.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", min=5, max=100000, metavar="INTEGER", help="Batches trained, one rate each.")] = 100,
    sets: SetOpt = None,
    offline: OfflineOpt = False,
    force: ForceOpt = False,
):
    """Find a learning rate: train a few batches at exponentially growing rates and plot the loss.

    Starts from the config's initial weights (a fresh copy, as cnn train would start) and
    writes nothing but the picture: no run directory. The suggested rate is a suggestion, by
    the rule printed beside it.

    Example: cnn lr-find configs/cifar10.yaml -o lr.png
    """
    if not 0 < start_lr < end_lr:
        fail(f"--start-lr and --end-lr must satisfy 0 < start < end, got {start_lr:g} and "
             f"{end_lr:g}", code=2)
    refuse_existing(force, ("--out", out))
    with cli_errors():
        from cnncli.config import load_config
        from cnncli.data import load_dataset
        from cnncli.lrfind import SUGGESTION_RULE, lr_find as run_lr_find, plot_lr_find
        from cnncli.plots import picture_format

        picture_format(out)  # refuse a bad picture name before training
        cfg = load_config(config, list(sets or []))
        data = load_dataset(cfg["data"], cfg["seed"], offline)
        result = run_lr_find(cfg, start_lr, end_lr, steps, data=data)
        written = plot_lr_find(out, result, f"{config}: learning-rate range test, "
                                            f"{len(result.rates)} batches of "
                                            f"{cfg['training']['batch_size']}")
        c = console()
        c.print(escape(f"Range test of {config}: {len(result.rates)} batches at rates from "
                       f"{start_lr:.3g} to {result.rates[-1] if len(result.rates) else start_lr:.3g}, "
                       f"from the initial weights; {result.stopped}"), soft_wrap=True)
        if result.suggestion is None:
            c.print(escape(f"No suggestion: {'; '.join(result.notes)}"), soft_wrap=True)
        else:
            c.print(escape(f"Minimum of the smoothed loss at rate {result.min_rate:.3g}"),
                    soft_wrap=True)
            c.print(escape(f"Suggested learning rate: {result.suggestion:.3g} (a suggestion, by "
                           f"the rule: {SUGGESTION_RULE}; check it with a short run)"),
                    soft_wrap=True)
            for note in result.notes:
                c.print(escape(f"Note: {note}"), soft_wrap=True)
        c.print(escape(f"Wrote {written}"), soft_wrap=True)
