"""ONNX export: a trained network as an ONNX graph that any ONNX runtime can run.

The graph takes images as the dataset stores them (float32 ``(N, C, H, W)``, e.g. 0-255 for
MNIST), multiplies them by the checkpoint's ``input_scale`` first, runs every layer in eval
form (batch norm with its running statistics, dropout as the identity) and outputs the
model's scores (``cnncli.scoring``: softmax probabilities, or sigmoid outputs divided by
their sum). The batch axis is dynamic. ``metadata_props`` record the input shape, the
scaling and the class names. ``onnx`` is imported here only (``pip install 'cnncli[onnx]'``).
"""

from __future__ import annotations

import json

import numpy as np

from cnncli.errors import CnnError
from cnncli.scoring import score_rule

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by every ONNX Runtime since 1.11
INSTALL_HINT = "pip install 'cnncli[onnx]'"


class ExportError(CnnError):
    """A model cannot be exported (a layer without an ONNX mapping, a missing package)."""


def require(module: str):
    """Import ``onnx`` or ``onnxruntime``, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"ONNX export needs the {module} package, which is not installed: "
                          f"{INSTALL_HINT}") from None


class _Graph:
    """Collects nodes and initializers; names are generated in order."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper, self.numpy_helper, self.dtype = helper, numpy_helper, np.dtype(dtype)
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name: str, value) -> str:
        name = f"{name}_{len(self.inits)}"
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                cast = arr.astype(self.dtype)
            lost = np.isfinite(arr) & ~np.isfinite(cast)
            if lost.any():
                big = float(np.max(np.abs(arr[lost])))
                raise ExportError(f"{name.rsplit('_', 1)[0]}: holds {int(lost.sum())} value(s) too "
                                  f"large for {self.dtype.name} (largest magnitude {big:.3g}; "
                                  f"{self.dtype.name} holds at most "
                                  f"{float(np.finfo(self.dtype).max):.3g}), so the model cannot be "
                                  "exported")
            arr = cast
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], where: str, **attrs) -> str:
        self.count += 1
        out = f"{where}_{op.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=f"{where}/{op}", **attrs))
        return out


def _conv(g, layer, x, where):
    k, s, p = layer.kernel_size, layer.stride, layer.pad
    return g.node("Conv", [x, g.const(f"{where}.W", layer.params["W"]),
                           g.const(f"{where}.b", layer.params["b"])], where,
                  kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])


def _pool(op):
    def emit(g, layer, x, where):
        k, s = layer.kernel_size, layer.stride
        return g.node(op, [x], where, kernel_shape=[k, k], strides=[s, s])
    return emit


def _dense(g, layer, x, where):
    return g.node("Gemm", [x, g.const(f"{where}.W", layer.params["W"]),
                           g.const(f"{where}.b", layer.params["b"])], where)


def _batch_norm(g, layer, x, where):
    """Eval form: ``(x - running_mean) / sqrt(running_var + eps) * gamma + beta``, with ONNX's
    BatchNormalization (whose input may be (N, C, H, W) or (N, C))."""
    return g.node("BatchNormalization",
                  [x, g.const(f"{where}.gamma", layer.params["gamma"]),
                   g.const(f"{where}.beta", layer.params["beta"]),
                   g.const(f"{where}.running_mean", layer.buffers["running_mean"]),
                   g.const(f"{where}.running_var", layer.buffers["running_var"])],
                  where, epsilon=layer.eps)


def _global_avg_pool(g, layer, x, where):
    pooled = g.node("GlobalAveragePool", [x], where)  # (N, C, 1, 1)
    return g.node("Flatten", [pooled], where, axis=1)  # (N, C)


def _simple(op, **attrs):
    def emit(g, layer, x, where):
        return g.node(op, [x], where, **attrs)
    return emit


