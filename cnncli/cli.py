"""The ``cnn`` command. The only module that prints or exits; heavy modules load per command."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cnncli import __version__

app = typer.Typer(
    help="Train convolutional neural networks written from scratch in NumPy.\n\n"
         "Example: cnn train configs/shapes.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

STATE = {"debug": False}


def _console(stderr: bool = False, **kw):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, **kw)


def fail(message: str, code: int = 1):
    """One line on stderr, then exit."""
    err = _console(stderr=True)
    err.print(f"[red]Error:[/red] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code=code)


@contextmanager
def cli_errors():
    """Turn cnncli's errors (and OS errors) into one line and exit code 1; --debug re-raises."""
    from cnncli.errors import CnnError

    try:
        yield
    except typer.Exit:
        raise
    except CnnError as exc:
        if STATE["debug"]:
            raise
        fail(_escape(str(exc)))
    except OSError as exc:
        if STATE["debug"]:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(_escape(f"{where}{exc.strerror or exc}"))
    except MemoryError:
        if STATE["debug"]:
            raise
        fail("out of memory; try a smaller batch_size or network")
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if STATE["debug"]:
            raise
        fail(_escape(f"unexpected {type(exc).__name__}: {exc} (a bug in cnncli; run with --debug "
                     "for the traceback)"))


_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def _escape(text: str) -> str:
    """A message as one line of Rich-safe text (no line break of any kind, no markup)."""
    from rich.markup import escape

    return escape(text.translate(_LINE_BREAKS))


