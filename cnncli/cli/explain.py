"""``cnn explain``: Grad-CAM and saliency maps of what a trained model looked at."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cnncli.cli.app import CheckpointArg, ForceOpt, ImagesArg, app, cli_errors, console, escape, fail, refuse_existing

METHODS = {"gradcam": ("gradcam",), "saliency": ("saliency",), "both": ("gradcam", "saliency")}


@app.command("explain")
def explain(
    checkpoint: CheckpointArg,
    paths: ImagesArg,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE",
                                      help="The picture to write (.png).")] = Path("explain.png"),
    method: Annotated[str, typer.Option("--method", metavar="gradcam|saliency|both",
                                        help="The explanation to draw.")] = "both",
    layer: Annotated[Optional[int], typer.Option(
        "--layer", metavar="INDEX", help="The conv layer (conv2d or residual) Grad-CAM explains, "
                                         "by its index in the network (default: the last one).",
        show_default=False)] = None,
    class_name: Annotated[Optional[str], typer.Option(
        "--class", metavar="NAME", help="Explain this class's score (default: each image's "
                                        "predicted class).", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N",
                                       help="Draw at most the first N images.")] = 16,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    force: ForceOpt = False,
):
    """Show what a trained model looked at: Grad-CAM heat maps and saliency maps.

    One row per image: the image titled with the explained class and its score, its Grad-CAM
    map over it (the last conv layer's activations weighted by the mean gradient of the
    class's score, ReLU, upsampled) and its saliency map (|d score / d input|, the largest
    over channels). The gradients are the network's own backward pass of the score: the
    network's output for the class (the logit when it ends in a dense layer).

    Examples:

      cnn explain runs/digits/best.npz digits-folder/test/3 -o threes.png

      cnn explain runs/digits/best.npz photo.png --class 8 --method gradcam --layer 0
    """
    if method not in METHODS:
        fail(f"--method must be gradcam, saliency or both, got {method!r}", code=2)
    refuse_existing(force, ("--out", out))
    with cli_errors():
        _explain(checkpoint, paths, out, METHODS[method], layer, class_name, limit, quiet)


def _explain(checkpoint, paths, out, methods, layer, class_name, limit, quiet):
    import numpy as np

    from cnncli import explain as ex
    from cnncli import predict as pr
    from cnncli.checkpoint import load_network
    from cnncli.plots import save_figure
    from cnncli.scoring import outputs_to_scores, score_rule
    from cnncli.train import blas_threads

    net, cfg, meta, _ = load_network(checkpoint)
    spec = pr.model_input(checkpoint, meta, net)
    index = ex.check_layer(net, layer, spec.shape) if "gradcam" in methods else None
    wanted = ex.class_index(class_name, spec.class_names) if class_name is not None else None
    inputs = pr.collect(paths, spec.shape)
    total = len(inputs.items)
    inputs.items = inputs.items[:limit]
    with blas_threads(cfg["training"].get("threads")):
        batch = next(pr.predict_batches(net, spec, inputs, batch_size=len(inputs.items)))
        dtype = next((p.dtype for p in net.params.values()), np.dtype(np.float64))
        x = batch.images.astype(dtype) * np.asarray(spec.input_scale, dtype=dtype)
        predicted = batch.scores.argmax(axis=1)
        classes = predicted if wanted is None else np.full(len(x), wanted)
        result = ex.explain(net, x, classes, index, methods)
    scores = outputs_to_scores(result["outputs"], score_rule(net))
    titles = []
    for item, c, p, s in zip(batch.items, classes, predicted, scores):
        name = Path(str(item.path)).name + (f"[{item.index}]" if item.index is not None else "")
        what = f"{spec.class_names[c]} {100 * s[c]:.1f}%"
        if c != p:
            what += f" (predicted {spec.class_names[p]})"
        titles.append(f"{name[:28]}\n{what}")
    maps = {m: result[m] for m in methods}
    where = f"Grad-CAM at layer {index} ({net.layers[index].type_name})" if index is not None else ""
    fig = ex.figure(batch.images, maps, titles, spec.pixel_max,
                    f"{checkpoint}: {where}" if where else str(checkpoint))
    written = save_figure(fig, out)
    if not quiet:
        shown = f"{len(x)} image(s)" + (f", the first {len(x)} of {total} (--limit)"
                                        if total > len(x) else "")
        parts = [where] if where else []
        if "saliency" in methods:
            parts.append("saliency")
        console().print(escape(f"Wrote {written}: {shown}, one row each; {', '.join(parts)}"),
                        soft_wrap=True)
