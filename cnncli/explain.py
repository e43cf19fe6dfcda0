"""What a network looked at: Grad-CAM heat maps and input-gradient saliency maps.

Both come from the network's own backward pass, in eval mode: one forward pass, then
``backward`` with the one-hot of the explained class as the output gradient, so the gradients
are those of the **score** ``y_c``: the network's output for class c, as ``Network.forward``
returns it (the logit of a network ending in a dense layer, the probability of one ending in
softmax). No other implementation of the math exists here.

- ``saliency``: ``|d y_c / d x|``, the largest over the input channels: (N, H, W).
- ``gradcam`` (Selvaraju et al.): for the activation ``A`` (N, K, h, w) of a conv layer (by
  default the last one), channel weights ``alpha_k = mean over (h, w) of d y_c / d A_k``, the
  map ``ReLU(sum_k alpha_k A_k)`` (N, h, w), upsampled bilinearly to the input's H x W (with
  half-pixel centres, as ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)``). The maps are not normalised; pictures scale each to its maximum.

Samples do not interact in eval mode, so a batch gives every image its own map. Nothing here
prints; ``cnn explain`` (``cnncli.cli.explain``) draws the picture with ``figure``.
"""

from __future__ import annotations

import numpy as np

from cnncli.blas import applied
from cnncli.errors import CnnError, about_value
from cnncli.modes import eval_mode
from cnncli.text import did_you_mean

CAM_TYPES = ("conv2d", "residual")  # layers whose (C, H, W) output Grad-CAM can explain


class ExplainError(CnnError):
    """Nothing to explain with: no conv layer, a --layer that is not one, an unknown class."""


def conv_layers(net, in_shape=None) -> list[int]:
    """Indices of the network's top-level layers with a (C, H, W) conv output: conv2d layers
    and residual blocks. in_shape: one sample's input shape (default ``net.input_shape``)."""
    shape, out = tuple(in_shape) if in_shape is not None else net.input_shape, []
    for i, layer in enumerate(net.layers):
        shape = layer.output_shape(shape)
        if layer.type_name in CAM_TYPES and len(shape) == 3:
            out.append(i)
    return out


def check_layer(net, layer: int | None, in_shape=None) -> int:
    """The layer Grad-CAM uses: ``layer`` (checked), or the last conv layer."""
    convs = conv_layers(net, in_shape)
    if not convs:
        raise ExplainError("Grad-CAM needs a conv layer (conv2d or residual), and this network "
                           f"has none ({', '.join(l.type_name for l in net.layers)}); use "
                           "--method saliency")
    if layer is None:
        return convs[-1]
    n = len(net.layers)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
        raise ExplainError(f"--layer {layer}: the network has layers 0 to {n - 1}; its conv "
                           f"layers are {', '.join(map(str, convs))}")
    index = int(layer) % n
    if index not in convs:
        raise ExplainError(f"--layer {layer}: layer {index} is a {net.layers[index].type_name}, "
                           f"not a conv layer; its conv layers are {', '.join(map(str, convs))}")
    return index


def _classes(class_index, n: int, k: int) -> np.ndarray:
    c = np.broadcast_to(np.asarray(class_index), (n,)).astype(np.int64)
    if np.any((c < 0) | (c >= k)):
        raise ExplainError(f"class index {int(c[(c < 0) | (c >= k)][0])} is out of range: the "
                           f"network has {k} outputs")
    return c


@applied
def _passes(net, x: np.ndarray, class_index, capture: int | None):
    """Forward, then backward from the one-hot of the class scores, in eval mode (the mode and
    ``input_grad`` are restored). Returns (outputs (N, K), the captured layer's output and its
    gradient (None without ``capture``), the input gradient (N, C, H, W))."""
    had_input_grad = net.input_grad
    with eval_mode(net):
        net.input_grad = True
        try:
            h, act = x, None
            for i, layer in enumerate(net.layers):
                h = layer.forward(h)
                if i == capture:
                    act = h
            out = h
            c = _classes(class_index, len(x), out.shape[1])
            d = np.zeros_like(out)
            d[np.arange(len(x)), c] = 1  # d y_c / d out
            grad_act = None
            for i in range(len(net.layers) - 1, -1, -1):
                if i == capture:
                    grad_act = d
                d = net.layers[i].backward(d)
            return out, act, grad_act, d
        finally:
            net.input_grad = had_input_grad


def saliency(net, x: np.ndarray, class_index) -> np.ndarray:
    """``|d y_c / d x|`` maximised over channels.

    x: (N, C, H, W) network inputs (scaled as in training); class_index: an int or (N,) ints.
    Returns (N, H, W)."""
    return explain(net, x, class_index, methods=("saliency",))["saliency"]


