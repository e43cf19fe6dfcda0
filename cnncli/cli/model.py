"""``cnn summary`` and ``cnn gradcheck``: look at a config's network before training it."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import (ConfigArg, OfflineOpt, app, cli_errors, console, fail, fit_table,
                            set_option)

SetLayerOpt = set_option("network.0.out_channels=8")
SetDataOpt = set_option("data.path=DIR")


@app.command()
def summary(
    config: ConfigArg,
    sets: SetLayerOpt = None,
):
    """Validate a config and show its layers as built: output shapes, trainable parameter
    counts and buffers (values saved with the model but not trained, such as batch norm's
    running statistics).

    Examples:

      cnn summary configs/mnist.yaml

      cnn summary configs/shapes.yaml --set network.0.out_channels=8
    """
    with cli_errors():
        import numpy as np

        from cnncli.config import load_config
        from cnncli.data import DATASETS
        from cnncli.network import build_network

        cfg = load_config(config, list(sets or []))
        in_shape, _ = DATASETS[cfg["data"]["name"]].describe(cfg["data"])
        net = build_network(cfg["network"], in_shape, np.random.default_rng(0))
        from rich.table import Table

        table = Table(title=f"{config} ({cfg['data']['name']} data, input {'x'.join(map(str, in_shape))})")
        table.add_column("#", justify="right")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("params", justify="right")
        table.add_column("buffers", justify="right")
        from cnncli.freeze import frozen_indices

        frozen = frozen_indices(cfg["training"].get("freeze"))
        for row in net.summary():
            mark = " (frozen)" if row["index"] in frozen else ""
            table.add_row(str(row["index"]), "  " * row.get("depth", 0) + row["type"] + mark, "x".join(map(str, row["output_shape"])),
                          f"{row['params']:,}", f"{row['buffers']:,}" if row["buffers"] else "")
        table.add_section()
        table.add_row("", "total", "", f"{net.num_params():,}", f"{net.num_buffers():,}")
        console().print(fit_table(table, console()))
        console().print(f"{net.num_params():,} trainable parameters; {net.num_buffers():,} buffer "
                        "values (saved, not trained)", markup=False)
        if frozen:
            kept = sum(net.layers[i].num_params() for i in frozen)
            console().print(f"frozen (training.freeze): layer(s) {', '.join(map(str, frozen))}, "
                            f"{kept:,} of the parameters kept unchanged", markup=False)


@app.command()
def gradcheck(
    config: ConfigArg,
    batch: Annotated[int, typer.Option("--batch", min=1, metavar="INTEGER", help="Samples in the checked batch (drawn at random from the training split).")] = 4,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, metavar="INTEGER", help="Override the config's seed: another batch, initialisation and jitter.", show_default=False)] = None,
    impl: Annotated[str, typer.Option("--impl", metavar="fast|reference", help="Conv implementation.")] = "fast",
    max_entries: Annotated[int, typer.Option("--max-entries", min=1, metavar="INTEGER", help="Entries compared per array (sampled).")] = 200,
    sets: SetDataOpt = None,
    offline: OfflineOpt = False,
):
    """Check every layer's gradients against central finite differences in float64.

    Exits 1 if any layer's input or parameter gradient is off by more than 1e-6 (relative), or
    if a gradient could not be checked at all: where the check point sits on a kink (a ReLU
    input at 0, a tie in a max-pool window), finite differences mean nothing, so such entries
    are skipped and counted; a gradient whose sampled entries are all skipped is unchecked.

    Example: cnn gradcheck configs/shapes.yaml --impl reference
    """
    if impl not in ("fast", "reference"):
        fail(f"--impl must be fast or reference, got {impl!r}", code=2)
    with cli_errors():
        from cnncli.config import load_config
        from cnncli.gradcheck import JITTER, LAYER_NUDGE, TOLERANCE, BatchTooSmall, check_config

        overrides = ([f"seed={seed}"] if seed is not None else []) + list(sets or [])
        cfg = load_config(config, overrides)
        try:
            results, n = check_config(cfg, batch, impl, max_entries, offline)
        except BatchTooSmall:
            fail(f"--batch {batch}: batch_norm is checked in train mode, where a batch of one "
                 "sample has no variance; use --batch 2 or more", code=2)
        from rich.table import Table

        table = Table(title=f"{config}: gradients vs central finite differences "
                            f"(float64, {impl} conv, batch {n}, seed {cfg['seed']}, tolerance "
                            f"{TOLERANCE:g}; inputs and biases jittered by {JITTER:g}, each layer's "
                            f"input by {LAYER_NUDGE:g}, to stay off ReLU/max-pool kinks; entries "
                            f"still on a kink are skipped)")
        table.add_column("layer")
        table.add_column("gradient")
        table.add_column("checked", justify="right")
        table.add_column("skipped at kinks", justify="right")
        table.add_column("max rel. error", justify="right")
        table.add_column("result")
        for r in results:
            where = f"{r.layer} {r.type}" if r.layer >= 0 else "whole network"
            what = "input" if r.name == "x" else r.name
            error = "-" if r.unchecked else f"{r.max_rel_error:.2e}"
            result = "pass" if r.passed else ("unchecked" if r.unchecked else "FAIL")
            table.add_row(where, what, str(r.checked), str(r.skipped), error, result)
        console().print(fit_table(table, console()))

        def names(rows):
            return ", ".join(f"layer {r.layer} ({r.type}) {r.name}" if r.layer >= 0 else r.name
                             for r in rows)

        failed = [r for r in results if not r.passed and not r.unchecked]
        unchecked = [r for r in results if r.unchecked]
        skipped = sum(r.skipped for r in results)
        if failed or unchecked:
            parts = []
            if failed:
                parts.append(f"{len(failed)} gradient(s) failed the check: {names(failed)}")
            if unchecked:
                parts.append(f"{len(unchecked)} gradient(s) unchecked, every sampled entry on a "
                             f"kink: {names(unchecked)}; try another --seed or a larger --batch")
            fail("; ".join(parts))
        console().print(f"all {len(results)} gradients pass"
                        + (f" ({skipped} entries skipped at kinks)" if skipped else ""),
                        markup=False)
