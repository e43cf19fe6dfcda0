"""Image folders as a dataset: layout and labels, splits and limit, every bad input (one line,
exit 1, no run directory), skip_bad, the memory refusal, the decoding cache, colour flowing
through the network, digits exported and trained as a folder, and the data commands."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnncli.config import load_config
from cnncli.data import load_dataset
from cnncli.errors import DataError
from cnncli.train import Trainer
from conftest import ROOT, run_cnn


NET = [{"type": "conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "relu"},
       {"type": "flatten"}, {"type": "dense", "out_features": 2}]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache (never the user's ~/.cache)."""
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "cache"))
    from cnncli.data import folder

    folder._MEMO.clear()


def make_folder(root, classes=("cat", "dog"), n=6, shape=(6, 5), mode="L", seed=0):
    """root/<class>/<i>.png, each image random pixels."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 256, (*shape, 3) if mode == "RGB" else shape, dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i:02d}.png")
    return root


def data_cfg(path, **kw):
    return {"name": "folder", "path": str(path), "size": None, "channels": None, "test_size": 0.2,
            "extensions": ["png", "jpg", "jpeg", "bmp", "gif", "webp"], "skip_bad": False,
            "limit": None, "augment": None, **kw}


def write_config(tmp_path, path, net=NET, **data):
    cfg = {"seed": 0, "data": {"name": "folder", "path": str(path), **data}, "network": net,
           "training": {"epochs": 1, "batch_size": 4, "learning_rate": 0.01}}
    out = tmp_path / "cfg.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def train_fails(tmp_path, folder, phrase, **data):
    """cnn train on the folder: exit 1, one line holding ``phrase``, no run directory."""
    run = tmp_path / "run"
    result = run_cnn("train", str(write_config(tmp_path, folder, **data)), "--run-dir", str(run))
    assert result.exit_code == 1, result.output
    assert phrase in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not run.exists()
    return result.output


# ------------------------------------------------------------------ layout, splits, limit
def test_class_folders_sorted_become_labels_and_files_are_read_in_path_order(tmp_path):
    root = tmp_path / "pics"
    make_folder(root, classes=("zebra", "ant", "moth"), n=4)
    (root / "ant" / "deeper").mkdir()
    Image.fromarray(np.full((6, 5), 7, np.uint8)).save(root / "ant" / "deeper" / "x.png")
    (root / "ant" / "readme.txt").write_text("not an image")
    (root / "moth" / "Thumbs.db").write_bytes(b"\0")
    from cnncli.data.folder import decode_folder

    d = decode_folder(root)
    assert d.class_names == ["ant", "moth", "zebra"]
    assert d.y.tolist() == [0] * 5 + [1] * 4 + [2] * 4  # ant/00..03.png, then ant/deeper/x.png
    assert (d.x[4] == 7).all() and d.x.shape == (13, 1, 6, 5) and d.x.dtype == np.uint8
    with Image.open(root / "moth" / "02.png") as im:
        assert (d.x[5 + 2, 0] == np.asarray(im)).all()
    assert d.ignored == 2


def test_single_folder_split_is_stratified_and_seeded_and_limit_is_a_stratified_subset(tmp_path):
    root = make_folder(tmp_path / "pics", classes=("a", "b", "c"), n=20)
    ds = load_dataset(data_cfg(root, test_size=0.25), 0)
    assert np.bincount(ds.y_test).tolist() == [5, 5, 5] and np.bincount(ds.y_train).tolist() == [15] * 3
    assert ds.scale == pytest.approx(1 / 255) and ds.pixel_max == 255
    other = load_dataset(data_cfg(root, test_size=0.25), 1)
    assert not np.array_equal(ds.x_test, other.x_test)
    again = load_dataset(data_cfg(root, test_size=0.25), 0)
    assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.x_train, again.x_train)

    small = load_dataset(data_cfg(root, test_size=0.25, limit=9), 0)
    assert np.bincount(small.y_train).tolist() == [3, 3, 3]  # not the first 9 files (all "a")
    assert np.array_equal(small.x_test, ds.x_test)  # the test split does not change
    members = {a.tobytes() for a in ds.x_train}
    assert all(a.tobytes() in members for a in small.x_train)
    assert not np.array_equal(small.x_train,
                              load_dataset(data_cfg(root, test_size=0.25, limit=9), 1).x_train[:9])


def test_train_and_test_folders_are_the_two_splits(tmp_path):
    root = tmp_path / "pics"
    make_folder(root / "train", n=5, seed=1)
    make_folder(root / "test", n=3, seed=2)
    ds = load_dataset(data_cfg(root), 0)
    assert len(ds.y_train) == 10 and len(ds.y_test) == 6 and ds.class_names == ["cat", "dog"]
    with Image.open(root / "test" / "dog" / "01.png") as im:
        assert (ds.x_test[4, 0] == np.asarray(im)).all()


def test_relative_path_in_a_config_file_is_relative_to_its_folder(cnn, tmp_path, monkeypatch):
    make_folder(tmp_path / "project" / "pics")
    (tmp_path / "project" / "configs").mkdir()
    write_config(tmp_path / "project" / "configs", "../pics")
    monkeypatch.chdir(tmp_path)
    cfg_path = os.path.join("project", "configs", "cfg.yaml")
    cfg = load_config(cfg_path)
    assert os.path.isabs(cfg["data"]["path"])
    assert os.path.samefile(cfg["data"]["path"], tmp_path / "project" / "pics")
    assert cnn("train", cfg_path, "--run-dir", "run", "-q").exit_code == 0
    result = cnn("train", cfg_path, "--resume", "run", "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output  # the same config: the same resolved path


def test_size_resizes_every_image_and_channels_choose_the_form(tmp_path):
    root = tmp_path / "pics"
    make_folder(root, n=3, shape=(6, 5))
    make_folder(root, classes=("dog",), n=2, shape=(9, 4), mode="RGB", seed=3)  # overwrite 2 files
    ds = load_dataset(data_cfg(root, size=[7, 8]), 0)
    assert ds.input_shape == (3, 7, 8)  # one RGB file: 3 channels by default
    ds = load_dataset(data_cfg(root, size=[7, 8], channels=1), 0)
    assert ds.input_shape == (1, 7, 8)
    from cnncli.data.images import decode_image

    one = np.concatenate([ds.x_train, ds.x_test])
    assert any((decode_image(root / "dog" / "00.png", (7, 8), 1) == a).all() for a in one)


def test_the_run_trains_on_rgb_images_with_the_configs_layers(cnn, tmp_path):
    root = make_folder(tmp_path / "pics", mode="RGB")
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (root / "dog" / "labels.csv").write_text("not an image")
    run = tmp_path / "run"
    result = cnn("train", str(write_config(tmp_path, root)), "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    assert "pics: ignored 1 file(s) that are not images by their extension" in result.output
    assert "Final test accuracy" in result.output
    from cnncli.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(run / "last.npz")
    assert meta["input_shape"] == [3, 6, 5] and arrays["layers.0.W"].shape == (4, 3, 3, 3)


# ------------------------------------------------------------------ bad input
def _truncated(root):
    path = root / "cat" / "01.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "cat/01.png: cannot decode"


def _not_an_image(root):
    (root / "dog" / "03.png").write_text("hello")
    return "dog/03.png: not an image"


def _bomb(root):
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(root / "dog" / "04.png")
    return "dog/04.png: refused as a decompression bomb"


def _dangling_link(root):
    (root / "cat" / "gone.png").symlink_to(root / "nowhere.png")
    return "cat/gone.png: cannot read"


def _empty_class(root):
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no images here")
    return "emu: an empty class folder"


def _single_class(root):
    import shutil

    shutil.rmtree(root / "dog")
    return "only one class folder (cat)"


def _no_images(root):
    import shutil

    for c in ("cat", "dog"):
        shutil.rmtree(root / c)
    (root / "a.png").write_bytes(b"")
    return "no class folders"


def _split_classes_differ(root):
    import shutil

    make_folder(root / "train", classes=("cat", "dog"), n=2)
    make_folder(root / "test", classes=("cat", "eel"), n=2)
    for c in ("cat", "dog"):
        shutil.rmtree(root / c)
    return "train/ and test/ must hold the same class folders; only in train/: dog; only in test/: eel"


def _dir_symlink_loop(root):
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)
    return "cat/again: a symlink loop"


def _self_link(root):
    (root / "dog" / "self.png").symlink_to(root / "dog" / "self.png")
    return "dog/self.png: a symlink loop"


def _fifo(root):
    os.mkfifo(root / "cat" / "pipe.png")  # opening it would wait for a writer forever
    return "cat/pipe.png: not a regular file (a named pipe)"


def _train_without_test(root):
    import shutil

    make_folder(root / "train", classes=("cat", "dog"), n=2)
    for c in ("cat", "dog"):
        shutil.rmtree(root / c)
    return "pics: has train/ but no test/"


def _missing(root):
    import shutil

    shutil.rmtree(root)
    return "pics: no such folder"


BAD = {"truncated image": _truncated, "not an image": _not_an_image, "decompression bomb": _bomb,
       "dangling link": _dangling_link, "empty class folder": _empty_class,
       "single class": _single_class, "no images": _no_images,
       "train/test classes differ": _split_classes_differ, "directory symlink loop": _dir_symlink_loop,
       "file symlink loop": _self_link, "named pipe": _fifo, "missing folder": _missing,
       "train without test": _train_without_test}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_is_one_line_exit_1_and_no_run_directory(tmp_path, monkeypatch, case):
    root = make_folder(tmp_path / "pics")
    phrase = BAD[case](root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # the 300x300 image is a "bomb"
    train_fails(tmp_path, root, phrase)


def test_mixed_sizes_without_size_name_two_files(cnn, tmp_path):
    root = make_folder(tmp_path / "pics", shape=(6, 5))
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(root / "dog" / "02.png")
    out = train_fails(tmp_path, root, "is 6x5 (HxW) but")
    assert "cat/00.png" in out and "dog/02.png is 7x5" in out and "data.size" in out
    assert cnn("train", str(write_config(tmp_path, root, size=[6, 5])), "--run-dir", str(tmp_path / "ok"), "--quiet").exit_code == 0


def test_a_png_whose_exif_rotation_comes_after_its_pixels_is_caught_by_the_size_check(tmp_path):
    """The header (what the size check reads) cannot see an eXIf chunk placed after the pixels;
    decoding applies it, and the decoded size is checked again."""
    import struct
    import zlib

    root = make_folder(tmp_path / "pics", shape=(6, 5))
    data = (root / "dog" / "05.png").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: 6x5 becomes 5x6
    payload = exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + \
        struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    end = data.rindex(b"IEND") - 4
    (root / "dog" / "05.png").write_bytes(data[:end] + chunk + data[end:])
    out = train_fails(tmp_path, root, "dog/05.png is 5x6 once decoded; set data.size")
    assert "cat/00.png is 6x5 (HxW)" in out


def test_memory_refusal_names_the_figure_before_decoding(tmp_path, monkeypatch):
    from cnncli.data import folder

    root = make_folder(tmp_path / "pics", n=10)
    monkeypatch.setattr(folder, "available_memory", lambda: 5_000)
    decoded = []
    monkeypatch.setattr(folder, "decode_image", lambda *a: decoded.append(a))
    train_fails(tmp_path, root, "the 20 images would take 0.60 MB (600,000 bytes) as 3x100x100 "
                                "uint8, more than the 0.01 MB (5,000 bytes) of memory available",
                size=[100, 100], channels=3)
    assert not decoded
    monkeypatch.setattr(folder, "available_memory", lambda: 599)
    train_fails(tmp_path, root, "the 20 images would take 0.00 MB (600 bytes) as 1x6x5 uint8")


def test_skip_bad_skips_counts_and_names_the_files(cnn, tmp_path):
    root = make_folder(tmp_path / "pics")
    _truncated(root)
    _not_an_image(root)
    run = tmp_path / "run"
    result = cnn("train", str(write_config(tmp_path, root, skip_bad=True)), "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "skipped" in ln)
    assert "skipped 2 unreadable image(s) (skip_bad)" in line
    assert "cat/01.png" in line and "dog/03.png" in line
    ds = load_dataset(data_cfg(root, skip_bad=True), 0)
    assert len(ds.y_train) + len(ds.y_test) == 10


def test_skip_bad_still_refuses_a_class_left_empty(tmp_path):
    root = make_folder(tmp_path / "pics", n=1)
    _not_an_image(root)
    (root / "dog" / "00.png").write_text("also not an image")
    with pytest.raises(DataError, match="dog: no readable image is left"):
        load_dataset(data_cfg(root, skip_bad=True), 0)


# ------------------------------------------------------------------ the cache
def test_second_load_opens_no_image_and_a_touched_added_or_removed_file_invalidates(tmp_path, monkeypatch):
    from cnncli.data import folder

    root = make_folder(tmp_path / "pics")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    first = load_dataset(data_cfg(root), 0)
    assert len(opened) >= 12
    assert list((tmp_path / "cache" / "folders").glob("*.npz"))

    def reload():
        opened.clear()
        folder._MEMO.clear()  # a new process: only the disk cache
        return load_dataset(data_cfg(root), 0)

    second = reload()
    assert opened == []
    assert np.array_equal(first.x_train, second.x_train) and np.array_equal(first.y_test, second.y_test)

    Image.fromarray(np.full((6, 5), 9, np.uint8)).save(root / "dog" / "00.png")  # same size, new mtime
    os.utime(root / "dog" / "00.png", ns=(1, 1))
    third = reload()
    assert opened and any((a == 9).all() for a in np.concatenate([third.x_train, third.x_test]))
    assert reload() and opened == []
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / "dog" / "new.png")
    added = reload()
    assert len(added.y_train) + len(added.y_test) == 13 and opened
    (root / "cat" / "00.png").unlink()
    removed = reload()
    assert len(removed.y_train) + len(removed.y_test) == 12 and opened


def test_cnn_train_second_run_reads_no_image_file(cnn, tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pics")
    cfg = write_config(tmp_path, root)
    assert cnn("train", str(cfg), "--run-dir", str(tmp_path / "r1")).exit_code == 0
    from cnncli.data import folder

    folder._MEMO.clear()
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    result = cnn("train", str(cfg), "--run-dir", str(tmp_path / "r2"))
    assert result.exit_code == 0, result.output
    assert [p for p in opened if str(p).endswith(".png")] == []


# ------------------------------------------------------------------ acceptance: real training
RED, GREEN = [255, 0, 0], [0, 130, 0]  # Pillow's luma of both: 76


def _colour_shapes(root, n=100, seed=0):
    """4 classes = colour (red or green, of equal luma) x shape (horizontal or vertical bar),
    at random positions with noise: the colour is invisible in grayscale."""
    rng = np.random.default_rng(seed)
    for colour_name, colour in (("red", RED), ("green", GREEN)):
        for bar in ("h", "v"):
            (root / f"{colour_name}_{bar}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 40, (8, 8, 3))
                r, c = rng.integers(0, 8), rng.integers(1, 7)
                if bar == "h":
                    img[r, max(c - 3, 0):c + 3] = colour
                else:
                    img[max(c - 3, 0):c + 3, r] = colour
                Image.fromarray(img.astype(np.uint8)).save(root / f"{colour_name}_{bar}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_colour_flows_through_rgb_reaches_95_percent_where_grayscale_cannot(tmp_path):
    root = _colour_shapes(tmp_path / "colours")
    pair = Image.fromarray(np.array([[RED, GREEN]], dtype=np.uint8)).convert("L")
    assert np.asarray(pair).tolist() == [[76, 76]]  # the same gray: colour is lost in grayscale
    net = [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same", "init": "he"},
           {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2}, {"type": "flatten"},
           {"type": "dense", "out_features": 32, "init": "he"}, {"type": "relu"},
           {"type": "dense", "out_features": 4, "init": "xavier"}]
    accuracy = {}
    for channels in (3, 1):
        raw = {"seed": 0, "data": {"name": "folder", "path": str(root), "channels": channels,
                                   "test_size": 0.25},
               "network": net,
               "training": {"epochs": 25, "batch_size": 16, "loss": "cross_entropy",
                            "optimizer": {"name": "adam", "learning_rate": 0.01}}}
        path = tmp_path / f"c{channels}.yaml"
        path.write_text(yaml.safe_dump(raw))
        trainer = Trainer(load_config(path))
        assert trainer.data.input_shape == (channels, 8, 8)
        for _ in range(trainer.epochs):
            row = trainer.train_epoch()
        accuracy[channels] = row["test_accuracy"]
    assert accuracy[3] >= 0.95, accuracy
    assert accuracy[1] <= 0.75, accuracy  # the bar's orientation only: about half right


@pytest.mark.slow
def test_digits_exported_as_a_folder_train_as_configs_digits_does(digits_folder):
    digits = Trainer(load_config(ROOT / "configs" / "digits.yaml"))
    folder = Trainer(load_config(ROOT / "configs" / "folder-example.yaml",
                                 [f"data.path={digits_folder}"]))
    assert folder.data.input_shape == digits.data.input_shape == (1, 8, 8)
    assert sorted(folder.data.y_test.tolist()) == sorted(digits.data.y_test.tolist())
    # the same test images: digits' values x 255 / 16, rounded
    key = lambda x: sorted(a.tobytes() for a in x)  # noqa: E731
    assert key(folder.data.x_test) == key(np.rint(digits.data.x_test * (255 / 16)).astype(np.uint8))
    for t in (digits, folder):
        for _ in range(t.epochs):
            t.train_epoch()
    a, b = digits.history[-1]["test_accuracy"], folder.history[-1]["test_accuracy"]
    assert a >= 0.95 and abs(a - b) <= 0.01, (a, b)


# ------------------------------------------------------------------ data export, data preview
def test_export_writes_eight_bit_pngs_of_each_split_and_never_overwrites(cnn, tmp_path):
    out = tmp_path / "shapes"
    result = cnn("data", "export", "shapes", "-o", str(out), "--limit", "30")
    assert result.exit_code == 0, result.output
    ds = load_dataset({"name": "shapes", "n": 500, "noise": 0.25, "test_size": 0.33,
                       "stratify": False, "limit": None}, 0)
    for split in ("train", "test"):
        x, y = ds.split(split)
        files = sorted((out / split).glob("*/*.png"))
        assert len(files) == 30
        first = out / split / ds.class_names[y[0]] / "00000.png"
        with Image.open(first) as im:
            assert im.mode == "L"
            expected = np.clip(np.rint(x[0, 0] * 255), 0, 255)
            assert (np.asarray(im) == expected).all()
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(ds.class_names)
    again = cnn("data", "export", "shapes", "-o", str(out))
    assert again.exit_code == 1 and "exists and is not an empty folder" in again.output
    assert len(list((out / "train").glob("*/*.png"))) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary folder left
    from cnncli.data.folder import export_folder

    calls = []
    export_folder(ds, tmp_path / "again", limit=150, on_image=lambda *a: calls.append(a))
    assert calls == [(100, 300), (200, 300), (300, 300)]  # the progress bar's updates
    bad = cnn("data", "export", "cifar", "-o", str(tmp_path / "c"))
    assert bad.exit_code == 2 and "datasets to export: shapes, digits, mnist" in bad.output


def test_preview_draws_resized_augmented_training_images(cnn, tmp_path):
    root = make_folder(tmp_path / "pics", mode="RGB")
    cfg = write_config(tmp_path, root, size=[12, 10], augment={"crop_padding": 2, "flip": "horizontal"})
    out = tmp_path / "grid.png"
    result = cnn("data", "preview", str(cfg), "-o", str(out), "--per-class", "3")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
    result = cnn("data", "preview", str(cfg), "-o", str(tmp_path / "g.png"), "--set", "data.augment.crop_padding=-1")
    assert result.exit_code == 1 and "data.augment: crop_padding: must be an integer >= 0" in result.output


def test_class_and_file_names_that_look_like_rich_markup_are_shown_as_they_are(cnn, tmp_path):
    """Folder and file names are the user's: cnn eval's and cnn predict's tables print them
    literally (Rich would read "[draft]" as a style and drop it)."""
    root = make_folder(tmp_path / "pics", classes=("[bold]cats", "[draft] dogs"))
    run = tmp_path / "run"
    result = cnn("train", str(write_config(tmp_path, root)), "--run-dir", str(run), "-q")
    assert result.exit_code == 0, result.output
    shown = cnn("eval", str(run / "last.npz"), env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "[bold]cats" in shown.stdout and "[draft] dogs" in shown.stdout
    picture = root / "[draft] dogs" / "[red]00.png"
    (root / "[draft] dogs" / "00.png").rename(picture)
    shown = cnn("predict", str(run / "last.npz"), str(picture), env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "[red]00.png" in shown.stdout
    assert "[bold]cats" in shown.stdout and "[draft] dogs" in shown.stdout


def _train_and_draw_every_picture(tmp_path, root):
    """Train on the folder, then draw each picture that shows class names: eval --plot,
    predict --plot, data preview; each must succeed."""
    cfg = write_config(tmp_path, root)
    run = tmp_path / "run"
    assert run_cnn("train", str(cfg), "--run-dir", str(run), "-q").exit_code == 0
    for args in (["eval", str(run / "last.npz"), "--plot", str(tmp_path / "e.png")],
                 ["predict", str(run / "last.npz"), str(root), "--plot", str(tmp_path / "p.png"), "-q"],
                 ["data", "preview", str(cfg), "-o", str(tmp_path / "v.png")]):
        result = run_cnn(*args)
        assert result.exit_code == 0, (args, result.output)


def test_class_names_with_dollar_signs_are_drawn_as_text(tmp_path):
    """A folder named "$\\q$" is a class name, not a TeX formula: cnn eval --plot, cnn predict
    --plot and cnn data preview draw it (matplotlib's mathtext failed on it)."""
    from cnncli.plots import new_figure, save_figure

    root = make_folder(tmp_path / "pics", classes=("$\\q$", "$5 and $6"))
    _train_and_draw_every_picture(tmp_path, root)
    fig = new_figure(2, 1)
    label = fig.add_subplot().set_title("$5 and $6")
    save_figure(fig, tmp_path / "t.png")
    assert label.get_text() == "$5 and $6" and not label.get_parse_math()


def test_a_class_folder_name_that_is_not_utf8_is_drawn(tmp_path, monkeypatch):
    """A folder named with Latin-1 bytes trains, and the pictures that show class names draw
    it with a replacement character (matplotlib's fonts refused the undecodable name)."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    drawn = {}  # picture file name -> every text of the figure as it is written

    def savefig(self, fname, *args, **kw):
        name = Path(getattr(fname, "name", fname)).name  # the atomic write's .<name>.<pid>.tmp
        drawn[name.split(".")[1] if name.startswith(".") else name] = [
            t.get_text() for t in self.findobj(Text)]
        return real_savefig(self, fname, *args, **kw)

    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", savefig)
    root = make_folder(tmp_path / "pics", classes=("cat",))
    make_folder(tmp_path / "tmp", classes=("x",))
    os.rename(tmp_path / "tmp" / "x", os.fsencode(root) + b"/caf\xe9")
    _train_and_draw_every_picture(tmp_path, root)
    assert {"e", "p", "v"} <= drawn.keys(), drawn.keys()  # eval --plot, predict --plot, preview
    for name, texts in drawn.items():  # no surrogate reaches a font
        assert not [t for t in texts if any("\ud800" <= c <= "\udfff" for c in t)], (name, texts)
    # the confusion matrix and the preview show every class: caf\xe9 as caf + U+FFFD
    assert "caf\ufffd" in drawn["e"] and "cat" in drawn["e"], drawn["e"]
    assert "caf\ufffd" in drawn["v"] and "cat" in drawn["v"], drawn["v"]
    # predict's tiles are titled with the predicted class: one of the two, as drawable text
    titles = [t.split()[0] for t in drawn["p"] if t.endswith(".png")]
    assert titles and set(titles) <= {"cat", "caf\ufffd"}, drawn["p"]


def test_help_imports_no_pillow():
    check = ("import sys, runpy; sys.argv = ['cnn', '--help']\n"
             "try:\n    runpy.run_module('cnncli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('PIL' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout


def test_resume_refuses_a_folder_whose_images_changed(cnn, tmp_path, monkeypatch):
    """A resumed run must train on the data it started with: a changed image is refused in one
    line (it would silently train on other data, and no longer be bit-exact)."""
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "cache"))
    folder = make_folder(tmp_path / "pics", n=8, shape=(6, 6))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 0, "data": {"name": "folder", "path": "pics"},
        "network": [{"type": "flatten"}, {"type": "dense", "out_features": 2}],
        "training": {"epochs": 2, "batch_size": 4, "loss": "cross_entropy",
                     "optimizer": {"name": "sgd", "learning_rate": 0.1}}}))
    run = tmp_path / "run"
    assert cnn("train", str(cfg), "--run-dir", str(run), "-q").exit_code == 0
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "cat" / "03.png")
    before = (run / "last.npz").read_bytes()
    result = cnn("train", "--resume", str(run), "--epochs", 3)
    assert result.exit_code == 1, result.output
    assert "is not the data it was trained on" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (run / "last.npz").read_bytes() == before
    make_folder(tmp_path / "fresh", n=8, shape=(6, 6))  # the same seed redraws the originals
    (folder / "cat" / "03.png").write_bytes((tmp_path / "fresh" / "cat" / "03.png").read_bytes())
    result = cnn("train", "--resume", str(run), "--epochs", 3, "-q")
    assert result.exit_code == 0, result.output
