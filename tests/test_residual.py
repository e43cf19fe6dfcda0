"""Residual blocks (``{type: residual, layers: [...]}``): forward and every gradient equal
PyTorch's on the same weights (float64), shape errors in one line, nested names in checkpoints,
gradcheck, ONNX export, ``impl: reference`` and train/eval modes reaching the inner layers."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.checkpoint import load_checkpoint
from cnncli.cli import app
from cnncli.errors import ConfigError
from cnncli.network import build_network
from conftest import ROOT

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def conv(out, k=3, **kw):
    return {"type": "conv2d", "out_channels": out, "kernel_size": k, "init": "he", **kw}


IDENTITY = {"type": "residual", "layers": [conv(3, padding=1), {"type": "batch_norm"},
                                           {"type": "relu"}, conv(3, padding=1)]}
CONV_SHORTCUT = {"type": "residual", "shortcut": "conv", "shortcut_batch_norm": True,
                 "layers": [conv(5, stride=2, padding=1), {"type": "batch_norm"},
                            {"type": "relu"}, conv(5, padding="same")]}
NESTED = {"type": "residual", "layers": [
    conv(5, padding=1), {"type": "relu"},
    {"type": "residual", "layers": [conv(5, padding=1), {"type": "tanh"}]},
    {"type": "batch_norm"}]}
NET = [conv(3, padding=1), {"type": "relu"}, IDENTITY, CONV_SHORTCUT, NESTED,
       {"type": "max_pool2d", "kernel_size": 2}, {"type": "flatten"},
       {"type": "dense", "out_features": 4}]
IN_SHAPE = (2, 8, 8)


# ---------------------------------------------------------------- PyTorch on the same weights
def torch_module(layer, torch):
    """The torch module computing ``layer`` with the same arrays (float64, copied)."""
    nn = torch.nn
    t = lambda a: torch.tensor(np.array(a))  # noqa: E731
    kind = layer.type_name
    if kind == "conv2d":
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      layer.pad, dtype=torch.float64)
        m.weight.data, m.bias.data = t(layer.params["W"]), t(layer.params["b"])
        m.names = {"weight": "W", "bias": "b"}
        return m
    if kind == "dense":
        m = nn.Linear(*layer.params["W"].shape, dtype=torch.float64)
        m.weight.data, m.bias.data = t(layer.params["W"].T), t(layer.params["b"])
        m.names = {"weight": "W", "bias": "b"}
        return m
    if kind == "batch_norm":
        m = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                           dtype=torch.float64)
        m.weight.data, m.bias.data = t(layer.params["gamma"]), t(layer.params["beta"])
        m.running_mean.data = t(layer.buffers["running_mean"])
        m.running_var.data = t(layer.buffers["running_var"])
        m.names = {"weight": "gamma", "bias": "beta"}
        return m
    if kind == "residual":
        return TorchResidual(layer, torch)
    simple = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "flatten": nn.Flatten}
    if kind == "max_pool2d":
        return nn.MaxPool2d(layer.kernel_size, layer.stride)
    if kind == "avg_pool2d":
        return nn.AvgPool2d(layer.kernel_size, layer.stride)
    if kind == "global_avg_pool2d":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if kind == "softmax":
        return nn.Softmax(dim=-1)
    return simple[kind]()


class TorchResidual:
    """Built lazily as a torch.nn.Module subclass (torch is optional)."""

    def __new__(cls, layer, torch):
        class Residual(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.block = torch.nn.Sequential(*[torch_module(i, torch) for i in layer.block.layers])
                self.short = torch.nn.Sequential(*[torch_module(i, torch) for i in layer.short_layers])

            def forward(self, x):
                return self.block(x) + self.short(x)

        return Residual()


def named_torch(layer, module, prefix, out):
    """Our parameter key -> the torch parameter, recursively (for comparing gradients)."""
    if layer.type_name == "residual":
        for i, (inner, m) in enumerate(zip(layer.block.layers, module.block)):
            named_torch(inner, m, f"{prefix}layers.{i}.", out)
        for name, inner, m in zip(("shortcut.", "shortcut_bn."), layer.short_layers, module.short):
            named_torch(inner, m, prefix + name, out)
    elif hasattr(module, "names"):
        for tname, ours in module.names.items():
            out[prefix + ours] = getattr(module, tname)
    return out


def torch_buffers(layer, module, prefix, out):
    if layer.type_name == "residual":
        for i, (inner, m) in enumerate(zip(layer.block.layers, module.block)):
            torch_buffers(inner, m, f"{prefix}layers.{i}.", out)
        for name, inner, m in zip(("shortcut.", "shortcut_bn."), layer.short_layers, module.short):
            torch_buffers(inner, m, prefix + name, out)
    elif layer.type_name == "batch_norm":
        out[prefix + "running_mean"] = module.running_mean
        out[prefix + "running_var"] = module.running_var
    return out


def rel(a, b, floor=1e-300):
    """max |a - b| relative to max |b|, or to ``floor`` when that is smaller (a gradient that
    is exactly 0 in exact arithmetic, such as a conv bias just before batch norm, is rounding
    noise on both sides)."""
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), floor)


@pytest.mark.parametrize("specs", [NET, [conv(3, 1), IDENTITY], [CONV_SHORTCUT], [conv(5, 1), NESTED]],
                         ids=["all", "identity", "conv-shortcut", "nested"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_every_gradient_equal_pytorch(specs, mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    net = build_network(specs, IN_SHAPE, np.random.default_rng(1))
    for key, p, _ in net.parameters():  # batch norm away from gamma 1, beta 0
        if key.endswith(("gamma", "beta")):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    for key, b in net.buffers.items():
        b[...] = rng.uniform(0.5, 1.5, b.shape)
    model = torch.nn.Sequential(*[torch_module(layer, torch) for layer in net.layers])
    ours, theirs = {}, {}
    for i, (layer, m) in enumerate(zip(net.layers, model)):
        named_torch(layer, m, f"layers.{i}.", theirs)
        torch_buffers(layer, m, f"layers.{i}.", ours)
    assert set(theirs) == set(net.params)
    getattr(net, mode)()
    model.train(mode == "train")
    x = rng.standard_normal((4, *IN_SHAPE))
    out = net.forward(x)
    r = rng.standard_normal(out.shape)
    net.input_grad = True
    dx = net.backward(r)
    xt = torch.tensor(x, requires_grad=True)
    out_t = model(xt)
    (out_t * torch.tensor(r)).sum().backward()
    assert rel(out, out_t.detach().numpy()) < 1e-9
    assert rel(dx, xt.grad.numpy()) < 1e-9
    largest = max(float(np.max(np.abs(g))) for g in net.grads.values())
    for key, g in net.grads.items():
        want = theirs[key].grad.numpy()
        want = want.T if want.ndim == 2 else want  # nn.Linear's weight is our W transposed
        assert rel(g, want, 1e-6 * largest) < 1e-9, key
    for key, b in net.buffers.items():  # running statistics updated alike (train mode)
        assert rel(b, ours[key].detach().numpy()) < 1e-9, key


# ---------------------------------------------------------------- shapes and errors
def test_a_shape_change_without_a_conv_shortcut_is_one_line_naming_both_shapes(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_network([{"type": "residual", "layers": [conv(4)]}], (1, 8, 8))
    assert "1x8x8" in str(err.value) and "4x6x6" in str(err.value)
    assert "shortcut: conv" in str(err.value)
    path = _config(tmp_path, [{"type": "residual", "layers": [conv(4, stride=2, padding=1)]}])
    result = cnn("summary", path)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "network[0] (residual)" in lines[0] and "1x8x8" in lines[0] \
        and "4x4x4" in lines[0], result.stderr


def test_shortcut_errors_are_one_line():
    for spec, words in [({"layers": []}, "non-empty list"),
                        ({"layers": [conv(1, padding=1)], "shortcut": "dense"}, "shortcut must be"),
                        ({"layers": [conv(1, padding=1)], "shortcut_batch_norm": True},
                         "applies to shortcut: conv only"),
                        ({"layers": [conv(2)], "shortcut": "conv"}, "no strided 1x1"),
                        ({"layers": [{"type": "relu", "x": 1}]}, "layers[0] (relu): unknown key"),
                        ({}, "missing required key 'layers'")]:
        with pytest.raises(ConfigError, match=None) as err:
            build_network([{"type": "residual", **spec}], (1, 8, 8))
        assert words in str(err.value) and "\n" not in str(err.value), (spec, str(err.value))


def test_conv_shortcut_matches_the_block_stride():
    net = build_network([CONV_SHORTCUT], IN_SHAPE, np.random.default_rng(0))
    short = net.layers[0].short_layers[0]
    assert (short.kernel_size, short.stride) == (1, 2)
    assert net.output_shape == (5, 4, 4)


# ---------------------------------------------------------------- reaching inside
def test_modes_impl_and_names_reach_the_inner_layers():
    net = build_network(NET, IN_SHAPE, np.random.default_rng(0), impl="reference")
    inner = [c for layer in net.layers if layer.type_name == "residual" for c in _all(layer)]
    assert {c.impl for c in inner if c.type_name == "conv2d"} == {"reference"}
    net.eval()
    assert not any(c.training for c in inner)
    net.train()
    assert all(c.training for c in inner)
    assert "layers.4.layers.2.layers.0.W" in net.params  # nested once
    assert "layers.3.shortcut.W" in net.params and "layers.3.shortcut_bn.running_var" in net.buffers
    fast = build_network(NET, IN_SHAPE, np.random.default_rng(0))
    x = np.random.default_rng(2).standard_normal((3, *IN_SHAPE))
    np.testing.assert_allclose(net.forward(x), fast.forward(x), rtol=1e-10, atol=1e-12)


def _all(layer):
    for c in layer.children():
        yield c
        if c.type_name == "residual":
            yield from _all(c)


def test_params_are_the_inner_arrays_so_optimizers_and_loading_reach_them():
    net = build_network(NET, IN_SHAPE, np.random.default_rng(0))
    state = {k: v + 1 for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    np.testing.assert_array_equal(net.layers[4].block.layers[2].block.layers[0].params["W"],
                                  state["layers.4.layers.2.layers.0.W"])
    np.testing.assert_array_equal(net.layers[3].short_layers[1].buffers["running_mean"],
                                  state["layers.3.shortcut_bn.running_mean"])


def _config(tmp_path, network, **training):
    raw = {"seed": 0, "data": {"name": "digits"}, "network": network + [
        {"type": "flatten"}, {"type": "dense", "out_features": 10, "init": "xavier"}],
        "training": {"epochs": 2, "batch_size": 32, "loss": "cross_entropy",
                     "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9},
                     **training}}
    path = tmp_path / "residual.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_summary_indents_the_inner_layers(tmp_path):
    path = _config(tmp_path, [conv(4, padding=1), {"type": "residual", "layers": [
        conv(4, padding=1), {"type": "residual", "layers": [conv(4, padding=1)]}]}])
    result = cnn("summary", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("1.0" in line and "  conv2d" in line for line in lines), result.output
    assert any("1.1.0" in line and "    conv2d" in line for line in lines), result.output


def test_gradcheck_passes_on_a_residual_config(tmp_path):
    path = _config(tmp_path, [conv(3, padding=1), NESTED | {"layers": [
        conv(3, padding=1), {"type": "batch_norm"}, {"type": "relu"},
        {"type": "residual", "layers": [conv(3, padding=1), {"type": "dropout", "p": 0.3}]}]},
        {"type": "residual", "shortcut": "conv", "shortcut_batch_norm": True,
         "layers": [conv(4, stride=2, padding=1)]}])
    result = cnn("gradcheck", path, "--max-entries", 20, "--impl", "reference")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "residual" in result.output


def test_training_checkpoints_nested_names_and_resume_is_bit_exact(tmp_path):
    path = _config(tmp_path, [conv(4, padding=1), CONV_SHORTCUT | {"layers": [
        conv(6, stride=2, padding=1), {"type": "batch_norm"}, {"type": "relu"},
        {"type": "residual", "layers": [conv(6, padding=1), {"type": "dropout", "p": 0.2}]}]}],
        epochs=3)
    assert cnn("train", path, "--run-dir", tmp_path / "full", "-q").exit_code == 0
    assert cnn("train", path, "--run-dir", tmp_path / "part", "--epochs", 1, "-q").exit_code == 0
    result = cnn("train", "--resume", tmp_path / "part", "--epochs", 3, "-q")
    assert result.exit_code == 0, result.output
    full, _ = load_checkpoint(tmp_path / "full" / "last.npz")
    part, meta = load_checkpoint(tmp_path / "part" / "last.npz")
    assert "layers.1.layers.3.layers.0.W" in full and "layers.1.shortcut_bn.running_var" in full
    assert set(full) == set(part)
    for key in full:
        np.testing.assert_array_equal(full[key], part[key], err_msg=key)
    assert meta["history"][-1]["test_accuracy"] > 0.5


def test_export_scores_equal_predict(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = _config(tmp_path, [conv(4, padding=1), CONV_SHORTCUT, NESTED], epochs=1)
    assert cnn("train", path, "--run-dir", tmp_path / "run", "-q").exit_code == 0
    ckpt = tmp_path / "run" / "best.npz"
    result = cnn("export", ckpt, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    model = onnx.load(tmp_path / "m.onnx")
    assert sum(n.op_type == "Add" for n in model.graph.node) == 3  # one per residual block
    from cnncli.checkpoint import load_model
    from cnncli.scoring import scores

    net, meta = load_model(ckpt)
    x = np.round(np.random.default_rng(0).uniform(0, 16, (20, 1, 8, 8)))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got, scores(net, x, meta), rtol=0, atol=1e-5)


def test_shipped_residual_example_is_valid():
    result = cnn("summary", ROOT / "configs" / "digits-residual.yaml")
    assert result.exit_code == 0, result.output
    assert "residual" in result.output


def test_a_batch_of_one_for_an_inner_batch_norm_is_refused_before_training(tmp_path):
    path = _config(tmp_path, [{"type": "flatten"}, {"type": "residual", "layers": [
        {"type": "dense", "out_features": 64}, {"type": "batch_norm"}]}], batch_size=1347)
    result = cnn("train", path, "--run-dir", tmp_path / "run", "--batch-size", 1346)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: network[1] (residual) layers[1] (batch_norm): a "
                                    "training batch of 1 sample(s)"), result.stderr
