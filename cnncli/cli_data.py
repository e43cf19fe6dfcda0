"""``cnn data ...``: dataset commands (registered on the main app by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli import _console, app, cli_errors, fail

data_app = typer.Typer(help="Dataset commands.\n\nExample: cnn data download mnist",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

DOWNLOADABLE = ("mnist",)
NO_DOWNLOAD_NEEDED = ("shapes", "digits", "npz")


@data_app.command("download")
def download(
    dataset: Annotated[str, typer.Argument(help="The dataset to download: mnist.", show_default=False)],
    dir: Annotated[Optional[Path], typer.Option(
        "--dir", help="Download into this folder (then train with --set data.path=DIR). "
                      "Default: the cache, $CNNCLI_DATA_DIR/mnist, else "
                      "$XDG_CACHE_HOME/cnncli/mnist, else ~/.cache/cnncli/mnist.",
        show_default=False)] = None,
):
    """Download a dataset's files (checked against their published MD5) and say where they are.

    Files already there are kept. Exits 1 when a file cannot be downloaded.

    Examples:

      cnn data download mnist

      cnn data download mnist --dir data/mnist
    """
    if dataset not in DOWNLOADABLE:
        extra = (f" ({dataset} needs no download)" if dataset in NO_DOWNLOAD_NEEDED else "")
        fail(f"unknown dataset {dataset!r}{extra}; datasets to download: "
             f"{', '.join(DOWNLOADABLE)}", code=2)
    with cli_errors():
        from cnncli.data import mnist

        folder = (dir.expanduser() if dir is not None else mnist.cache_dir()).absolute()
        fetched = mnist.ensure_downloaded(folder)
        x_tr, _, x_te, _ = mnist.read_folder(folder)  # parse and cross-check every file
        out = _console()
        present = [mnist.find_file(folder, name) for name in mnist.FILES]
        for p in present:
            state = "downloaded" if p.name in fetched else "already present"
            out.print(f"  {p.name:<28} {p.stat().st_size:>12,} bytes  {state}", markup=False)
        out.print(f"MNIST ({len(x_tr):,} training / {len(x_te):,} test images) is in {folder}",
                  markup=False, soft_wrap=True)
        if dir is not None:
            out.print(f"Train on it with: cnn train configs/mnist.yaml --set data.path={folder}",
                      markup=False, soft_wrap=True)
