"""``cnn predict``: what a trained model says about new images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import typer
from typing_extensions import Annotated

from cnncli.cli.app import (CheckpointArg, ForceOpt, ImagesArg, app, cli_errors, console, escape, fail,
                            refuse_existing, tta_option)

PLOT_LIMIT = 64  # images drawn by --plot
MISSING_OPTIONS = {"input_shape": "--size H W and --channels C", "pixel_max": "--pixel-max V",
                   "input_scale": "--input-scale S"}  # the options that supply what a model lacks


@app.command("predict")
def predict(
    checkpoint: CheckpointArg,
    paths: ImagesArg,
    top: Annotated[int, typer.Option("--top-k", "-k", min=1, metavar="K",
                                     help="Classes shown per image, best first.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    csv_out: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", help="Also write the predictions as CSV.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE", help=f"Also draw the first {PLOT_LIMIT} images with their "
                                       "predictions (.png).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N",
                                            help="Images scored at once.")] = 256,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip image files that cannot be decoded (their count and first "
                           "names are printed) instead of stopping.")] = False,
    size: Annotated[Optional[Tuple[int, int]], typer.Option(
        "--size", metavar="H W", help="The model's image size, for a checkpoint that does not "
                                      "record it.", show_default=False)] = None,
    channels: Annotated[Optional[int], typer.Option(
        "--channels", metavar="C", help="The model's channel count (1 or 3), for a checkpoint "
                                        "that does not record it.", show_default=False)] = None,
    pixel_max: Annotated[Optional[float], typer.Option(
        "--pixel-max", metavar="V", help="The stored value of a full-intensity pixel (255 for "
                                         "8-bit images); replaces the checkpoint's.",
        show_default=False)] = None,
    input_scale: Annotated[Optional[float], typer.Option(
        "--input-scale", metavar="S", help="The factor from stored values to network inputs; "
                                           "replaces the checkpoint's.", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")] = False,
    force: ForceOpt = False,
    tta: Annotated[Optional[str], typer.Option(
        "--tta", metavar="flip|flip_shift|none", help="Test-time augmentation: each score is the mean "
        "over the image and its horizontal mirror (flip_shift: each also shifted 1 pixel both "
        "ways).", show_default=False)] = None,
):
    """Predict the class of images with a trained model.

    Images are decoded and converted as an image-folder dataset does, resized to the model's
    size, and scaled as in training: all from the checkpoint. The scores are the model's
    probabilities, the same numbers its ONNX export (cnn export) outputs.

    Examples:

      cnn predict runs/digits/best.npz photo.png

      cnn predict runs/digits/best.npz my-images/ --top-k 3 --csv predictions.csv

      cnn predict runs/digits/best.npz test.npz --json
    """
    if channels is not None and channels not in (1, 3):
        fail(f"--channels must be 1 or 3, got {channels}", code=2)
    if size is not None and min(size) < 1:
        fail(f"--size must be two integers >= 1 (H W), got {size[0]} {size[1]}", code=2)
    refuse_existing(force, ("--csv", csv_out), ("--plot", plot))
    tta = tta_option(tta)
    with cli_errors():
        _predict(checkpoint, paths, top, as_json, csv_out, plot, batch_size, skip_bad, size,
                 channels, pixel_max, input_scale, quiet, tta)


def _predict(checkpoint, paths, k, as_json, csv_out, plot, batch_size, skip_bad, size, channels,
             pixel_max, input_scale, quiet, tta=None):
    from cnncli import predict as pr
    from cnncli.checkpoint import load_network
    from cnncli.errors import CheckpointError
    from cnncli.files import refuse_overwriting
    from cnncli.train import blas_threads

    for out in (csv_out, plot):
        if out is not None:
            refuse_overwriting(out, [checkpoint, *paths], "the checkpoint or an input")
    net, cfg, meta, _ = load_network(checkpoint)
    try:
        spec = pr.model_input(checkpoint, meta, net, size, channels, pixel_max, input_scale)
    except CheckpointError as exc:
        if getattr(exc, "missing", None) is None:
            raise
        options = ", ".join(MISSING_OPTIONS[k] for k in exc.missing)
        raise CheckpointError(str(exc).replace(exc.hint, f"{options} (e.g. --pixel-max 255 "
                                               "--input-scale 0.00392156862745098 for 8-bit images "
                                               "scaled to 0-1)")) from None
    inputs = pr.collect(paths, spec.shape)
    err = console(stderr=True)
    interactive = err.is_terminal and not quiet and not as_json
    with blas_threads(cfg["training"].get("threads")):
        if interactive and len(inputs.items) > batch_size:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            with Progress("predict", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=err, transient=True) as progress:
                task = progress.add_task("predict", total=len(inputs.items))
                result = pr.run(net, spec, inputs, k, batch_size, skip_bad,
                                lambda n: progress.advance(task, n),
                                PLOT_LIMIT if plot else 0, tta=tta)
        else:
            result = pr.run(net, spec, inputs, k, batch_size, skip_bad,
                            keep_images=PLOT_LIMIT if plot else 0, tta=tta)
    if tta:  # every output says so: a note, and a field of each JSON/CSV row
        from cnncli.tta import describe

        for row in result[0]:
            row["tta"] = tta
        if not quiet:
            err.print(escape(f"Scores: {describe(tta)}"), soft_wrap=True)
    rows, skipped, resized, kept, converted = result
    if skipped and not rows:
        from cnncli.errors import DataError

        raise DataError(f"none of the {len(skipped)} images could be decoded, so there is nothing "
                        f"to predict; the first: {skipped[0][1]}")

    def note(text):
        if not quiet:
            err.print(escape(text), soft_wrap=True)

    if skipped:
        names = ", ".join(item.name for item, _ in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        note(f"Skipped {len(skipped)} image file(s) that could not be decoded: {names}{more}")
    if resized:
        h, w = spec.shape[1:]
        note(f"Note: {resized} image(s) were resized to the model's {h}x{w}")
    if converted:
        note(f"Note: {converted} " + ("colour image(s) were converted to grayscale for the "
                                      "grayscale model" if spec.shape[0] == 1 else
                                      "grayscale image(s) were converted to RGB for the colour "
                                      "model"))
    if k > len(spec.class_names):
        note(f"Note: the model has {len(spec.class_names)} classes, so --top-k {k} shows "
             f"{len(spec.class_names)}")
    if inputs.ignored:
        note(f"Note: {inputs.ignored} file(s) in the given folders are not images and were ignored")
    if csv_out is not None:
        from cnncli.atomic import atomic_file

        # a file or class name that is not UTF-8 is written as its own bytes
        with atomic_file(csv_out, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(pr.csv_text(rows, k))
        note(f"Wrote {csv_out} ({len(rows)} rows)")
    if plot is not None:
        from cnncli.plots import plot_predictions

        shown = min(len(kept), len(rows))
        written = plot_predictions(plot, kept[:shown], rows[:shown], spec.pixel_max,
                                   f"{checkpoint}: predictions for {shown} of {len(rows)} images")
        note(f"Wrote {written}")
    if as_json:
        print(json.dumps(rows))
        return
    _table(rows, k)


def _table(rows, k):
    """One row per image: path, prediction, score and a column per runner-up (#2, #3, ...);
    when those columns do not fit the terminal beside a path of 10 characters, the runners-up
    share one column, ``8 13.53%, 7 12.12%, ...``, wrapped between entries."""
    from rich.table import Table

    from cnncli.cli.app import fit_table, wrap_at_separators

    out = console()
    table = Table(title=f"{len(rows)} prediction(s)")
    table.add_column("path", overflow="fold")
    table.add_column("prediction", overflow="fold")
    table.add_column("score", justify="right", no_wrap=True)
    extra = min(k, max((len(r["top"]) for r in rows), default=1)) - 1
    runners = [[f"{t['class']} {100 * t['score']:.2f}%" for t in r["top"][1:extra + 1]] for r in rows]
    cells = [[r["path"], r["class"], f"{100 * r['score']:.2f}%", *others]
             for r, others in zip(rows, runners)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(["path", "prediction", "score"] + ["#10"] * extra)]
    if extra > 1 and 10 + sum(widths[1:]) + 3 * len(widths) + 1 > out.width:
        table.add_column("runners-up", overflow="fold")
        cells = [c[:3] + [", ".join(others)] for c, others in zip(cells, runners)]
        widths = widths[:3] + [len("8 99.99%,") * 2]
    else:
        for i in range(extra):
            table.add_column("runner-up" if extra == 1 else f"#{i + 2}", overflow="fold")
    room = max(len("path"), out.width - sum(widths[1:]) - (3 * len(widths) + 1))
    table.columns[0].width = min(room, max((len(c[0]) for c in cells), default=4))
    for c in cells:  # a long path breaks after a / - or _, not anywhere
        table.add_row(escape(wrap_at_separators(c[0], room)), *map(escape, c[1:]))
    out.print(fit_table(table, out))
