"""``cnn train``: train from a config or resume a run, with live progress."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import OfflineOpt, app, cli_errors, console, escape, fail, pct, set_option

SetOpt = set_option("training.epochs=3", what="key")


def _overrides(epochs, lr, batch_size, seed, sets) -> list[str]:
    out = []
    if epochs is not None:
        out.append(f"training.epochs={epochs}")
    if lr is not None:
        out.append(f"training.learning_rate={lr!r}")
    if batch_size is not None:
        out.append(f"training.batch_size={batch_size}")
    if seed is not None:
        out.append(f"seed={seed}")
    return out + list(sets or [])


def epoch_line(row: dict, epochs: int) -> str:
    w = len(str(epochs))
    return (f"epoch {row['epoch']:>{w}}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {pct(row['train_accuracy']):>7}  test loss {row['test_loss']:.4f} "
            f"acc {pct(row['test_accuracy']):>7}  {row['seconds']:.2f}s")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config file.", metavar="CONFIG", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", metavar="DIR", help="Continue the run in this directory from its last.npz.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", metavar="DIR", help="Where to write the run (default: runs/<config>-<time>).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", metavar="INTEGER", help="Override training.epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", metavar="FLOAT", help="Override training.learning_rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", metavar="INTEGER", help="Override training.batch_size.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="INTEGER", help="Override seed.")] = None,
    sets: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final line.")] = False,
    offline: OfflineOpt = False,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", metavar="FILE", help="Fine-tune: start from this checkpoint's leading layers whose type and shapes match (sets training.init_from).", show_default=False)] = None,
):
    """Train a network from a YAML config and write a run directory.

    The run directory holds config.yaml (resolved), metrics.csv, last.npz, best.npz, train.log
    and curves.png.

    Examples:

      cnn train configs/shapes.yaml

      cnn train configs/mnist.yaml --epochs 5 --set data.limit=10000

      cnn train --resume runs/shapes-20260101-120000 --epochs 80

      cnn train my-folder.yaml --init-from runs/digits/best.npz --set 'training.freeze=until 1'
    """
    overrides = _overrides(epochs, lr, batch_size, seed, sets)
    if init_from is not None:
        import json

        overrides.append(f"training.init_from={json.dumps(str(init_from.absolute()))}")
    with cli_errors():
        _train(config, resume, run_dir, overrides, quiet, offline)


def _train(config, resume, run_dir, overrides, quiet, offline):
    from cnncli.config import load_config
    from cnncli.data import load_dataset
    from cnncli.errors import RunDirError
    from cnncli.run import RunDir, RunDirUsed, default_run_dir, resume_config

    if resume is None and config is None:
        fail("give a CONFIG file to train, or --resume DIR to continue a run", code=2)
    if resume is not None and run_dir is not None:
        fail("--run-dir and --resume exclude each other (--resume names the run directory)", code=2)

    if resume is not None:
        if resume.is_file():
            hint = (f"; resume its run directory: cnn train --resume {resume.parent}"
                    if (resume.parent / "config.yaml").is_file() else "")
            fail(escape(f"--resume {resume}: is a file; --resume takes a run directory (the "
                        f"folder holding config.yaml and last.npz){hint}"))
        run = RunDir.open_existing(resume)
        try:
            cfg = resume_config(resume, config, overrides)
            _fit(cfg, run, config_name=resume.name, resume=True, quiet=quiet, offline=offline)
        finally:
            run.close()
        return

    from cnncli.train import Trainer

    cfg = load_config(config, overrides)
    # the data first: a broken data file fails before any directory exists
    trainer = Trainer(cfg, data=load_dataset(cfg["data"], cfg["seed"], offline))
    path = run_dir if run_dir is not None else default_run_dir(config)
    try:
        run = RunDir.create(path, cfg)
    except RunDirUsed as exc:
        raise RunDirError(f"{exc.path}: run directory exists and is not empty; choose another "
                          f"--run-dir, or continue that run with: cnn train --resume "
                          f"{exc.path}") from None
    try:
        from cnncli.run import config_name

        _fit(cfg, run, config_name=config_name(config), resume=False, quiet=quiet, trainer=trainer)
    finally:
        run.close()


def _fit(cfg, run, config_name, resume, quiet, trainer=None, offline=False):
    from cnncli.errors import CnnError, ConfigError, TrainingError
    from cnncli.fit import train_epochs
    from cnncli.run import EpochsBelowTrained, resume as resume_run
    from cnncli.train import Interrupted

    out = console()
    interactive = out.is_terminal and not quiet

    def say(text: str, always: bool = False):
        run.log(text)
        if not quiet or always:
            out.print(text, markup=False, highlight=False, soft_wrap=True)
            out.file.flush()  # on screen now, not at the next write (a terminal in tmux)

    if resume:
        try:
            trainer, loaded = resume_run(run, cfg, trainer, offline)
        except EpochsBelowTrained as exc:
            raise ConfigError(f"--epochs {exc.epochs} is below the {exc.trained} epochs "
                              f"{exc.path} has already trained") from None
        if not loaded:
            say(f"Resuming {run.path}: no epoch had finished, starting at epoch 1")
        elif trainer.epoch >= trainer.epochs:
            say(f"{run.path} is already complete: all {trainer.epochs} epochs are trained. "
                f"To train longer, resume with more epochs: cnn train --resume {run.path} "
                f"--epochs {trainer.epochs + 10}", always=True)
        elif trainer.should_stop_early():
            say(f"{run.path} already stopped early after epoch {trainer.epoch} (the test loss "
                f"stopped improving); nothing to resume", always=True)
        else:
            say(f"Resuming {run.path} after epoch {trainer.epoch} of {trainer.epochs}")
        run.write_config(cfg)
    else:
        say(f"Training {config_name}: {trainer.net.num_params():,} parameters, "
            f"{len(trainer.data.y_train):,} training / {len(trainer.data.y_test):,} test samples "
            f"-> {run.path}")
        for note in trainer.data.notes:  # files a folder dataset ignored or skipped
            say(note)
        if trainer.init_report is not None:
            say(trainer.init_report.line())
        if trainer.frozen:
            say(f"Frozen (not trained, batch norm in eval mode): layer(s) "
                f"{', '.join(map(str, trainer.frozen))}")
    if cfg["training"].get("tta"):
        from cnncli.tta import describe

        say(f"Test accuracy (each epoch's acc, metrics.csv's test_accuracy): "
            f"{describe(cfg['training']['tta'])}")

    stop = {"count": 0}

    def on_sigint(signum, frame):
        stop["count"] += 1
        trainer.stop_requested = True
        if stop["count"] > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        train_epochs(trainer, run, config_name,
                     run_epoch=lambda t: _run_epoch(t, out, interactive),
                     on_trained=lambda row: say(epoch_line(row, trainer.epochs)))
    except Interrupted:
        if trainer.epoch:
            msg = (f"Interrupted: epoch {trainer.epoch} is saved in {run.path / 'last.npz'}. "
                   f"Resume with: cnn train --resume {run.path}")
        else:
            msg = (f"Interrupted during epoch 1: no epoch had finished, so no checkpoint was "
                   f"saved. Start it again with: cnn train --resume {run.path}")
        run.log(msg)
        console(stderr=True).print(msg, markup=False, soft_wrap=True)
        if trainer.epoch:
            try:  # the curves of every finished epoch, whatever the throttle skipped
                _draw_curves(run.path, config_name, force=True)
            except CnnError:
                pass  # the checkpoint is what matters, and it is on disk
        raise typer.Exit(code=130)
    except TrainingError as exc:
        kept = (f"; {run.path / 'last.npz'} keeps epoch {trainer.epoch}, the last good one"
                if trainer.epoch else "; no epoch had finished, so no checkpoint was written")
        try:
            run.log(f"Error: {exc}{kept}")
        except CnnError:
            pass  # the training error is the one to report
        raise TrainingError(f"{exc}{kept}") from None
    finally:
        signal.signal(signal.SIGINT, previous)

    if trainer.history:
        _draw_curves(run.path, config_name, force=True)
        say(f"Curves: {run.path / 'curves.png'}")
    if trainer.should_stop_early() and trainer.epoch < trainer.epochs:
        say(f"Early stopping after epoch {trainer.epoch}: the test loss has not improved for "
            f"{cfg['training']['early_stopping']['patience']} epochs")
    final = trainer.history[-1]["test_accuracy"] if trainer.history else float("nan")
    best = trainer.best
    accs = [r["test_accuracy"] for r in trainer.history]
    if accs:
        say(f"Test accuracy by epoch: {accuracy_line(accs, out.width if out.is_terminal else None)}")
    tta = cfg["training"].get("tta")
    say(f"Final test accuracy: {pct(final)} (epoch {trainer.epoch}); best: "
        f"{pct(best['test_accuracy'])} (epoch {best['epoch']}); run: {run.path}"
        + (f"; test accuracy with TTA {tta} (training.tta)" if tta else ""), always=True)


def _run_epoch(trainer, out, interactive):
    if not interactive:
        return trainer.train_epoch()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    n = len(trainer.data.y_train)
    bs = trainer.cfg["training"]["batch_size"]
    mean = RunningMean()
    with Progress(TextColumn(f"epoch {trainer.epoch + 1}/{trainer.epochs}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TextColumn("ETA"), TimeRemainingColumn(), console=out,
                  transient=True) as progress:
        task = progress.add_task("train", total=-(-n // bs), loss="-")

        def on_batch(b, batches, loss):
            mean.add(loss, min(b * bs, n) - (b - 1) * bs)
            if b == 1 or b % 10 == 0 or b == batches:
                progress.update(task, completed=b, loss=f"{mean.value:.4f}")

        return trainer.train_epoch(on_batch)


class RunningMean:
    """The mean of the epoch's batch losses so far, weighted by batch size: the train loss the
    epoch line will report, as Keras shows it (the raw per-batch loss jumps)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float, weight: int = 1):
        self.total += value * weight
        self.count += weight

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _draw_curves(path, name, force=False):
    """Refresh curves.png (throttled by cnncli.plots so that drawing stays a small share of
    training time; ``force`` draws now)."""
    from cnncli.plots import plot_run_curves

    plot_run_curves(path, name, force=force)


BLOCKS = "▁▂▃▄▅▆▇█"


def accuracy_line(accs: list[float], width: int | None = None) -> str:
    """The sparkline of accuracies with its range, fitting in ``width`` characters together with
    the 24 of "Test accuracy by epoch: " (None: any length, for a file or a pipe)."""
    scale = f" {pct(min(accs))}..{pct(max(accs))}"
    room = None if width is None else width - 24 - len(scale)
    if room is not None and len(accs) > room:
        scale += f" ({len(accs)} epochs, a mean per mark)"
        room = width - 24 - len(scale)
    return sparkline(accs, None if room is None else max(room, 10)) + scale


def sparkline(values: list[float], width: int | None = None) -> str:
    """One character per value, scaled from the lowest to the highest value (98.2% to 99.2%
    uses every block, not one). Longer than ``width`` characters: each character shows the
    mean of consecutive values, so the line fits."""
    if not values:
        return ""
    if width is not None and len(values) > width:
        width = max(width, 1)
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) / (b - a) for a, b in zip(edges, edges[1:])]
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12 * max(abs(hi), 1.0):
        return BLOCKS[-1] * len(values)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[min(int((v - lo) / (hi - lo) * top + 0.5), top)] for v in values)
