"""`cnn export`: ONNX Runtime's scores equal the library's eval-mode scores, for every shipped
config and for randomized stacks of every layer type; the graph passes the ONNX checker and
carries the input description."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.checkpoint import save_checkpoint
from cnncli.config import load_config, validate
from cnncli.data import Dataset
from cnncli.layers import LAYERS
from cnncli.network import build_network
from cnncli.scoring import scores
from conftest import ROOT, run_cnn

onnx = pytest.importorskip("onnx")  # in the test extra: CI runs these
ort = pytest.importorskip("onnxruntime")

from cnncli.export import MAPPINGS, OPSET, to_onnx  # noqa: E402


def run_ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def assert_same_scores(model, net, meta, x):
    """ORT on stored-form x == the library's eval-mode scores, within 1e-5 of the largest."""
    want = scores(net, x, meta)
    got = run_ort(model, x.astype(np.float32))
    assert got.shape == want.shape
    tol = 1e-5 * float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-5)


def test_every_layer_type_has_a_mapping():
    assert set(MAPPINGS) == set(LAYERS)


def _fake_data(cfg):
    """Random data of the config's dataset's shape, scale and pixel range (no files needed)."""
    from cnncli.data import DATASETS, load_dataset

    name = cfg["data"]["name"]
    if name in ("shapes", "digits"):
        return load_dataset(cfg["data"], cfg["seed"])
    (c, h, w), k = DATASETS[name].describe(cfg["data"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, c, h, w)).astype(np.uint8)
    y = rng.integers(0, k, 100)
    return Dataset(name, x[:80], y[:80], x[80:], y[80:], [str(d) for d in range(k)], 1 / 255, 255.0)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_export_and_match_onnx_runtime(cnn, config, tmp_path, request, monkeypatch):
    from cnncli.train import Trainer

    sets = []
    if config == "folder-example.yaml":  # it trains on the folder `cnn data export digits` writes
        monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "cache"))
        sets = [f"data.path={request.getfixturevalue('digits_folder')}"]
    cfg = load_config(ROOT / "configs" / config, ["training.epochs=1", "training.batch_size=16", *sets])
    data = _fake_data(cfg)
    if len(data.y_train) > 160:  # a few steps are enough
        data.x_train, data.y_train = data.x_train[:160], data.y_train[:160]
    trainer = Trainer(cfg, data)
    trainer.train_epoch()
    arrays, meta = trainer.state()
    path = tmp_path / "last.npz"
    save_checkpoint(path, arrays, {**meta, "config": cfg})
    out = tmp_path / "model.onnx"
    result = cnn("export", path, "-o", out)
    assert result.exit_code == 0, result.output
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["input_shape"]) == list(data.input_shape)
    assert float(props["input_scale"]) == data.scale
    assert float(props["pixel_max"]) == data.pixel_max
    assert json.loads(props["class_names"]) == data.class_names
    from cnncli.checkpoint import load_model

    net, meta = load_model(path)
    rng = np.random.default_rng(1)
    for n in (1, 37):  # stored-form inputs: 0..pixel_max
        x = rng.uniform(0, data.pixel_max, (n, *data.input_shape))
        if data.pixel_max > 1:
            x = np.round(x)
        assert_same_scores(model, net, meta, x)


# ---------------------------------------------------------------- randomized stacks
SPATIAL = ["conv2d", "max_pool2d", "avg_pool2d", "batch_norm", "dropout", "relu", "sigmoid", "tanh"]
FLAT = ["dense", "batch_norm", "dropout", "relu", "sigmoid", "tanh", "softmax"]