def _tolerant_streams():
    """Print what the terminal cannot encode (a non-ASCII path under an ASCII locale, a file name
    that is not valid UTF-8) as escapes instead of failing on it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _version(value: bool):
    if value:
        print(f"cnncli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
):
    """Train convolutional neural networks written from scratch in NumPy.

    Example: cnn train configs/shapes.yaml
    """
    STATE["debug"] = debug
    _tolerant_streams()


# --------------------------------------------------------------------------- train
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


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def epoch_line(row: dict, epochs: int) -> str:
    w = len(str(epochs))
    return (f"epoch {row['epoch']:>{w}}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {_pct(row['train_accuracy']):>7}  test loss {row['test_loss']:.4f} "
            f"acc {_pct(row['test_accuracy']):>7}  {row['seconds']:.2f}s")


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
    if offline:
        os.environ["CNNCLI_OFFLINE"] = "1"
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
            wanted = validate(apply_overrides(read_config_file(config), overrides), str(config)) \
                if config is not None else validate(apply_overrides(raw, overrides), "overrides")
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
    import numpy as np

    from cnncli.checkpoint import check_resumable, load_checkpoint
    from cnncli.config import dump_config
    from cnncli.config import config_diff
    from cnncli.errors import CheckpointError, CnnError, ConfigError, TrainingError
    from cnncli.run import metrics_csv
    from cnncli.train import Interrupted, Trainer

    out = _console()
    interactive = out.is_terminal and not quiet
    trainer = trainer if trainer is not None else Trainer(cfg)
    extra_meta = {"config": cfg, "input_shape": list(trainer.data.input_shape),
                  "class_names": trainer.data.class_names, "config_name": config_name}

    def say(text: str, always: bool = False):
        run.log(text)
        if not quiet or always:
            out.print(text, markup=False, highlight=False, soft_wrap=True)

    if resume:
        last = run.path / "last.npz"
        if last.exists():
            arrays, meta = load_checkpoint(last)
            diff = [d for d in config_diff(meta["config"], cfg) if not d.startswith("training.epochs:")]
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
            check_resumable(last, arrays, trainer.net.params)
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

    stop = {"count": 0}

    def on_sigint(signum, frame):
        stop["count"] += 1
        trainer.stop_requested = True
        if stop["count"] > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        # A diverging run overflows on its way to the non-finite loss that stops it: no warnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while trainer.epoch < trainer.epochs and not trainer.should_stop_early():
                row = _run_epoch(trainer, out, interactive)
                is_best = trainer.best["epoch"] == row["epoch"]
                run.save_epoch(trainer, extra_meta, is_best)
                _draw_curves(run.path, config_name)
                say(epoch_line(row, trainer.epochs))
    except Interrupted:
        msg = (f"Interrupted: epoch {trainer.epoch} is saved in {run.path / 'last.npz'}. "
               f"Resume with: cnn train --resume {run.path}")
        run.log(msg)
        _console(stderr=True).print(msg, markup=False, soft_wrap=True)
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
    say(f"Final test accuracy: {_pct(final)} (epoch {trainer.epoch}); best: "
        f"{_pct(best['test_accuracy'])} (epoch {best['epoch']}); run: {run.path}", always=True)


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


# --------------------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint .npz (a run's last.npz or best.npz).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Evaluate on the data of this config instead.")] = None,
    split: Annotated[str, typer.Option("--split", help="train or test.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the confusion matrix and worst mistakes to this PNG.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download datasets.")] = False,
):
    """Evaluate a checkpoint: accuracy, loss, per-class accuracy and the confusion matrix.

    The network is rebuilt from the checkpoint alone.

    Example: cnn eval runs/shapes-20260101-120000/best.npz --json
    """
    if split not in ("train", "test"):
        fail(f"--split must be train or test, got {split!r}", code=2)
    if offline:
        os.environ["CNNCLI_OFFLINE"] = "1"
    with cli_errors():
        _eval(checkpoint, data, split, as_json, plot)


def _eval(checkpoint, data, split, as_json, plot):
    import numpy as np

    from cnncli.checkpoint import load_network
    from cnncli.config import load_config
    from cnncli.data import load_dataset
    from cnncli.errors import DataError
    from cnncli.metrics import confusion_matrix
    from cnncli.train import blas_threads, evaluate, make_loss

    net, cfg, meta, _ = load_network(checkpoint)
    data_cfg, seed = cfg["data"], cfg["seed"]
    if data is not None:
        other = load_config(data)
        data_cfg, seed = other["data"], other["seed"]
    ds = load_dataset(data_cfg, seed)
    if tuple(ds.input_shape) != tuple(net.input_shape) or ds.n_classes != net.output_shape[0]:
        source = data if data is not None else f"{checkpoint} (its {data_cfg['name']} data)"
        raise DataError(f"{source}: its images are {'x'.join(map(str, ds.input_shape))} with "
                        f"{ds.n_classes} classes, but the network takes "
                        f"{'x'.join(map(str, net.input_shape))} with {net.output_shape[0]} classes")
    dtype = np.dtype(cfg["training"]["dtype"])
    with blas_threads(cfg["training"]["threads"]):
        res = evaluate(net, make_loss(cfg["training"], net), ds, split, dtype)
    _, y = ds.split(split)
    cm = confusion_matrix(y, res["predictions"], ds.n_classes)
    totals = cm.sum(axis=1)
    per_class = [float(cm[i, i] / totals[i]) if totals[i] else None for i in range(ds.n_classes)]
    if plot is not None:
        from cnncli.plots import plot_evaluation

        plot_evaluation(plot, cm, ds, split, res["predictions"], net, dtype)
    if as_json:
        print(json.dumps({"checkpoint": str(checkpoint), "split": split, "n": int(len(y)),
                          "accuracy": res["accuracy"], "loss": res["loss"],
                          "class_names": ds.class_names, "per_class_accuracy": per_class,
                          "confusion_matrix": cm.tolist()}))
        return
    from rich.table import Table

    out = _console()
    out.print(f"{checkpoint} (epoch {meta['epoch']}) on the {ds.name} {split} split, "
              f"{len(y):,} samples", markup=False)
    out.print(f"accuracy {_pct(res['accuracy'])}   loss {res['loss']:.6f}", markup=False)
    per = Table(title="Per-class accuracy")
    per.add_column("class")
    per.add_column("samples", justify="right")
    per.add_column("accuracy", justify="right")
    for name, total, acc in zip(ds.class_names, totals, per_class):
        per.add_row(name, str(int(total)), "-" if acc is None else _pct(acc))
    out.print(per)
    conf = Table(title="Confusion matrix (rows: true, columns: predicted)")
    conf.add_column("true \\ pred")
    for name in ds.class_names:
        conf.add_column(name, justify="right")
    for name, row in zip(ds.class_names, cm):
        conf.add_row(name, *[str(int(v)) for v in row])
    out.print(conf)


# --------------------------------------------------------------------------- generate-shapes
@app.command("generate-shapes")
def generate_shapes(
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write.")] = Path("shapes.npz"),
    n: Annotated[int, typer.Option("--n", min=2, help="Number of samples.")] = 500,
    noise: Annotated[float, typer.Option("--noise", min=0.0, help="Uniform noise in [-noise, noise].")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    test_size: Annotated[float, typer.Option("--test-size", help="Fraction held out for testing, in (0, 1).")] = 0.33,
    preview: Annotated[Optional[Path], typer.Option("--preview", help="Also draw a grid of samples to this PNG.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
):
    """Write the synthetic shapes dataset (3x3 v_line, h_line, cross, diamond plus noise).

    Train on it with data: {name: npz, path: shapes.npz}.

    Example: cnn generate-shapes --out shapes.npz --n 1000 --noise 0.3
    """
    if not 0.0 < test_size < 1.0:
        fail(f"--test-size must be between 0 and 1 (exclusive), got {test_size}", code=2)
    with cli_errors():
        import numpy as np

        from cnncli.data import load_dataset

        if out.is_dir():
            fail(f"{out}: is a directory; give a file name such as {out / 'shapes.npz'}")
        if out.exists() and not force:
            fail(f"{out}: exists; pass --force to overwrite it")
        if not out.parent.is_dir():
            fail(f"{out}: cannot write: the directory {out.parent} does not exist")
        ds = load_dataset({"name": "shapes", "n": n, "noise": noise, "test_size": test_size,
                           "stratify": False, "limit": None}, seed)
        from cnncli.atomic import atomic_file

        try:
            with atomic_file(out) as f:
                np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                         y_test=ds.y_test, class_names=np.array(ds.class_names))
        except OSError as exc:
            fail(_escape(f"{out}: cannot write ({exc.strerror or exc})"))
        if preview is not None:
            from cnncli.plots import plot_dataset_preview

            plot_dataset_preview(preview, ds)
        from rich.table import Table

        table = Table(title=f"{out}: {len(ds.y_train)} train, {len(ds.y_test)} test samples")
        table.add_column("class")
        table.add_column("label", justify="right")
        table.add_column("train", justify="right")
        table.add_column("test", justify="right")
        for i, name in enumerate(ds.class_names):
            table.add_row(name, str(i), str(int((ds.y_train == i).sum())), str(int((ds.y_test == i).sum())))
        _console().print(table)


# --------------------------------------------------------------------------- summary
@app.command()
def summary(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
):
    """Validate a config and show its layers as built: output shapes and parameter counts.

    Example: cnn summary configs/mnist.yaml
    """
    with cli_errors():
        import numpy as np

        from cnncli.config import load_config
        from cnncli.data import DATASETS
        from cnncli.network import build_network

        cfg = load_config(config)
        in_shape, _ = DATASETS[cfg["data"]["name"]].describe(cfg["data"])
        net = build_network(cfg["network"], in_shape, np.random.default_rng(0))
        from rich.table import Table

        table = Table(title=f"{config} ({cfg['data']['name']} data, input {'x'.join(map(str, in_shape))})")
        table.add_column("#", justify="right")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("params", justify="right")
        for row in net.summary():
            table.add_row(str(row["index"]), row["type"], "x".join(map(str, row["output_shape"])),
                          f"{row['params']:,}")
        table.add_section()
        table.add_row("", "total", "", f"{net.num_params():,}")
        _console().print(table)


# --------------------------------------------------------------------------- gradcheck
@app.command()
def gradcheck(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    batch: Annotated[int, typer.Option("--batch", min=1, help="Samples in the checked batch.")] = 4,
    impl: Annotated[str, typer.Option("--impl", help="Conv implementation: fast or reference.")] = "fast",
    max_entries: Annotated[int, typer.Option("--max-entries", min=1, help="Entries compared per array (sampled).")] = 200,
    sets: Annotated[Optional[List[str]], typer.Option("--set", help="Override any config key, e.g. --set data.path=DIR (repeatable).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download datasets.")] = False,
):
    """Check every layer's gradients against central finite differences in float64.

    Exits 1 if any layer's input or parameter gradient is off by more than 1e-6 (relative).

    Example: cnn gradcheck configs/shapes.yaml --impl reference
    """
    if impl not in ("fast", "reference"):
        fail(f"--impl must be fast or reference, got {impl!r}", code=2)
    if offline:
        os.environ["CNNCLI_OFFLINE"] = "1"
    with cli_errors():
        import numpy as np

        from cnncli.config import load_config
        from cnncli.data import load_dataset, one_hot
        from cnncli.gradcheck import TOLERANCE, check_network, move_off_kinks
        from cnncli.network import build_network
        from cnncli.train import make_loss

        cfg = load_config(config, list(sets or []))
        ds = load_dataset(cfg["data"], cfg["seed"])
        net = build_network(cfg["network"], ds.input_shape, np.random.default_rng([cfg["seed"], 1]),
                            np.float64, impl=impl)
        x = ds.images(ds.x_train[:batch], np.float64)
        y = one_hot(ds.y_train[:batch], ds.n_classes, np.float64)
        rng = np.random.default_rng(cfg["seed"])
        x = move_off_kinks(net, x, rng)
        results = check_network(net, make_loss(cfg["training"], net), x, y, rng,
                                max_entries=max_entries)
        from rich.table import Table

        table = Table(title=f"{config}: gradients vs central finite differences "
                            f"(float64, {impl} conv, batch {len(x)}, tolerance {TOLERANCE:g}; inputs "
                            f"and biases jittered by 0.01 to stay off ReLU/max-pool kinks)")
        table.add_column("layer")
        table.add_column("gradient")
        table.add_column("entries", justify="right")
        table.add_column("max rel. error", justify="right")
        table.add_column("result")
        for r in results:
            where = f"{r.layer} {r.type}" if r.layer >= 0 else "whole network"
            what = "input" if r.name == "x" else r.name
            table.add_row(where, what, str(r.checked), f"{r.max_rel_error:.2e}",
                          "pass" if r.passed else "FAIL")
        _console().print(table)
        failed = [r for r in results if not r.passed]
        if failed:
            names = ", ".join(f"layer {r.layer} ({r.type}) {r.name}" if r.layer >= 0 else r.name
                              for r in failed)
            fail(f"{len(failed)} gradient(s) failed the check: {names}")
        _console().print(f"all {len(results)} gradients pass", markup=False)


def main():
    app()


# Commands kept in their own modules register themselves on ``app`` when imported.
from cnncli import cli_data, cli_plots  # noqa: E402,F401
