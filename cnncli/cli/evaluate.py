"""``cnn eval``: score a checkpoint on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import (CheckpointArg, ForceOpt, OfflineOpt, app, cli_errors, console, escape, fail,
                            fit_table, load_checkpoint_network, pct, refuse_existing, tta_option)

@app.command("eval")
def eval_(
    checkpoint: CheckpointArg,
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE", help="Evaluate on the data: section of this YAML config instead.")] = None,
    split: Annotated[str, typer.Option("--split", metavar="train|test", help="The split to score.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE", help="Also draw the confusion matrix and worst mistakes to this PNG.")] = None,
    offline: OfflineOpt = False,
    force: ForceOpt = False,
    tta: Annotated[Optional[str], typer.Option(
        "--tta", metavar="flip|flip_shift|none", help="Test-time augmentation: predict from the mean "
        "score of each image and its horizontal mirror (flip_shift: each also shifted 1 pixel "
        "both ways); the loss stays that of the images as they are.", show_default=False)] = None,
):
    """Evaluate a checkpoint: accuracy, loss, per-class accuracy and the confusion matrix.

    The network is rebuilt from the checkpoint alone.

    Example: cnn eval runs/shapes-20260101-120000/best.npz --json
    """
    if split not in ("train", "test"):
        fail(f"--split must be train or test, got {split!r}", code=2)
    refuse_existing(force, ("--plot", plot))
    tta = tta_option(tta)
    with cli_errors():
        _eval(checkpoint, data, split, as_json, plot, offline, tta)


def _eval(checkpoint, data, split, as_json, plot, offline, tta=None):
    import numpy as np

    from cnncli.config import load_config
    from cnncli.data import load_dataset
    from cnncli.errors import ConfigError, DataError
    from cnncli.metrics import confusion_matrix, per_class_accuracy, precision_recall_f1
    from cnncli.train import blas_threads, evaluate, make_loss

    net, cfg, meta, _ = load_checkpoint_network(checkpoint)
    data_cfg, seed = cfg["data"], cfg["seed"]
    if data is not None:
        try:
            other = load_config(data)
        except ConfigError as exc:
            if data.suffix.lower() in (".yaml", ".yml"):
                raise
            raise ConfigError(f"--data takes a YAML config, whose data: section is evaluated on "
                              f"(for arrays in an .npz, write one with data: {{name: npz, path: "
                              f"FILE}}); {exc}") from None
        data_cfg, seed = other["data"], other["seed"]
    ds = load_dataset(data_cfg, seed, offline)
    if tuple(ds.input_shape) != tuple(net.input_shape) or ds.n_classes != net.output_shape[0]:
        source = data if data is not None else f"{checkpoint} (its {data_cfg['name']} data)"
        raise DataError(f"{source}: its images are {'x'.join(map(str, ds.input_shape))} with "
                        f"{ds.n_classes} classes, but the network takes "
                        f"{'x'.join(map(str, net.input_shape))} with {net.output_shape[0]} classes")
    dtype = np.dtype(cfg["training"]["dtype"])
    with blas_threads(cfg["training"]["threads"]):
        res = evaluate(net, make_loss(cfg["training"], net, ds), ds, split, dtype, tta)
    _, y = ds.split(split)
    cm = confusion_matrix(y, res["predictions"], ds.n_classes)
    totals = cm.sum(axis=1)
    per_class = per_class_accuracy(cm)
    prf = precision_recall_f1(y, res["predictions"], ds.n_classes)
    if plot is not None:
        from cnncli.plots import plot_evaluation

        written = plot_evaluation(plot, cm, ds, split, res["predictions"], net, dtype)
        console(stderr=as_json).print(f"Wrote {written}", markup=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"checkpoint": str(checkpoint), "split": split, "n": int(len(y)),
                          "accuracy": res["accuracy"], "loss": res["loss"], "tta": tta,
                          "ema": cfg["training"].get("ema"),
                          "class_names": ds.class_names, "per_class_accuracy": per_class,
                          **prf,
                          "confusion_matrix": cm.tolist()}))
        return
    from rich.table import Table

    out = console()
    out.print(f"{checkpoint} (epoch {meta['epoch']}) on the {ds.name} {split} split, "
              f"{len(y):,} samples", markup=False)
    out.print(f"accuracy {pct(res['accuracy'])}   loss {res['loss']:.6f}", markup=False)
    if cfg["training"].get("ema"):
        out.print(f"Weights: their exponential moving average (training.ema "
                  f"{cfg['training']['ema']:g})", markup=False)
    if tta:
        from cnncli.tta import describe

        out.print(f"Predictions (accuracy, per class, confusion matrix): {describe(tta)}; the "
                  f"loss is that of the images as they are", markup=False, soft_wrap=True)
    out.print(f"macro precision {pct(prf['macro_precision'])}   macro recall "
              f"{pct(prf['macro_recall'])}   macro F1 {pct(prf['macro_f1'])}", markup=False)
    per = Table(title="Per-class accuracy (= recall), precision and F1")
    per.add_column("class")
    per.add_column("samples", justify="right")
    per.add_column("accuracy", justify="right")
    per.add_column("precision", justify="right")
    per.add_column("recall", justify="right")
    per.add_column("F1", justify="right")
    for i, (name, total, acc) in enumerate(zip(ds.class_names, totals, per_class)):
        per.add_row(escape(name), str(int(total)), "-" if acc is None else pct(acc),
                    *["-" if prf[k][i] is None else pct(prf[k][i])
                      for k in ("precision", "recall", "f1")])
    out.print(fit_table(per, out))
    conf = Table(title="Confusion matrix (rows: true, columns: predicted)")
    conf.add_column("true \\ pred")
    for name in ds.class_names:
        conf.add_column(escape(name), justify="right")
    for name, row in zip(ds.class_names, cm):
        conf.add_row(escape(name), *[str(int(v)) for v in row])
    out.print(fit_table(conf, out))