@st.composite
def stacks(draw):
    """A random network over every layer type: spatial layers, then flatten or global average
    pooling, then flat layers, then the classes (dense, optionally an activation)."""
    c = draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 9)), draw(st.integers(4, 9))
    specs, shape = [], (c, h, w)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(SPATIAL))
        spec = {"type": kind}
        if kind == "conv2d":
            k = draw(st.integers(1, min(3, shape[1], shape[2])))
            spec.update(out_channels=draw(st.integers(1, 4)), kernel_size=k,
                        stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1)), init="he")
        elif kind in ("max_pool2d", "avg_pool2d"):
            k = draw(st.integers(1, min(3, shape[1], shape[2])))
            spec.update(kernel_size=k, stride=draw(st.integers(1, k + 1)))  # overlapping to gapped
        elif kind == "dropout":
            spec["p"] = draw(st.sampled_from([0.0, 0.3, 0.5]))
        specs.append(spec)
        shape = build_network(specs, (c, h, w)).output_shape
    specs.append({"type": draw(st.sampled_from(["flatten", "global_avg_pool2d"]))})
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(FLAT))
        spec = {"type": kind}
        if kind == "dense":
            spec.update(out_features=draw(st.integers(1, 6)), init="he")
        elif kind == "dropout":
            spec["p"] = 0.5
        specs.append(spec)
    k = draw(st.integers(2, 5))
    specs.append({"type": "dense", "out_features": k, "init": "xavier"})
    last = draw(st.sampled_from([None, "softmax", "sigmoid", "tanh", "relu", "batch_norm"]))
    if last:
        specs.append({"type": last})
    return (c, h, w), k, specs


@given(stack=stacks(), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_random_stacks_match_onnx_runtime(stack, seed):
    in_shape, k, specs = stack
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        net = build_network(specs, in_shape, np.random.default_rng(seed), dtype)
        net.set_rng(np.random.default_rng(seed))
        for layer in net.layers:  # batch norm with statistics and parameters away from 1 and 0
            if layer.type_name == "batch_norm":
                c = layer.num_features
                layer.params["gamma"][...] = rng.uniform(0.5, 2, c)
                layer.params["beta"][...] = rng.normal(0, 0.5, c)
        for _ in range(2):  # train-mode passes move the running statistics
            net.forward(rng.uniform(0, 255, (8, *in_shape)).astype(dtype) / 255)
        meta = {"input_shape": list(in_shape), "class_names": [f"c{i}" for i in range(k)],
                "input_scale": 1 / 255, "pixel_max": 255.0, "dtype": np.dtype(dtype).name}
        model = to_onnx(net, meta)
        onnx.checker.check_model(model)
        for n in (1, 37):
            assert_same_scores(model, net, meta, np.round(rng.uniform(0, 255, (n, *in_shape))))
        assert net.training  # scores() ran in eval mode and restored the mode
    # the float64 network as a double graph, where ONNX Runtime has double kernels (it has
    # none for Conv, AveragePool and GlobalAveragePool on CPU): equal to 1e-12
    try:
        sess = ort.InferenceSession(to_onnx(net, meta, np.float64).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        return
    x = np.round(rng.uniform(0, 255, (37, *in_shape)))
    want = scores(net, x, meta)
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, rtol=0,
                               atol=1e-12 * np.max(np.abs(want)))


def test_double_graph_matches_in_float64_where_onnx_runtime_has_kernels():
    """ONNX Runtime's CPU kernels in double cover dense stacks (not Conv); there the scores
    agree to 1e-12."""
    specs = [{"type": "flatten"}, {"type": "dense", "out_features": 7}, {"type": "batch_norm"},
             {"type": "relu"}, {"type": "dropout"}, {"type": "dense", "out_features": 5},
             {"type": "tanh"}, {"type": "dense", "out_features": 3}, {"type": "sigmoid"}]
    rng = np.random.default_rng(0)
    net = build_network(specs, (2, 3, 3), rng)
    net.forward(rng.standard_normal((16, 2, 3, 3)))
    meta = {"input_shape": [2, 3, 3], "class_names": ["a", "b", "c"], "input_scale": 0.0625,
            "pixel_max": 16.0}
    model = to_onnx(net, meta, np.float64)
    x = np.round(rng.uniform(0, 16, (37, 2, 3, 3)))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, scores(net, x, meta), rtol=1e-12, atol=1e-15)


def test_scores_follow_the_last_layer():
    from cnncli.scoring import outputs_to_scores, score_rule

    def net(last):
        specs = [{"type": "dense", "out_features": 3}] + ([{"type": last}] if last else [])
        return build_network(specs, (2,), np.random.default_rng(0))

    assert score_rule(net("softmax")) == "identity"
    assert score_rule(net("sigmoid")) == "normalise"
    assert score_rule(net(None)) == score_rule(net("tanh")) == "softmax"
    out = np.array([[0.2, 0.6, 0.2]])
    np.testing.assert_allclose(outputs_to_scores(out, "normalise"), [[0.2, 0.6, 0.2]])
    np.testing.assert_allclose(outputs_to_scores(np.log([[1.0, 3.0]]), "softmax"), [[0.25, 0.75]])