def gradcam(net, x: np.ndarray, class_index, layer: int | None = None) -> np.ndarray:
    """The Grad-CAM map of class ``class_index`` at conv layer ``layer`` (an index into
    ``net.layers``; default: the last conv layer), upsampled to the input size.

    x: (N, C, H, W) network inputs; class_index: an int or (N,) ints. Returns (N, H, W)."""
    return explain(net, x, class_index, layer, methods=("gradcam",))["gradcam"]


def explain(net, x: np.ndarray, class_index, layer: int | None = None,
            methods=("gradcam", "saliency")) -> dict:
    """Outputs and maps of one forward and one backward pass: {"outputs": (N, K) the network's
    outputs, "gradcam": (N, H, W), "saliency": (N, H, W)} (the maps named in ``methods``).

    x: (N, C, H, W) network inputs; class_index: an int or (N,) ints."""
    x = np.asarray(x)
    index = check_layer(net, layer, x.shape[1:]) if "gradcam" in methods else None
    outputs, act, grad, dx = _passes(net, x, class_index, index)
    out = {"outputs": outputs}
    if "gradcam" in methods:
        alpha = grad.mean(axis=(2, 3))  # (N, K): channel weights
        cam = np.maximum(np.einsum("nk,nkhw->nhw", alpha, act), 0)  # (N, h, w)
        out["gradcam"] = upsample_bilinear(cam, x.shape[2:])
    if "saliency" in methods:
        out["saliency"] = np.abs(dx).max(axis=1)
    return out


def upsample_bilinear(maps: np.ndarray, size) -> np.ndarray:
    """maps: (N, h, w) -> (N, H, W), bilinear with half-pixel centres (source coordinate
    ``(i + 0.5) * h / H - 0.5``, clamped at 0), as PyTorch's ``align_corners=False``."""
    n, h, w = maps.shape
    H, W = int(size[0]), int(size[1])

    def axis(out_len, in_len):
        src = np.maximum((np.arange(out_len) + 0.5) * (in_len / out_len) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
        i1 = np.minimum(i0 + 1, in_len - 1)
        return i0, i1, src - i0

    r0, r1, fr = axis(H, h)
    c0, c1, fc = axis(W, w)
    top = maps[:, r0][:, :, c0] * (1 - fc) + maps[:, r0][:, :, c1] * fc
    bottom = maps[:, r1][:, :, c0] * (1 - fc) + maps[:, r1][:, :, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def class_index(name: str, class_names: list[str]) -> int:
    """The index of class ``name`` (``--class``); an ExplainError lists the known ones."""
    if name in class_names:
        return class_names.index(name)
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    problem = f"the model has no such class{did_you_mean(name, class_names)}; its classes: {shown}"
    raise about_value(ExplainError(f"class {name!r}: {problem}"), "class_name", repr(name), problem)


def figure(images: np.ndarray, maps: dict, titles: list[str], pixel_max: float,
           title: str = ""):
    """The picture of ``cnn explain``: one row per image, its columns the image, then the
    Grad-CAM map over the image, then the saliency map (those present in ``maps``).

    images: (N, C, H, W) stored form (full intensity ``pixel_max``); maps: {"gradcam": (N, H,
    W), "saliency": (N, H, W)}; titles: (N,) the explained class and score per image. Returns a
    matplotlib Figure (``figure.axes`` holds N x columns axes)."""
    from cnncli.plots import _as_picture, new_figure

    n = len(images)
    cols = 1 + len(maps)
    cell = 2.0
    fig = new_figure(0.3 + cols * cell, 0.6 + n * (cell + 0.3))
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        img = np.asarray(images[r], dtype=np.float64)
        pic = _as_picture(img, 0.0, pixel_max)
        grey = pic.ndim == 2
        ax = axes[r][0]
        ax.imshow(pic, cmap="gray" if grey else None, vmin=0.0, vmax=pixel_max if grey else None,
                  interpolation="nearest")
        ax.set_title(titles[r], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[r][j]
            heat = np.asarray(m[r], dtype=np.float64)
            top = float(heat.max())
            heat = heat / top if top > 0 else heat
            if name == "gradcam":
                ax.imshow(pic, cmap="gray" if grey else None, vmin=0.0,
                          vmax=pixel_max if grey else None, interpolation="nearest")
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
                ax.set_title("Grad-CAM", fontsize=8)
            else:
                ax.imshow(heat, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title("saliency |d score / d input|", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
