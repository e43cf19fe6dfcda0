"""Picture commands: ``cnn plot`` and ``cnn show-kernels`` .

matplotlib loads inside the commands only (through cnncli.plots), never when the CLI starts."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from typing_extensions import Annotated

from cnncli.cli.app import ForceOpt, app, cli_errors, console, load_checkpoint_network, refuse_existing


@app.command("plot")
def plot_cmd(
    run_dirs: Annotated[List[Path], typer.Argument(
        help="Run directories (each holds metrics.csv).", metavar="RUN_DIR", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", metavar="FILE", help="The picture to write (.png; .svg and .pdf work too).")] = Path("plot.png"),
    force: ForceOpt = False,
):
    """Draw the loss and accuracy curves of one or more runs in one figure.

    One colour per run, named after its directory; solid lines are training, dashed lines test,
    a star marks each run's best test accuracy. Only each run's metrics.csv is read, so a run
    still training, or interrupted, can be plotted too.

    Examples:

      cnn plot runs/shapes-20260101-120000

      cnn plot runs/shapes-a runs/shapes-b --out compare.png
    """
    refuse_existing(force, ("--out", out))
    with cli_errors():
        from cnncli.plots import plot_runs

        written = plot_runs(out, run_dirs)
        n = len(run_dirs)
        console().print(f"Wrote {written} ({n} run{'s' if n != 1 else ''})", markup=False,
                         soft_wrap=True)


@app.command("show-kernels")
def show_kernels(
    checkpoint: Annotated[Path, typer.Argument(
        help="A checkpoint .npz (a run's last.npz or best.npz).", metavar="CHECKPOINT", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", metavar="FILE", help="The picture to write (.png; .svg and .pdf work too).")] = Path("kernels.png"),
    force: ForceOpt = False,
):
    """Draw the learned kernels of every conv2d layer of a checkpoint as small images.

    One row per output channel, one column per input channel (a layer with one input channel,
    such as the first on grey images: its kernels in a square grid); red is positive, blue
    negative, white 0 (one symmetric colour scale per layer).

    Example: cnn show-kernels runs/shapes-20260101-120000/best.npz --out kernels.png
    """
    refuse_existing(force, ("--out", out))
    with cli_errors():
        from cnncli.plots import plot_kernels

        net, cfg, meta, _ = load_checkpoint_network(checkpoint)
        name = meta.get("config_name") or checkpoint.parent.name
        written = plot_kernels(out, net, f"{checkpoint}: {name}, epoch {meta['epoch']}",
                               source=str(checkpoint))
        console().print(f"Wrote {written}", markup=False, soft_wrap=True)