def test_unmapped_layer_is_refused_in_one_line(monkeypatch, tmp_path):
    from cnncli.layers.activations import ReLU

    class Swish(ReLU):
        pass

    Swish.type_name = "swish"
    monkeypatch.setitem(LAYERS, "swish", Swish)
    net = build_network([{"type": "dense", "out_features": 2}, {"type": "swish"}], (3,))
    meta = {"input_shape": [3], "class_names": ["a", "b"], "input_scale": 1.0, "pixel_max": 1.0}
    from cnncli.export import ExportError

    with pytest.raises(ExportError, match="layer type 'swish' has no ONNX mapping"):
        to_onnx(net, meta)


def _shapes_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "s.yaml"
    cfg.write_text((ROOT / "configs" / "shapes.yaml").read_text())
    assert run_cnn("train", cfg, "--run-dir", run, "--epochs", 2, "--quiet").exit_code == 0
    return run / "last.npz"


def test_missing_onnx_package_says_how_to_install(cnn, monkeypatch, tmp_path):
    ckpt = _shapes_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    result = cnn("export", ckpt, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert "pip install 'cnncli[onnx]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_out_that_is_a_directory_or_in_a_missing_folder_is_named(cnn, tmp_path):
    """The line names the file the user gave, never the temporary file written first."""
    ckpt = _shapes_checkpoint(tmp_path)
    (tmp_path / "models").mkdir()
    for out, phrase in [(tmp_path / "models", "is a directory"),
                        (tmp_path / "nope" / "m.onnx", f"the directory {tmp_path / 'nope'} does not exist")]:
        result = cnn("export", ckpt, "-o", out)
        assert result.exit_code == 1
        line = " ".join(result.output.split())
        assert line.startswith(f"Error: {out}: ") and phrase in line and ".tmp" not in line, line
    assert list((tmp_path / "models").iterdir()) == []


def test_export_of_a_format_1_checkpoint_says_what_is_missing(cnn, tmp_path):
    from cnncli.checkpoint import load_checkpoint

    ckpt = _shapes_checkpoint(tmp_path)
    arrays, meta = load_checkpoint(ckpt)
    old = {k: v for k, v in meta.items() if k not in ("dtype", "input_scale", "pixel_max")}
    old["format_version"] = 1
    v1 = tmp_path / "v1.npz"
    np.savez(v1, meta=np.array(json.dumps(old)), **arrays)
    result = cnn("export", v1, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert "lacks the input description dtype, input_scale, pixel_max" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_help_does_not_import_onnx():
    code = ("import sys; from cnncli.cli import app; from typer.testing import CliRunner; "
            "CliRunner().invoke(app, ['--help']); CliRunner().invoke(app, ['export', '--help']); "
            "print([m for m in ('onnx', 'onnxruntime') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sigmoid_outputs_that_underflow_give_equal_scores_in_library_and_onnx():
    """A sigmoid model whose outputs all underflow to 0 (inputs below about -88 in float32,
    -745 in float64) gets equal scores from cnncli.scores and from ONNX Runtime, not 0 / 0."""
    from cnncli.scoring import outputs_to_scores

    for dtype in (np.float32, np.float64):
        got = outputs_to_scores(np.zeros((2, 4), dtype=dtype), "normalise")
        np.testing.assert_array_equal(got, np.full((2, 4), 0.25, dtype=dtype))
    net = build_network([{"type": "flatten"}, {"type": "dense", "out_features": 3},
                         {"type": "sigmoid"}], (1, 2, 2), np.random.default_rng(0), np.float32)
    layer = net.layers[1]
    layer.params["W"][...] = 0
    layer.params["b"][...] = [-200.0, -300.0, 1.0]  # two outputs exactly 0 in float32
    meta = {"input_shape": [1, 2, 2], "class_names": ["a", "b", "c"], "input_scale": 1.0,
            "pixel_max": 1.0}
    x = np.zeros((3, 1, 2, 2), dtype=np.float32)
    want = scores(net, x, meta)
    sess = ort.InferenceSession(to_onnx(net, meta).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    assert np.isfinite(got).all() and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    layer.params["b"][...] = -200.0  # every output 0: equal scores
    want = scores(net, x, meta)
    sess = ort.InferenceSession(to_onnx(net, meta).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(want, 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], 1 / 3, rtol=1e-6)
