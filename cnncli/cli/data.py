"""Dataset commands: ``cnn data download``, ``cnn data export``, ``cnn data preview`` and
``cnn generate-shapes``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import (HELP_OPTIONS, ConfigArg, ForceOpt, OfflineOpt, app, cli_errors,
                            console, escape, fail, fit_table, refuse_existing, set_option)
from cnncli.schema import SHAPES_MAX_N, SHAPES_MAX_NOISE

SetAugmentOpt = set_option("data.augment.flip=horizontal")

data_app = typer.Typer(help="Dataset commands.\n\nExample: cnn data download mnist",
                       no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(data_app, name="data")

DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10")
NO_DOWNLOAD_NEEDED = ("shapes", "digits", "npz")


@data_app.command("download")
def download(
    dataset: Annotated[str, typer.Argument(help="The dataset to download: mnist, fashion_mnist or cifar10.", metavar="DATASET", show_default=False)],
    dir: Annotated[Optional[Path], typer.Option(
        "--dir", metavar="DIR", help="Download into this folder (then train with --set data.path=DIR). "
                      "Default: the cache, $CNNCLI_DATA_DIR/mnist, else "
                      "$XDG_CACHE_HOME/cnncli/mnist, else ~/.cache/cnncli/mnist (fashion-mnist "
                      "or cifar10 in place of mnist for those).",
        show_default=False)] = None,
):
    """Download a dataset's files (checked against their published MD5) and say where they are.

    Files already there are kept. Exits 1 when a file cannot be downloaded.

    Examples:

      cnn data download mnist

      cnn data download mnist --dir data/mnist

      cnn data download cifar10
    """
    if dataset not in DOWNLOADABLE:
        extra = (f" ({dataset} needs no download)" if dataset in NO_DOWNLOAD_NEEDED else "")
        fail(f"unknown dataset {dataset!r}{extra}; datasets to download: "
             f"{', '.join(DOWNLOADABLE)}", code=2)
    if dataset != "mnist":
        return _download_other(dataset, dir)
    with cli_errors():
        from cnncli.data import mnist

        folder = (dir.expanduser() if dir is not None else mnist.cache_dir()).absolute()
        fetched = mnist.ensure_downloaded(folder)
        x_tr, _, x_te, _ = mnist.read_folder(folder)  # parse and cross-check every file
        out = console()
        present = [mnist.find_file(folder, name) for name in mnist.FILES]
        for p in present:
            state = "downloaded" if p.name in fetched else "already present"
            out.print(f"  {p.name:<28} {p.stat().st_size:>12,} bytes  {state}", markup=False)
        out.print(f"MNIST ({len(x_tr):,} training / {len(x_te):,} test images) is in {folder}",
                  markup=False, soft_wrap=True)
        if dir is not None:
            out.print(f"Train on it with: cnn train configs/mnist.yaml --set data.path={folder}",
                      markup=False, soft_wrap=True)


def _download_other(dataset: str, dir: Optional[Path]):
    """``cnn data download fashion_mnist`` / ``cifar10``: as for mnist."""
    with cli_errors():
        from cnncli.data import DATASETS, load_dataset

        if dataset == "cifar10":
            from cnncli.data import cifar10 as module
        else:
            from cnncli.data import fashion_mnist as module
        folder = (dir.expanduser() if dir is not None else module.cache_dir()).absolute()
        fetched = module.ensure_downloaded(folder) if dataset == "cifar10" else \
            module.mnist.ensure_downloaded(folder, source=module)
        cfg = {"name": dataset, **{k: f.default for k, f in DATASETS[dataset].fields.items()},
               "path": str(folder), "limit": None}
        ds = load_dataset(cfg, 0)  # parse and cross-check every file
        out = console()
        for name in fetched:
            out.print(f"  {name:<28} {(folder / name).stat().st_size:>12,} bytes  downloaded",
                      markup=False)
        if not fetched:
            out.print("  the files were already present", markup=False)
        out.print(f"{module.TITLE} ({len(ds.y_train):,} training / {len(ds.y_test):,} test images) "
                  f"is in {folder}", markup=False, soft_wrap=True)
        if dir is not None:
            out.print(f"Train on it with: cnn train configs/{dataset.replace('_', '-')}.yaml "
                      f"--set data.path={folder}", markup=False, soft_wrap=True)


@app.command("generate-shapes")
def generate_shapes(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The .npz file to write.")] = Path("shapes.npz"),
    n: Annotated[int, typer.Option("--n", min=2, max=SHAPES_MAX_N, metavar="INTEGER", help="Number of samples (as data.n in a config).")] = 500,
    noise: Annotated[float, typer.Option("--noise", min=0.0, max=SHAPES_MAX_NOISE, metavar="FLOAT", help="Uniform noise in [-noise, noise] (as data.noise).")] = 0.25,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, metavar="INTEGER", help="Random seed.")] = 0,
    test_size: Annotated[float, typer.Option("--test-size", metavar="FLOAT", help="Fraction held out for testing, in (0, 1).")] = 0.33,
    preview: Annotated[Optional[Path], typer.Option("--preview", metavar="FILE", help="Also draw a grid of samples to this PNG.")] = None,
    force: ForceOpt = False,
):
    """Write the synthetic shapes dataset (3x3 v_line, h_line, cross, diamond plus noise).

    Train on it with data: {name: npz, path: shapes.npz}.

    Example: cnn generate-shapes -o shapes.npz --n 1000 --noise 0.3
    """
    if not 0.0 < test_size < 1.0:
        fail(f"--test-size must be between 0 and 1 (exclusive), got {test_size}", code=2)
    with cli_errors():
        from cnncli.data import load_dataset
        from cnncli.data.npz import write_npz

        if out.is_dir():
            fail(f"{out}: is a directory; give a file name such as {out / 'shapes.npz'}")
        refuse_existing(force, ("--out", out), ("--preview", preview))
        if not out.parent.is_dir():
            fail(f"{out}: cannot write: the directory {out.parent} does not exist")
        ds = load_dataset({"name": "shapes", "n": n, "noise": noise, "test_size": test_size,
                           "stratify": False, "limit": None}, seed)
        write_npz(out, ds)
        if preview is not None:
            from cnncli.plots import plot_dataset_preview

            written = plot_dataset_preview(preview, ds)
        from rich.table import Table

        table = Table(title=f"{out}: {len(ds.y_train)} train, {len(ds.y_test)} test samples")
        table.add_column("class")
        table.add_column("label", justify="right")
        table.add_column("train", justify="right")
        table.add_column("test", justify="right")
        for i, name in enumerate(ds.class_names):
            table.add_row(name, str(i), str(int((ds.y_train == i).sum())), str(int((ds.y_test == i).sum())))
        out_console = console()
        out_console.print(fit_table(table, out_console))
        if preview is not None:
            console().print(f"Wrote {written}", markup=False, soft_wrap=True)


EXPORTABLE = ("shapes", "digits", "mnist", "fashion_mnist", "cifar10")


@data_app.command("export")
def export(
    dataset: Annotated[str, typer.Argument(help="The dataset to write: shapes, digits, mnist, "
                                           "fashion_mnist or cifar10.",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="The folder to create "
                                      "(must not exist, or be empty).", show_default=False)],
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many images "
                                                 "of each split (the first ones).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="The seed of the dataset's own split "
                                      "(shapes, digits), as a config's seed.")] = 0,
    offline: OfflineOpt = False,
):
    """Write a dataset as an image folder: OUT/train/<class>/<i>.png and OUT/test/<class>/<i>.png.

    8-bit PNGs (stored values x 255 / pixel_max, rounded, clipped); <i> is the image's index in
    its split, so the folder holds the same split as the dataset with the same seed. Train on it
    with data: {name: folder, path: OUT}.

    Example: cnn data export digits --out digits-folder
    """
    if dataset not in EXPORTABLE:
        fail(f"unknown dataset {dataset!r}; datasets to export: {', '.join(EXPORTABLE)}", code=2)
    with cli_errors():
        from cnncli.data import DATASETS, load_dataset

        cfg = {"name": dataset, **{k: f.default for k, f in DATASETS[dataset].fields.items()},
               "limit": None}
        ds = load_dataset(cfg, seed, offline)
        counts = _export_with_progress(ds, out, limit)
        from cnncli.data.folder import folder_name
        from rich.table import Table

        table = Table(title=f"{out}: {counts['train'].sum():,} train, {counts['test'].sum():,} "
                            f"test PNGs of {'x'.join(map(str, ds.input_shape))}")
        for col in ("class folder", "train", "test"):
            table.add_column(col, justify="left" if col == "class folder" else "right")
        for i, name in enumerate(ds.class_names):
            table.add_row(escape(folder_name(name)), str(counts["train"][i]), str(counts["test"][i]))
        out_console = console()
        out_console.print(fit_table(table, out_console))
        console().print(f"Train on it with data: {{name: folder, path: {escape(str(out))}}}",
                        soft_wrap=True)


def _export_with_progress(ds, out, limit):
    """export_folder with a progress bar on stderr when it is a terminal."""
    from cnncli.data.folder import export_folder

    err = console(stderr=True)
    if not err.is_terminal:
        return export_folder(ds, out, limit)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("writing PNGs"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("export", total=None)
        return export_folder(ds, out, limit,
                             lambda done, total: progress.update(task, completed=done, total=total))


@data_app.command("preview")
def preview(
    config: ConfigArg,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The picture to write.")] = Path("preview.png"),
    per_class: Annotated[int, typer.Option("--per-class", min=1, max=32, help="Images per class.")] = 8,
    sets: SetAugmentOpt = None,
    offline: OfflineOpt = False,
    force: ForceOpt = False,
):
    """Draw training images as the network sees them (resized, augmented), a row per class.

    The augmentation draws come from the config's seed, as in training.

    Example: cnn data preview configs/folder-example.yaml -o grid.png
    """
    with cli_errors():
        from functools import partial

        from cnncli.config import load_config
        from cnncli.data import load_dataset
        from cnncli.data.augment import augment, is_active
        from cnncli.plots import plot_dataset_preview
        from cnncli.seeds import rng_stream

        refuse_existing(force, ("--out", out))
        cfg = load_config(config, list(sets or []))
        ds = load_dataset(cfg["data"], cfg["seed"], offline)
        err = console(stderr=True)
        for note in ds.notes:
            err.print(escape(note), soft_wrap=True)
        spec = cfg["data"]["augment"]
        rng = rng_stream(cfg["seed"], "augment")  # the training's augmentation stream
        transform = partial(augment, rng=rng, spec=spec) if is_active(spec) else None
        path = plot_dataset_preview(out, ds, per_class, transform)
        console().print(f"Wrote {escape(str(path))}", soft_wrap=True)
