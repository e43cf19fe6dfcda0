"""``cnn export``: a checkpoint as an ONNX model."""

from __future__ import annotations

from pathlib import Path

import typer
from typing_extensions import Annotated

from cnncli.cli.app import CheckpointArg, ForceOpt, app, cli_errors, console, refuse_existing


@app.command()
def export(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="The ONNX file to write "
                                      "(e.g. model.onnx).", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    force: ForceOpt = False,
):
    """Export a checkpoint to ONNX (opset 17) for ONNX Runtime and other runtimes.

    The model takes float32 images of shape (N, C, H, W) as the dataset stores them (e.g.
    0-255 for MNIST), scales them itself, and outputs the class scores (probabilities). Its
    metadata holds the input shape, input_scale, pixel_max and the class names. Needs
    pip install 'cnncli[onnx]'.

    Example: cnn export runs/mnist-bn-20260101-120000/best.npz -o mnist.onnx
    """
    refuse_existing(force, ("--out", out))
    with cli_errors():
        from cnncli.export import export_checkpoint

        model = export_checkpoint(checkpoint, out)
        if not quiet:
            import json

            props = {p.key: p.value for p in model.metadata_props}
            shape = ", ".join(map(str, json.loads(props["input_shape"])))
            classes = json.loads(props["class_names"])
            console().print(f"{out}: ONNX opset {model.opset_import[0].version}; input float32 "
                            f"(N, {shape}) as stored (0 to {float(props['pixel_max']):g}), "
                            f"multiplied by {float(props['input_scale']):.6g} in the graph; "
                            f"output: scores of {len(classes)} classes", markup=False,
                            soft_wrap=True)
