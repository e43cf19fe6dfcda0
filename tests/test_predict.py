"""``cnn predict``: image files, folders and .npz in; labels that agree with ``cnn eval``, scores
that agree with ONNX Runtime, and one clear line for every bad input."""

import csv
import json

import numpy as np
import pytest

from cnncli.checkpoint import load_checkpoint, save_checkpoint
from cnncli.config import load_config
from cnncli.data import load_dataset
from cnncli.data.images import write_png
from cnncli.metrics import confusion_matrix
from cnncli.train import evaluate, make_loss
from conftest import ROOT, run_cnn


def predict_json(*args):
    result = run_cnn("predict", *args, "--json", "-q")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def digits_run(cnn, tmp_path_factory):
    """configs/digits.yaml trained one epoch (stored form 0-16, pixel_max 16)."""
    run = tmp_path_factory.mktemp("predict") / "digits"
    result = cnn("train", ROOT / "configs" / "digits.yaml", "--epochs", 1, "--run-dir", run, "-q")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def folder_run(cnn, tmp_path_factory, monkeypatch_module):
    """An exported digits folder (300 train / 300 test PNGs) and a model trained on it."""
    base = tmp_path_factory.mktemp("predict-folder")
    monkeypatch_module.setenv("CNNCLI_DATA_DIR", str(base / "cache"))
    folder = base / "digits-folder"
    result = cnn("data", "export", "digits", "-o", folder, "--limit", 300)
    assert result.exit_code == 0, result.output
    run = base / "run"
    result = cnn("train", ROOT / "configs" / "folder-example.yaml", "--set", f"data.path={folder}",
                 "--epochs", 2, "--run-dir", run, "-q")
    assert result.exit_code == 0, result.output
    return folder, run


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _eval_predictions(checkpoint):
    """The labels behind ``cnn eval``'s confusion matrix, from the library."""
    from cnncli.checkpoint import load_network

    net, cfg, _, _ = load_network(checkpoint)
    ds = load_dataset(cfg["data"], cfg["seed"])
    res = evaluate(net, make_loss(cfg["training"], net), ds, "test", np.dtype(cfg["training"]["dtype"]))
    return ds, res["predictions"]


def test_npz_predictions_equal_eval_labels_and_confusion_matrix(cnn, digits_run, tmp_path):
    best = digits_run / "best.npz"
    ds, expected = _eval_predictions(best)
    npz = tmp_path / "test.npz"
    np.savez(npz, x_test=ds.x_test[:, 0])  # (N, H, W): the channel axis is added
    rows = predict_json(best, npz)
    labels = np.array([r["label"] for r in rows])
    assert [r["path"] for r in rows[:2]] == [f"{npz}[0]", f"{npz}[1]"]
    np.testing.assert_array_equal(labels, expected)
    shown = json.loads(cnn("eval", best, "--json").stdout)
    assert confusion_matrix(ds.y_test, labels, ds.n_classes).tolist() == shown["confusion_matrix"]


def test_files_and_folders_schema_order_and_agreement_with_eval(folder_run):
    folder, run = folder_run
    best = run / "best.npz"
    ds, expected = _eval_predictions(best)
    rows = predict_json(best, folder / "test")
    files = sorted((folder / "test").rglob("*.png"))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    np.testing.assert_array_equal([r["label"] for r in rows], expected)
    for r in rows:
        assert set(r) == {"path", "label", "class", "score", "top"}
        assert r["class"] == ds.class_names[r["label"]] and 0 < r["score"] <= 1
        assert r["top"][0] == {"label": r["label"], "class": r["class"], "score": r["score"]}
        assert len(r["top"]) == 2 and r["top"][1]["score"] <= r["score"]
    (one,) = predict_json(best, files[5])  # alone: a batch of one, the same answer
    assert (one["path"], one["label"]) == (rows[5]["path"], rows[5]["label"])
    assert one["score"] == pytest.approx(rows[5]["score"], rel=1e-12)


