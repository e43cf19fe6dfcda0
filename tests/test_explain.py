"""`cnn explain` and ``cnncli.explain``: Grad-CAM and saliency maps equal a PyTorch autograd
computation on the same weights (float64), saliency equals central finite differences of the
score, one row per image in the picture, and every bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli import explain as ex
from cnncli.cli import app
from cnncli.network import build_network

runner = CliRunner()


def cnn(*args):
    return runner.invoke(app, [str(a) for a in args])


def conv(out, k=3, **kw):
    return {"type": "conv2d", "out_channels": out, "kernel_size": k, "init": "he", **kw}


NET = [conv(4, padding=1), {"type": "batch_norm"}, {"type": "relu"},
       {"type": "max_pool2d", "kernel_size": 2},                       # 4x4x4
       conv(6, padding=1), {"type": "batch_norm"}, {"type": "tanh"},
       {"type": "avg_pool2d", "kernel_size": 2, "stride": 1},          # 6x3x3
       {"type": "flatten"}, {"type": "dense", "out_features": 12, "init": "he"},
       {"type": "relu"}, {"type": "dense", "out_features": 5, "init": "xavier"}]
RESIDUAL = [conv(4, padding=1), {"type": "residual", "shortcut": "conv", "layers": [
    conv(6, stride=2, padding=1), {"type": "batch_norm"}, {"type": "relu"}]},
    {"type": "global_avg_pool2d"}, {"type": "dense", "out_features": 5}]


def network(specs, in_shape, seed=0):
    """A float64 network with batch norm statistics and parameters away from 0 and 1."""
    net = build_network(specs, in_shape, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for key, p, _ in net.parameters():
        if key.endswith(("gamma", "beta")):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
    for b in net.buffers.values():
        b[...] = rng.uniform(0.5, 1.5, b.shape)
    return net.eval()


def torch_maps(net, x, classes, layer):
    """Grad-CAM and saliency by torch.autograd on the same weights, by the formula: the score
    y_c is the network's output for class c; alpha = spatial mean of d y_c / d A; ReLU of the
    weighted sum; bilinear upsampling (align_corners=False); |d y_c / d x| max over channels."""
    torch = pytest.importorskip("torch")
    from test_residual import torch_module

    mods = [torch_module(layer_, torch) for layer_ in net.layers]
    for m in mods:
        m.eval()
    head, tail = torch.nn.Sequential(*mods[:layer + 1]), torch.nn.Sequential(*mods[layer + 1:])
    xt = torch.tensor(x, requires_grad=True)
    act = head(xt)
    out = tail(act)
    score = out[torch.arange(len(x)), torch.tensor(classes)].sum()
    d_act, d_x = torch.autograd.grad(score, [act, xt])
    alpha = d_act.mean(dim=(2, 3))
    cam = torch.relu((alpha[:, :, None, None] * act).sum(dim=1))
    up = torch.nn.functional.interpolate(cam[:, None], size=tuple(x.shape[2:]), mode="bilinear",
                                         align_corners=False)[:, 0]
    return up.detach().numpy(), d_x.abs().amax(dim=1).numpy(), out.detach().numpy()


def rel(a, b):
    return float(np.max(np.abs(a - b))) / float(np.max(np.abs(b)))


@pytest.mark.parametrize("specs, in_shape, last", [
    (NET, (1, 8, 8), False), (NET + [{"type": "softmax"}], (3, 8, 8), False),
    (NET, (2, 8, 8), True), (RESIDUAL, (2, 8, 8), False)],
    ids=["logits", "softmax-rgb", "first-conv", "residual"])
def test_gradcam_and_saliency_equal_pytorch_autograd(specs, in_shape, last):
    net = network(specs, in_shape)
    x = np.random.default_rng(2).standard_normal((3, *in_shape))
    classes = np.array([0, 4, 2])
    layer = 0 if last else None  # None: the last conv layer
    index = ex.check_layer(net, layer)
    want_cam, want_sal, want_out = torch_maps(net, x, classes, index)
    got = ex.explain(net, x, classes, layer)
    assert rel(got["outputs"], want_out) < 1e-9
    assert got["gradcam"].shape == (3, *in_shape[1:]) and got["saliency"].shape == (3, *in_shape[1:])
    assert np.max(want_cam) > 0
    assert rel(got["gradcam"], want_cam) < 1e-6
    assert rel(got["saliency"], want_sal) < 1e-6
    np.testing.assert_array_equal(ex.gradcam(net, x, classes, layer), got["gradcam"])
    np.testing.assert_array_equal(ex.saliency(net, x, classes), got["saliency"])


def test_bilinear_upsampling_equals_pytorch():
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).standard_normal((2, 3, 5))
    for size in [(8, 8), (7, 11), (3, 5), (2, 3)]:
        want = torch.nn.functional.interpolate(torch.tensor(maps)[:, None], size=size,
                                               mode="bilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(ex.upsample_bilinear(maps, size), want.numpy(), rtol=1e-12,
                                   atol=1e-14)


@pytest.mark.parametrize("channels", [1, 3])
def test_saliency_equals_central_finite_differences(channels):
    net = network(NET, (channels, 8, 8), seed=3)
    x = np.random.default_rng(4).standard_normal((2, channels, 8, 8))
    classes = np.array([1, 3])
    eps = 1e-6
    numeric = np.empty_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        n = i // (flat.size // 2)
        old = flat[i]
        flat[i] = old + eps
        plus = net.forward(x)[n, classes[n]]
        flat[i] = old - eps
        minus = net.forward(x)[n, classes[n]]
        flat[i] = old
        numeric.reshape(-1)[i] = (plus - minus) / (2 * eps)
    want = np.abs(numeric).max(axis=1)
    assert rel(ex.saliency(net, x, classes), want) < 1e-6


def test_mode_and_input_gradient_flag_are_restored():
    net = build_network(NET, (1, 8, 8), np.random.default_rng(0))
    assert net.training and not net.input_grad
    before = {k: v.copy() for k, v in net.buffers.items()}
    ex.gradcam(net, np.ones((2, 1, 8, 8)), 0)
    assert net.training and not net.input_grad
    for k, v in net.buffers.items():  # explained in eval mode: statistics untouched
        np.testing.assert_array_equal(v, before[k])


def test_library_errors_are_one_line():
    flat = build_network([{"type": "flatten"}, {"type": "dense", "out_features": 3}], (1, 4, 4))
    with pytest.raises(ex.ExplainError, match="Grad-CAM needs a conv layer"):
        ex.gradcam(flat, np.ones((1, 1, 4, 4)), 0)
    assert ex.saliency(flat, np.ones((1, 1, 4, 4)), 0).shape == (1, 4, 4)
    net = network(NET, (1, 8, 8))
    with pytest.raises(ex.ExplainError, match="class index 5 is out of range"):
        ex.saliency(net, np.ones((1, 1, 8, 8)), 5)
    assert ex.conv_layers(net) == [0, 4]


# ---------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    raw = {"seed": 0, "data": {"name": "digits"},
           "network": NET[:-1] + [{"type": "dense", "out_features": 10, "init": "xavier"}],
           "training": {"epochs": 2, "batch_size": 32, "loss": "cross_entropy",
                        "optimizer": {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9}}}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert cnn("train", path, "--run-dir", tmp / "run", "-q").exit_code == 0
    return tmp / "run" / "best.npz"


@pytest.fixture
def three_images(digits_folder, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for f in sorted((digits_folder / "test" / "3").iterdir())[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_a_folder_of_three_images_gives_three_rows(checkpoint, three_images, tmp_path,
                                                   monkeypatch):
    from PIL import Image

    drawn = []  # (rows, columns, titles) of each figure, read before it is saved and closed
    real = ex.figure

    def spy(*args, **kw):
        fig = real(*args, **kw)
        grid = fig.axes[0].get_subplotspec().get_gridspec()
        drawn.append((grid.nrows, grid.ncols, [ax.get_title() for ax in fig.axes]))
        return fig

    monkeypatch.setattr(ex, "figure", spy)
    out = tmp_path / "e.png"
    result = cnn("explain", checkpoint, three_images, "-o", out)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}: 3 image(s), one row each; Grad-CAM at layer 4 (conv2d), saliency" \
        in result.output
    rows, cols, titles = drawn[0]
    assert (rows, cols) == (3, 3) and len(titles) == 9
    assert titles[1] == "Grad-CAM" and titles[2].startswith("saliency")
    assert all(t.endswith("%") or "(predicted" in t for t in titles[::3])
    with Image.open(out) as img:  # 3 rows of 2.3 inches plus 0.6 at 100 dpi
        assert img.size[1] == round((0.6 + 3 * 2.3) * 100)
    one = cnn("explain", checkpoint, sorted(three_images.iterdir())[0], "-o", tmp_path / "1.png",
              "--method", "saliency")
    assert one.exit_code == 0, one.output
    assert drawn[1][:2] == (1, 2)


def test_class_option_explains_that_class(checkpoint, three_images, tmp_path, monkeypatch):
    seen = {}
    real = ex.explain
    monkeypatch.setattr(ex, "explain", lambda net, x, c, *a: seen.setdefault("c", c) is None
                        or real(net, x, c, *a))
    result = cnn("explain", checkpoint, three_images, "--class", "8", "-o", tmp_path / "e.png",
                 "--layer", 0)
    assert result.exit_code == 0, result.output
    assert list(seen["c"]) == [8, 8, 8]
    assert "Grad-CAM at layer 0 (conv2d)" in result.output


def test_npz_inputs_and_limit(checkpoint, tmp_path):
    x = np.random.default_rng(0).integers(0, 17, (5, 8, 8)).astype(np.float64)
    np.savez(tmp_path / "x.npz", x=x)
    result = cnn("explain", checkpoint, tmp_path / "x.npz", "--limit", 2, "-o", tmp_path / "e.png")
    assert result.exit_code == 0, result.output
    assert "2 image(s), the first 2 of 5 (--limit)" in result.output


@pytest.mark.parametrize("args, message", [
    (["--layer", 1], "--layer 1: layer 1 is a batch_norm, not a conv layer; its conv layers are 0, 4"),
    (["--layer", 12], "--layer 12: the network has layers 0 to 11; its conv layers are 0, 4"),
    (["--class", "nine"], "--class 'nine': the model has no such class; its classes: 0, 1, 2"),
])
def test_bad_options_are_one_line(checkpoint, three_images, tmp_path, args, message):
    result = cnn("explain", checkpoint, three_images, "-o", tmp_path / "e.png", *args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "e.png").exists()


def test_bad_method_and_paths(checkpoint, tmp_path):
    result = cnn("explain", checkpoint, tmp_path, "--method", "cam")
    assert result.exit_code == 2 and "--method must be gradcam, saliency or both" in result.stderr
    result = cnn("explain", checkpoint, tmp_path / "nope.png")
    assert result.exit_code == 1 and result.stderr.strip().count("\n") == 0
    assert "nope.png: no such file or folder" in result.stderr


def test_a_network_without_conv_layers_is_one_line(tmp_path, three_images):
    raw = {"seed": 0, "data": {"name": "digits"},
           "network": [{"type": "flatten"}, {"type": "dense", "out_features": 10}],
           "training": {"epochs": 1, "batch_size": 64, "loss": "cross_entropy"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cnn("train", path, "--run-dir", tmp_path / "run", "-q").exit_code == 0
    ckpt = tmp_path / "run" / "best.npz"
    result = cnn("explain", ckpt, three_images, "-o", tmp_path / "e.png")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: Grad-CAM needs a conv layer (conv2d or residual), and this network has none "
        "(flatten, dense); use --method saliency"]
    ok = cnn("explain", ckpt, three_images, "--method", "saliency", "-o", tmp_path / "e.png")
    assert ok.exit_code == 0, ok.output
