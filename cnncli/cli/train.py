"""``cnn train``: train from a config or resume a run, with live progress."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import app, cli_errors, console, fail, offline_mode, pct

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
    config: Annotated[Optional[Path], typer.Argument(help="YAML config file.", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its last.npz.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Where to write the run (default: runs/<config>-<time>).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Override training.epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Override training.learning_rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Override training.batch_size.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override seed.")] = None,
    sets: Annotated[Optional[List[str]], typer.Option("--set", help="Override any key, e.g. --set training.epochs=3 (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final line.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never download datasets.")] = False,
):
    """Train a network from a YAML config and write a run directory.

    The run directory holds config.yaml (resolved), metrics.csv, last.npz, best.npz, train.log
    and curves.png.

    Examples:

      cnn train configs/shapes.yaml

      cnn train configs/mnist.yaml --epochs 5 --set data.limit=10000

      cnn train --resume runs/shapes-20260101-120000 --epochs 80
    """
    offline_mode(offline)
    with cli_errors():
        _train(config, resume, run_dir, _overrides(epochs, lr, batch_size, seed, sets), epochs, quiet)


def _train(config, resume, run_dir, overrides, epochs, quiet):
    from cnncli.config import config_diff, load_config, read_config_file, validate, apply_overrides
    from cnncli.errors import ConfigError
    from cnncli.run import RunDir, default_run_dir

    if resume is None and config is None:
        fail("give a CONFIG file to train, or --resume RUN_DIR to continue a run", code=2)
    if resume is not None and run_dir is not None:
        fail("--run-dir and --resume exclude each other (--resume names the run directory)", code=2)

    if resume is not None:
        run = RunDir.open_existing(resume)
        try:
            stored = validate(read_config_file(resume / "config.yaml"), str(resume / "config.yaml"))
            raw = dict(stored)
            wanted = load_config(config, overrides) if config is not None else validate(apply_overrides(raw, overrides), "overrides")
            diff = [d for d in config_diff(stored, wanted) if not d.startswith("training.epochs:")]
            if diff:
                raise ConfigError(f"cannot resume {resume}: the config differs from the run's in "
                                  + "; ".join(diff) + " (only the epoch count may change)")
            cfg = wanted
            _fit(cfg, run, config_name=resume.name, resume=True, quiet=quiet)
        finally:
            run.close()
        return

    from cnncli.train import Trainer

    cfg = load_config(config, overrides)
    trainer = Trainer(cfg)  # loads the data: a broken data file fails before any directory exists
    path = run_dir if run_dir is not None else default_run_dir(config)
    run = RunDir.create(path, cfg)
    try:
        _fit(cfg, run, config_name=Path(config).stem, resume=False, quiet=quiet, trainer=trainer)
    finally:
        run.close()


def _fit(cfg, run, config_name, resume, quiet, trainer=None):
    from cnncli.checkpoint import check_resumable, checkpoint_config, load_checkpoint
    from cnncli.config import dump_config
    from cnncli.config import config_diff
    from cnncli.errors import CheckpointError, CnnError, ConfigError, TrainingError
    from cnncli.run import metrics_csv, train_epochs
    from cnncli.train import Interrupted, Trainer

    out = console()
    interactive = out.is_terminal and not quiet
    trainer = trainer if trainer is not None else Trainer(cfg)

    def say(text: str, always: bool = False):
        run.log(text)
        if not quiet or always:
            out.print(text, markup=False, highlight=False, soft_wrap=True)

    if resume:
        last = run.path / "last.npz"
        if last.exists():
            arrays, meta = load_checkpoint(last)
            try:  # re-validated, so that keys added to cnncli since get their defaults
                stored = checkpoint_config(last, meta)
            except CheckpointError:
                stored = meta["config"]  # as it is: the checks below name what does not fit
            diff = [d for d in config_diff(stored, cfg) if not d.startswith("training.epochs:")]
            if diff:
                raise CheckpointError(f"{last}: was written by another run (its config differs in "
                                      + "; ".join(diff[:3]) + (" ..." if len(diff) > 3 else "")
                                      + "); it is left as it is")
            shape = tuple(trainer.data.input_shape)
            if tuple(meta["input_shape"]) != shape or len(meta["class_names"]) != trainer.data.n_classes:
                raise CheckpointError(
                    f"{last}: was written for {'x'.join(map(str, meta['input_shape']))} images in "
                    f"{len(meta['class_names'])} classes, but this run's data has "
                    f"{'x'.join(map(str, shape))} images in {trainer.data.n_classes} classes")
            check_resumable(last, arrays, trainer.net.params, trainer.net.buffers)
            try:
                trainer.load_state(arrays, meta)
            except CheckpointError as exc:
                raise CheckpointError(f"{last}: does not fit this run's network: {exc}") from None
            if trainer.epochs < trainer.epoch:
                raise ConfigError(f"--epochs {trainer.epochs} is below the {trainer.epoch} epochs "
                                  f"{run.path} has already trained")
            run.write("metrics.csv", metrics_csv(trainer.history))
            say(f"Resuming {run.path} after epoch {trainer.epoch} of {trainer.epochs}")
        else:
            say(f"Resuming {run.path}: no epoch had finished, starting at epoch 1")
        run.write("config.yaml", dump_config(cfg))
    else:
        say(f"Training {config_name}: {trainer.net.num_params():,} parameters, "
            f"{len(trainer.data.y_train):,} training / {len(trainer.data.y_test):,} test samples "
            f"-> {run.path}")
        for note in trainer.data.notes:  # files a folder dataset ignored or skipped
            say(note)

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
                     on_epoch=lambda row: say(epoch_line(row, trainer.epochs)))
    except Interrupted:
        msg = (f"Interrupted: epoch {trainer.epoch} is saved in {run.path / 'last.npz'}. "
               f"Resume with: cnn train --resume {run.path}")
        run.log(msg)
        console(stderr=True).print(msg, markup=False, soft_wrap=True)
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
    if trainer.should_stop_early() and trainer.epoch < trainer.epochs:
        say(f"Early stopping after epoch {trainer.epoch}: the test loss has not improved for "
            f"{cfg['training']['early_stopping']['patience']} epochs")
    final = trainer.history[-1]["test_accuracy"] if trainer.history else float("nan")
    best = trainer.best
    spark = sparkline([r["test_accuracy"] for r in trainer.history])
    if spark:
        say(f"Test accuracy by epoch: {spark}")
    say(f"Final test accuracy: {pct(final)} (epoch {trainer.epoch}); best: "
        f"{pct(best['test_accuracy'])} (epoch {best['epoch']}); run: {run.path}", always=True)


def _run_epoch(trainer, out, interactive):
    if not interactive:
        return trainer.train_epoch()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"epoch {trainer.epoch + 1}/{trainer.epochs}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=out, transient=True) as progress:
        task = progress.add_task("train", total=None, loss="-")

        def on_batch(b, n, loss):
            if b == 1 or b % 10 == 0 or b == n:
                progress.update(task, completed=b, total=n, loss=f"{loss:.4f}")

        return trainer.train_epoch(on_batch)


def _draw_curves(path, name, force=False):
    """Refresh curves.png (throttled by cnncli.plots so that drawing stays a small share of
    training time; ``force`` draws now)."""
    from cnncli.plots import plot_run_curves

    plot_run_curves(path, name, force=force)


BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """One character per value, on a 0..1 scale (accuracies)."""
    if not values:
        return ""
    return "".join(BLOCKS[min(int(v * (len(BLOCKS) - 1) + 0.5), len(BLOCKS) - 1)] for v in values)