def test_top_k_csv_and_table(cnn, folder_run, tmp_path):
    folder, run = folder_run
    files = sorted((folder / "test" / "7").glob("*.png"))[:4]
    out = tmp_path / "p.csv"
    result = cnn("predict", run / "best.npz", *files, "--top-k", 10, "--csv", out, "--json", "-q")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for r in rows:
        scores = [t["score"] for t in r["top"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-9
        assert sorted(t["label"] for t in r["top"]) == list(range(10))
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert [t["path"] for t in table] == [r["path"] for r in rows]
    assert [float(t["top3_score"]) for t in table] == [r["top"][2]["score"] for r in rows]
    assert [t["class"] for t in table] == [r["class"] for r in rows]
    shown = cnn("predict", str(run / "best.npz"), str(files[0]), "-k", "3", env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and files[0].name in shown.stdout and "#3" in shown.stdout


def test_csv_in_a_missing_folder_names_the_file(cnn, digits_run, tmp_path):
    x = tmp_path / "in.npz"
    np.savez(x, x=np.zeros((2, 8, 8)))
    out = tmp_path / "nope" / "p.csv"
    result = cnn("predict", digits_run / "best.npz", x, "--csv", out)
    assert result.exit_code == 1
    line = " ".join(result.stderr.split())
    assert line.startswith(f"Error: {out}: ") and ".tmp" not in line, line


def test_plot_writes_a_png(cnn, folder_run, tmp_path):
    from PIL import Image

    folder, run = folder_run
    out = tmp_path / "pred.png"
    result = cnn("predict", run / "best.npz", folder / "test" / "1", "--plot", out)
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}" in result.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200


def test_scores_equal_onnx_runtime_outputs(cnn, folder_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    folder, run = folder_run
    model = tmp_path / "m.onnx"
    assert cnn("export", run / "best.npz", "-o", model).exit_code == 0
    files = sorted((folder / "test").rglob("*.png"))[:40]
    rows = predict_json(run / "best.npz", *files, "--top-k", 10)
    ours = np.zeros((len(rows), 10))
    for i, r in enumerate(rows):
        for t in r["top"]:
            ours[i, t["label"]] = t["score"]
    from cnncli.data.images import decode_image

    x = np.stack([decode_image(f) for f in files]).astype(np.float32)  # stored form, 0-255
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert np.abs(theirs - ours).max() <= 1e-5 * ours.max()


def test_labels_do_not_depend_on_batch_size(folder_run):
    folder, run = folder_run
    one = predict_json(run / "best.npz", folder / "test", "--batch-size", 1, "--top-k", 10)
    big = predict_json(run / "best.npz", folder / "test", "--batch-size", 1000, "--top-k", 10)
    assert [r["label"] for r in one] == [r["label"] for r in big]
    a = np.array([[t["score"] for t in r["top"]] for r in one])
    b = np.array([[t["score"] for t in r["top"]] for r in big])
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_checkpoint_without_input_description_names_the_options(cnn, digits_run, tmp_path):
    arrays, meta = load_checkpoint(digits_run / "best.npz")
    for key in ("input_scale", "pixel_max"):
        meta.pop(key, None)
    meta.pop("format_version", None)
    old = tmp_path / "old.npz"
    save_checkpoint(old, arrays, meta)
    ds = load_dataset(load_config(ROOT / "configs" / "digits.yaml")["data"], 0)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=ds.x_test[:20])
    result = cnn("predict", old, npz)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "lacks the input description" in line
    assert "--pixel-max" in line and "--input-scale" in line
    fixed = predict_json(old, npz, "--pixel-max", 16, "--input-scale", 1 / 16)
    assert fixed == predict_json(digits_run / "best.npz", npz)


def test_unreadable_image_names_the_file_unless_skip_bad(cnn, folder_run, tmp_path):
    folder, run = folder_run
    mine = tmp_path / "mine"
    mine.mkdir()
    good = sorted((folder / "test" / "4").glob("*.png"))[:3]
    for f in good:
        (mine / f.name).write_bytes(f.read_bytes())
    (mine / "broken.png").write_bytes(good[0].read_bytes()[:40])
    (mine / "notes.txt").write_text("not an image")
    result = cnn("predict", run / "best.npz", mine)
    assert result.exit_code == 1
    assert "broken.png" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    result = cnn("predict", run / "best.npz", mine, "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(mine / f.name) for f in good]
    assert "Skipped 1 image file(s)" in result.stderr and "broken.png" in result.stderr
    assert "1 file(s) in the given folders are not images" in result.stderr


def test_a_named_pipe_is_refused_not_waited_on(cnn, folder_run, tmp_path):
    import os

    folder, run = folder_run
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "pipe.png")
    for target in (tmp_path / "in", tmp_path / "in" / "pipe.png"):
        result = cnn("predict", run / "best.npz", target)
        assert result.exit_code == 1
        assert "pipe.png: not a regular file (a named pipe)" in result.stderr
    os.mkfifo(tmp_path / "pipe.npz")
    result = cnn("predict", run / "best.npz", tmp_path / "pipe.npz")
    assert result.exit_code == 1 and "pipe.npz: not a regular file" in result.stderr


def test_csv_keeps_undecodable_file_names_as_their_bytes(cnn, folder_run, tmp_path):
    """A file name that is not UTF-8 (an old camera's card) goes into the CSV as its own bytes,
    so the path column still opens the file."""
    import os

    folder, run = folder_run
    good = sorted((folder / "test" / "2").glob("*.png"))[0]
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    with open(raw, "wb") as f:
        f.write(good.read_bytes())
    out = tmp_path / "p.csv"
    result = cnn("predict", run / "best.npz", os.fsdecode(raw), "--csv", out, "-q")
    assert result.exit_code == 0, result.output
    row = out.read_bytes().splitlines()[1]
    assert row.startswith(raw + b",")


def test_skip_bad_with_no_readable_image_left_is_an_error(cnn, folder_run, tmp_path):
    folder, run = folder_run
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.jpg").write_bytes(b"")
    result = cnn("predict", run / "best.npz", tmp_path / "a.png", tmp_path / "b.jpg", "--skip-bad",
                 "--csv", tmp_path / "p.csv")
    assert result.exit_code == 1
    assert "none of the 2 images could be decoded" in result.stderr and "a.png" in result.stderr
    assert not (tmp_path / "p.csv").exists()


def test_other_sizes_and_colour_images_are_converted_with_a_note(cnn, folder_run, tmp_path):
    folder, run = folder_run
    rgb = np.zeros((3, 16, 16), np.uint8)
    rgb[:, 4:12, 7:9] = 255
    path = tmp_path / "big.png"
    write_png(path, rgb)
    result = cnn("predict", run / "best.npz", path, "--json")
    assert result.exit_code == 0, result.output
    assert "1 image(s) were resized to the model's 8x8" in result.stderr
    assert len(json.loads(result.stdout)) == 1


@pytest.mark.parametrize("make, phrase", [
    (lambda p: np.savez(p, y=np.zeros(3)), "holds no image array named x or x_test"),
    (lambda p: np.savez(p, x=np.zeros((3, 9, 9))), "must hold numbers of shape (N, 1, 8, 8)"),
    (lambda p: p.write_bytes(b"PK\x03\x04 junk"), "not a readable .npz"),
    (lambda p: np.savez(p, x=np.where(np.arange(3 * 64).reshape(3, 8, 8) == 70, np.nan, 1.0)),
     "in.npz[1]: 'x' holds NaN or infinite values"),
    (lambda p: np.savez(p, x_test=np.full((2, 1, 8, 8), -np.inf)),
     "in.npz[0]: 'x_test' holds NaN or infinite values"),
])
def test_bad_npz_inputs_get_one_line(cnn, digits_run, tmp_path, make, phrase):
    p = tmp_path / "in.npz"
    make(p)
    result = cnn("predict", digits_run / "best.npz", p)
    assert result.exit_code == 1
    assert phrase in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_path_and_empty_folder(cnn, digits_run, tmp_path):
    result = cnn("predict", digits_run / "best.npz", tmp_path / "nope.png")
    assert result.exit_code == 1 and "no such file or folder" in result.stderr
    result = cnn("predict", digits_run / "best.npz", tmp_path / "nope.npz")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {tmp_path / 'nope.npz'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    result = cnn("predict", digits_run / "best.npz", tmp_path / "empty")
    assert result.exit_code == 1 and "no image files below this folder" in result.stderr


def test_csv_to_a_folder_is_one_line(cnn, folder_run, tmp_path):
    folder, run = folder_run
    one = sorted((folder / "test" / "2").glob("*.png"))[0]
    result = cnn("predict", run / "best.npz", one, "--csv", tmp_path)
    assert result.exit_code == 1
    assert "is a directory" in result.stderr and len(result.stderr.strip().splitlines()) == 1
