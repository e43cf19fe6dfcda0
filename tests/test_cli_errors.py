"""Command-line mistakes: usage errors exit 2 naming the option; missing files, directories
where files belong and the wrong kind of file (a config given to eval, a checkpoint to
--resume, a picture to --data) each fail in one line that says what to do instead."""

import pytest

from helpers import COUNTS, SHAPES, SHAPES_NET, assert_cli_error, error_line, npz_config, write_config


@pytest.mark.parametrize("args,phrase", [
    (["train", str(SHAPES), "--epoch", "3"], "No such option: --epoch"),
    (["train", str(SHAPES), "--run_dir", "x"], "No such option: --run_dir"),
    (["eval", "x.npz", "--jsn"], "No such option: --jsn"),
    (["trian", str(SHAPES)], "No such command 'trian'"),
    (["train", str(SHAPES), "--epochs", "three"], "Invalid value for '--epochs'"),
    (["train", str(SHAPES), "--lr", "fast"], "Invalid value for '--lr'"),
    (["generate-shapes", "--n", "1"], "Invalid value for '--n'"),
    (["eval"], "Missing argument"),
])
def test_usage_mistakes_exit_2_with_the_option_named(cnn, args, phrase):
    """Click's usage errors: exit 2 (the usage convention), the usage line and one 'Error:' line
    naming the option; never a traceback."""
    COUNTS["hostile"] += 1
    result = cnn(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and phrase in errors[0], result.stderr


def test_missing_files_and_directories_where_files_belong(cnn, tmp_path, finished_run):
    missing = tmp_path / "nope"
    d = tmp_path / "a directory"
    d.mkdir()
    npz_dir = npz_config(tmp_path, d)
    npz_missing = write_config(tmp_path / "missing-npz.yaml", {
        "data": {"name": "npz", "path": str(missing)}, "network": SHAPES_NET})
    cases = [
        (["train", missing / "c.yaml"], [missing / "c.yaml", "no such file"]),
        (["train", d], [d, "is a directory, expected a YAML config file"]),
        (["summary", d], [d, "is a directory"]),
        (["gradcheck", missing], [missing, "no such file"]),
        (["eval", missing], [missing, "no such file"]),
        (["eval", d], [d, "is a directory, expected a checkpoint"]),
        (["eval", finished_run / "last.npz", "--data", missing], [missing, "no such file"]),
        (["eval", finished_run / "last.npz", "--data", d], [d, "is a directory"]),
        (["train", npz_dir, "--run-dir", tmp_path / "r"], [d, "is a directory, expected a .npz file"]),
        (["train", npz_missing, "--run-dir", tmp_path / "r"], [missing, "no such file"]),
        (["train", "--resume", missing], [missing, "no such run directory"]),
        (["train", "--resume", finished_run / "config.yaml"], ["is a file; --resume takes a run directory", f"cnn train --resume {finished_run}"]),
        (["train", "--resume", d], [d, "not a cnncli run directory (no config.yaml)"]),
        (["train", SHAPES, "--run-dir", finished_run / "config.yaml"], ["exists and is not a directory"]),
        (["generate-shapes", "--out", d], [d, "is a directory"]),
        (["generate-shapes", "--out", missing / "x.npz"], [missing / "x.npz", f"the directory {missing} does not exist"]),
    ]
    for args, phrases in cases:
        assert_cli_error(cnn(*args), *phrases)
    assert not (tmp_path / "r").exists()


def test_eval_of_a_config_says_it_is_a_config_and_suggests_train(cnn):
    line = error_line(cnn("eval", SHAPES))
    assert "is a YAML config, not a checkpoint" in line and f"cnn train {SHAPES}" in line
    assert "corrupt" not in line
    assert "cnn train" in error_line(cnn("show-kernels", SHAPES))


def test_resume_of_a_checkpoint_file_suggests_its_folder(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet").exit_code == 0
    line = error_line(cnn("train", "--resume", run / "last.npz"))
    assert "is a file" in line and f"cnn train --resume {run}" in line
    assert "no such run directory" not in line


def test_eval_data_that_is_not_a_config_says_data_takes_a_yaml_config(cnn, tmp_path):
    run = tmp_path / "run"
    assert cnn("train", SHAPES, "--run-dir", run, "--epochs", 1, "--quiet").exit_code == 0
    png = tmp_path / "seven.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    line = error_line(cnn("eval", run / "best.npz", "--data", png))
    assert "--data takes a YAML config" in line and str(png) in line