def _residual(g, layer, x, where):
    """``block(x) + shortcut(x)``: the inner layers' nodes, the shortcut's (a 1x1 Conv and
    maybe a BatchNormalization, or none), then one ``Add``."""
    out = x
    for i, inner in enumerate(layer.block.layers):
        out = MAPPINGS[inner.type_name](g, inner, out, f"{where}.layers.{i}.{inner.type_name}")
    short = x
    for name, inner in zip(("shortcut", "shortcut_bn"), layer.short_layers):
        short = MAPPINGS[inner.type_name](g, inner, short, f"{where}.{name}")
    return g.node("Add", [out, short], where)


# One entry per registered layer type (tests/test_export.py checks that none is missing).
MAPPINGS = {
    "conv2d": _conv,
    "max_pool2d": _pool("MaxPool"),
    "avg_pool2d": _pool("AveragePool"),
    "global_avg_pool2d": _global_avg_pool,
    "flatten": _simple("Flatten", axis=1),
    "dense": _dense,
    "relu": _simple("Relu"),
    "sigmoid": _simple("Sigmoid"),
    "tanh": _simple("Tanh"),
    "softmax": _simple("Softmax", axis=-1),
    "batch_norm": _batch_norm,
    "dropout": _simple("Identity"),  # eval mode
    "residual": _residual,
}


def to_onnx(net, meta: dict, dtype=np.float32):
    """The ONNX model (an ``onnx.ModelProto``) of ``net`` as described above.

    meta: the checkpoint's meta, with ``input_shape``, ``class_names``, ``input_scale`` and
    ``pixel_max`` (format 2). ``dtype`` float64 builds a double graph (where a runtime has the
    kernels: ONNX Runtime has no double Conv on CPU).
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    unmapped = sorted({layer.type_name for layer in net.layers} - set(MAPPINGS))
    if unmapped:
        raise ExportError(f"layer type {unmapped[0]!r} has no ONNX mapping, so the model cannot "
                          f"be exported (mapped: {', '.join(sorted(MAPPINGS))})")
    elem = TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
    g = _Graph(helper, numpy_helper, dtype)
    shape = [int(d) for d in meta["input_shape"]]
    x = g.node("Mul", ["input", g.const("input_scale", np.asarray(meta["input_scale"]))], "input")
    for i, layer in enumerate(net.layers):
        x = MAPPINGS[layer.type_name](g, layer, x, f"layers.{i}.{layer.type_name}")
    rule = score_rule(net)
    if rule == "softmax":
        x = g.node("Softmax", [x], "scores", axis=-1)
    elif rule == "normalise":  # (out + tiny) / sum(out + tiny), as cnncli.scoring
        x = g.node("Add", [x, g.const("tiny", np.finfo(dtype).tiny)], "scores")
        total = g.node("ReduceSum", [x, g.const("axes", np.array([1], dtype=np.int64))], "scores",
                       keepdims=1)
        x = g.node("Div", [x, total], "scores")
    x = g.node("Identity", [x], "scores")
    g.nodes[-1].output[0] = "scores"
    n_classes = len(meta["class_names"])
    graph = helper.make_graph(
        g.nodes, "cnncli",
        [helper.make_tensor_value_info("input", elem, ["N", *shape])],
        [helper.make_tensor_value_info("scores", elem, ["N", n_classes])],
        initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cnncli", ir_version=IR_VERSION)
    from cnncli import __version__

    model.producer_version = __version__
    model.doc_string = ("Input: images as stored (pixel_max is a full-intensity pixel), "
                        "multiplied by input_scale inside the graph. Output: class scores.")
    props = {"input_shape": json.dumps(shape), "input_scale": repr(float(meta["input_scale"])),
             "pixel_max": repr(float(meta["pixel_max"])),
             "class_names": json.dumps(list(meta["class_names"]))}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def export_checkpoint(path, out, dtype=np.float32):
    """Write the ONNX model of the checkpoint ``path`` to ``out`` atomically; returns the
    model."""
    from cnncli.atomic import atomic_file
    from cnncli.checkpoint import input_description, load_network

    from cnncli.files import refuse_overwriting

    refuse_overwriting(out, [path], "the checkpoint")
    net, _, meta, _ = load_network(path)
    input_description(path, meta)
    model = to_onnx(net, meta, dtype)
    data = model.SerializeToString()
    with atomic_file(out) as f:
        f.write(data)
    return model
