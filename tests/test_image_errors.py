"""Image folders, predict and export under hostile input (issue 24, items 17-19): channels that
only equal 1 or 3, cache entries edited by hand, .npz inputs with no rows or overflowing values,
outputs that would replace an input, weights too large for float32, the cache fingerprint of an
image edited in place, AppleDouble files, and a 255-character class name."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image

from cnncli.data import folder as folder_mod
from cnncli.data.folder import decode_folder
from helpers import COUNTS, SHAPES, assert_cli_error
from test_folder import NET, make_folder, write_config


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA_DIR", str(tmp_path / "cache"))
    folder_mod._MEMO.clear()


# ------------------------------------------------------------ item 17: channels
@pytest.mark.parametrize("value", ["3.0", "1.0", "true", "false"])
def test_channels_that_only_equal_1_or_3_are_refused_by_every_door(cnn, tmp_path, value):
    root = make_folder(tmp_path / "imgs")
    cfg = write_config(tmp_path, root)
    for args in (("summary", cfg, "--set", f"data.channels={value}"),
                 ("data", "preview", cfg, "--set", f"data.channels={value}", "-o", tmp_path / "p.png"),
                 ("train", cfg, "--set", f"data.channels={value}", "--run-dir", tmp_path / "r")):
        assert_cli_error(cnn(*args), "data.channels: must be one of 1, 3")
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["channels"] = yaml.safe_load(value)
    cfg.write_text(yaml.safe_dump(raw))
    assert_cli_error(cnn("summary", cfg), str(cfg), "data.channels: must be one of 1, 3")
    assert not (tmp_path / "r").exists() and not (tmp_path / "p.png").exists()


# ------------------------------------------------------------ item 17: the cache
def cache_entry(tmp_path):
    [entry] = list((tmp_path / "cache" / "folders").glob("*.npz"))
    return entry


def edit_cache(entry, **change):
    with np.load(entry, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(change)
    np.savez(entry, **arrays)


@pytest.mark.parametrize("case", ["labels out of range", "negative label", "wrong shape",
                                  "wrong channels", "float pixels", "labels swapped", "fewer rows"])
def test_a_cache_entry_edited_by_hand_is_rebuilt(tmp_path, case):
    root = make_folder(tmp_path / "imgs")
    good = decode_folder(root)
    entry = cache_entry(tmp_path)
    x, y = good.x, good.y
    change = {
        "labels out of range": {"y": y + 5},
        "negative label": {"y": y - 1},
        "wrong shape": {"x": np.zeros((len(x), 1, 3, 3), np.uint8)},
        "wrong channels": {"x": np.repeat(x, 3, axis=1)},
        "float pixels": {"x": x.astype(np.float64)},
        "labels swapped": {"y": 1 - y},
        "fewer rows": {"x": x[:-1], "y": y[:-1], "is_test": good.is_test[:-1]},
    }[case]
    edit_cache(entry, **change)
    COUNTS["hostile"] += 1
    folder_mod._MEMO.clear()
    again = decode_folder(root)
    assert np.array_equal(again.x, good.x) and np.array_equal(again.y, good.y)
    folder_mod._MEMO.clear()
    assert np.array_equal(decode_folder(root).y, good.y)  # the rebuilt entry serves now


def test_an_edited_cache_never_reaches_training(cnn, tmp_path):
    root = make_folder(tmp_path / "imgs")
    cfg = write_config(tmp_path, root)
    assert cnn("summary", cfg).exit_code == 0
    entry = cache_entry(tmp_path)
    with np.load(entry) as f:
        y = f["y"]
    edit_cache(entry, y=y + 7)
    result = cnn("train", cfg, "--run-dir", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------ item 19: fingerprint, AppleDouble
def test_an_image_edited_in_place_with_size_and_time_restored_is_decoded_again(tmp_path):
    root = make_folder(tmp_path / "imgs")
    first = decode_folder(root)
    path = root / "cat" / "00.png"
    st = path.stat()
    data = bytearray(path.read_bytes())
    img = np.asarray(Image.open(path)).copy()
    img ^= 0xFF
    Image.fromarray(img).save(path)
    if path.stat().st_size != st.st_size:  # keep the size: pad or cut an ancillary-free copy
        new = path.read_bytes()
        path.write_bytes(new[: st.st_size] if len(new) > st.st_size else new + b"\0" * (st.st_size - len(new)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert bytes(data) != path.read_bytes()
    folder_mod._MEMO.clear()
    second = decode_folder(root)
    assert not np.array_equal(first.x, second.x)


def test_appledouble_and_hidden_files_are_skipped(cnn, tmp_path):
    root = make_folder(tmp_path / "imgs")
    for c in ("cat", "dog"):
        (root / c / "._00.png").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)
        (root / c / ".DS_Store").write_bytes(b"\0" * 30)
    d = decode_folder(root)
    assert len(d.x) == 12
    cfg = write_config(tmp_path, root)
    result = cnn("summary", cfg)
    assert result.exit_code == 0, result.output
    ckpt_run = tmp_path / "r"
    assert cnn("train", cfg, "--run-dir", ckpt_run, "-q").exit_code == 0
    result = cnn("predict", ckpt_run / "best.npz", root, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 12


def test_a_255_character_class_name_prints_no_matplotlib_warning(tmp_path):
    import subprocess
    import sys

    from helpers import ENV

    root = make_folder(tmp_path / "imgs", classes=("a" * 255, "b"))
    cfg = write_config(tmp_path, root)
    env = {**ENV, "CNNCLI_DATA_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}
    run = tmp_path / "r"
    for args in (("data", "preview", cfg, "-o", tmp_path / "p.png"),
                 ("train", cfg, "--run-dir", run, "-q"),
                 ("eval", run / "best.npz", "--plot", tmp_path / "e.png"),
                 ("predict", run / "best.npz", root, "--plot", tmp_path / "pp.png", "-q")):
        p = subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert "Warning" not in p.stderr and "warn" not in p.stderr.lower(), p.stderr


# ------------------------------------------------------------ item 17: predict
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import run_cnn

    run = tmp_path_factory.mktemp("ck") / "r"
    result = run_cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "-q")
    assert result.exit_code == 0, result.output
    return run / "best.npz"


@pytest.mark.parametrize("dtype", ["float64", "float32", "uint8"])
def test_an_npz_with_no_rows_is_one_rule_an_error(cnn, tmp_path, checkpoint, dtype):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 1, 3, 3), dtype))
    assert_cli_error(cnn("predict", checkpoint, path), str(path), "0 rows")
    (tmp_path / "empty-folder").mkdir()
    assert_cli_error(cnn("predict", checkpoint, tmp_path / "empty-folder"), "no image files")


@pytest.mark.parametrize("case", ["--input-scale 1e308", "x 1e308"])
def test_overflowing_inputs_are_one_line_and_json_is_never_invalid(cnn, tmp_path, checkpoint, case):
    path = tmp_path / "x.npz"
    value = 1.0 if case.startswith("--") else float(case.split()[1])
    np.savez(path, x=np.full((3, 1, 3, 3), value))
    extra = ["--input-scale", "1e308"] if case.startswith("--") else []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning would fail here
        for args in ((), ("--json",)):
            result = cnn("predict", checkpoint, path, *extra, *args)
            line = assert_cli_error(result, "not finite")
            assert "RuntimeWarning" not in result.output and "NaN" not in result.stdout, line
    ok = cnn("predict", checkpoint, tmp_path / "x.npz", "--input-scale", "1e-300", "--json")
    if ok.exit_code == 0:
        json.loads(ok.stdout, parse_constant=lambda c: pytest.fail(f"invalid JSON token {c}"))


def test_outputs_never_replace_the_checkpoint_or_an_input(cnn, tmp_path, checkpoint):
    import shutil

    ck = tmp_path / "ck.npz"
    shutil.copy(checkpoint, ck)
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((2, 1, 3, 3)))
    before = ck.read_bytes(), data.read_bytes()
    os.symlink(ck, tmp_path / "link.npz")
    # where an existing output needs --force, give it: the input is refused all the same
    force = {cmd: ["--force"] if "--force" in cnn(cmd, "--help").output else []
             for cmd in ("predict", "export")}
    for args in (("predict", ck, data, "--csv", ck), ("predict", ck, data, "--plot", data),
                 ("predict", tmp_path / "link.npz", data, "--csv", ck),
                 ("export", ck, "-o", ck), ("export", tmp_path / "link.npz", "-o", ck)):
        assert_cli_error(cnn(*args, *force[args[0]]), "being read", "write to another file")
    assert (ck.read_bytes(), data.read_bytes()) == before


def test_output_errors_name_the_path_given(cnn, tmp_path, checkpoint):
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((2, 1, 3, 3)))
    for out in (tmp_path / "no-dir" / "p.csv", tmp_path, "/proc/p.csv"):
        line = assert_cli_error(cnn("predict", checkpoint, data, "--csv", out), str(out))
        assert ".tmp" not in line
    long_name = tmp_path / ("a" * 250 + ".csv")  # the temporary name would be too long
    result = cnn("predict", checkpoint, data, "--csv", long_name, "-q")
    assert result.exit_code == 0 and long_name.is_file(), result.output


# ------------------------------------------------------------ item 18: export
def test_weights_too_large_for_float32_are_refused_naming_the_layer(cnn, tmp_path, checkpoint):
    pytest.importorskip("onnx")
    from cnncli.checkpoint import load_checkpoint, save_checkpoint

    arrays, meta = load_checkpoint(checkpoint)
    key = next(k for k in arrays if k.startswith("layers.") and k.endswith(".W"))
    arrays[key] = arrays[key].astype(np.float64)
    arrays[key].flat[0] = 1e300
    big = tmp_path / "big.npz"
    save_checkpoint(big, arrays, meta)
    out = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cnn("export", big, "-o", out)
    layer = key.rsplit(".", 1)[0]
    line = assert_cli_error(result, layer, "too large for float32")
    assert "RuntimeWarning" not in result.output and not out.exists(), line
