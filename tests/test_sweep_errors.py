"""Hostile sweep inputs (issue 24, items 13-15): sweep files the sampler cannot use, sweep
directories edited or damaged by hand (sweep.yaml, study.journal), and special files (a FIFO,
/dev/zero) as a sweep file or its base. Each ends in one line naming the input, exit 1, no
traceback, never the catch-all, no hang, no folder left behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from helpers import assert_cli_error, cli_process, one_error_line
from test_sweep import write_sweep


# ------------------------------------------------------------ sweep files the sampler cannot use
BAD_SPACES = {
    "non-ASCII digit": ({"network.².out_features": {"low": 4, "high": 8}}, "random",
                        "'²' is not an index"),
    "huge int grid": ({"network.2.out_features": {"low": 1, "high": 1e18}}, "grid",
                      "must be between"),
    "wide int grid": ({"network.2.out_features": {"low": 1, "high": 10_000_000}}, "grid",
                      "the grid sampler takes at most"),
    "tiny float step": ({"training.learning_rate": {"low": 0.01, "high": 1.0, "step": 1e-300}},
                        "grid", "give a coarser step"),
    "tiny float step, tpe": ({"training.learning_rate": {"low": 0.01, "high": 1.0, "step": 1e-300}},
                             "tpe", "give a coarser step"),
    "whole float range": ({"training.learning_rate": {"low": -1e308, "high": 1e308}}, "random",
                          "must be between"),
    "grid product": ({"training.learning_rate": {"low": 0.0, "high": 1.0, "step": 0.001},
                      "training.batch_size": {"low": 1, "high": 2000}}, "grid",
                     "the grid has"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_space_the_sampler_cannot_use_is_refused_up_front(cnn, tmp_path, case):
    space, sampler, phrase = BAD_SPACES[case]
    path = write_sweep(tmp_path, sampler=sampler, trials=1, space=space)
    out = tmp_path / "out"
    assert_cli_error(cnn("sweep", "run", path, "--sweep-dir", out), str(path), phrase)
    assert not out.exists()


def test_a_bogus_metric_is_refused_before_the_first_trial(cnn, tmp_path):
    path = write_sweep(tmp_path, metric="bogus")
    out = tmp_path / "out"
    assert_cli_error(cnn("sweep", "run", path, "--sweep-dir", out), "metric: must be one of")
    assert not out.exists()


# ------------------------------------------------------------ special files
def fifo(path):
    os.mkfifo(path)
    return path


def test_a_fifo_or_a_device_as_sweep_file_or_base_is_one_line_without_hanging(tmp_path):
    good = write_sweep(tmp_path / "good")
    cases = []
    cases.append((fifo(tmp_path / "sweep-fifo.yaml"), "named pipe"))
    for device in ("/dev/zero", "/dev/urandom"):
        cases.append((device, "character device"))
    for base, phrase in ((fifo(tmp_path / "base-fifo.yaml"), "named pipe"),
                         ("/dev/zero", "character device"), ("/dev/urandom", "character device")):
        spec = yaml.safe_load(good.read_text())
        spec["base"] = str(base)
        path = tmp_path / f"with-base-{len(cases)}.yaml"
        path.write_text(yaml.safe_dump(spec))
        cases.append((path, phrase))
    for i, (path, phrase) in enumerate(cases):
        out = tmp_path / f"out-{i}"
        one_error_line(*cli_process("sweep", "run", path, "--sweep-dir", out), phrase)
        assert not out.exists()


def test_a_fifo_as_config_is_one_line_without_hanging(tmp_path):
    path = fifo(tmp_path / "f.yaml")
    one_error_line(*cli_process("train", path), str(path), "named pipe")


# ------------------------------------------------------------ sweep directories damaged by hand
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, epochs=1, trials=1)
    out = folder / "out"
    code, stdout, stderr = cli_process("sweep", "run", path, "--sweep-dir", out, "--quiet",
                                       timeout=300)
    assert code == 0, (stdout, stderr)
    return out


def damaged_copy(finished_sweep, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished_sweep, out)
    return out


SWEEP_YAML_EDITS = {
    "storage: 5": (lambda s: s.update(storage=5), "storage: must be a database URL or null"),
    "storage: [a]": (lambda s: s.update(storage=["a"]), "storage: must be a database URL or null"),
    "no study": (lambda s: s.pop("study"), "study: is required"),
    "study: 5": (lambda s: s.update(study=5), "study: must be a non-empty string"),
    "space: 5": (lambda s: s.update(space=5), "space: must be a mapping"),
    "trials: many": (lambda s: s.update(trials="many"), "trials: must be an integer"),
    "metric: bogus": (lambda s: s.update(metric="bogus"), "metric: must be one of"),
    "only sweep_id and space": (lambda s: [s.pop(k) for k in list(s) if k not in ("sweep_id", "space")],
                                "5 problems: name: is required"),
    "a list": (lambda s: None, "is not a cnn sweep record"),
}


@pytest.mark.parametrize("case", sorted(SWEEP_YAML_EDITS))
def test_a_hand_edited_sweep_yaml_is_one_line(cnn, finished_sweep, tmp_path, case):
    out = damaged_copy(finished_sweep, tmp_path)
    edit, phrase = SWEEP_YAML_EDITS[case]
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    edit(spec)
    (out / "sweep.yaml").write_text(yaml.safe_dump(["x"] if case == "a list" else spec))
    for args in (("sweep", "show", out), ("sweep", "resume", out), ("sweep", "show", out, "--json")):
        assert_cli_error(cnn(*args), str(out / "sweep.yaml"), phrase)
    rows = json.loads(cnn("runs", tmp_path, "--json").output)
    row = next(r for r in rows if r["kind"] == "sweep")
    assert row["state"] == "damaged" and row["note"].startswith("sweep.yaml: "), row


JOURNAL_DAMAGE = {
    "garbage line": (b"this is not json\n", "not a JSON record"),
    "binary junk": (b"\xff\xfe\x00\x81junk\n", "binary junk"),
    "unknown op code": (json.dumps({"op_code": 99, "worker_id": "w"}).encode() + b"\n",
                        "unknown op_code"),
    "a JSON list": (b"[1, 2]\n", "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(JOURNAL_DAMAGE))
def test_a_damaged_journal_names_its_line(cnn, finished_sweep, tmp_path, case):
    out = damaged_copy(finished_sweep, tmp_path)
    junk, phrase = JOURNAL_DAMAGE[case]
    journal = out / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:2]) + junk + b"".join(lines[2:]))
    for args in (("sweep", "show", out), ("sweep", "resume", out)):
        assert_cli_error(cnn(*args), f"{journal}, line 3: damaged", phrase)


def test_special_files_in_a_sweep_directory_are_one_line(finished_sweep, tmp_path):
    out = damaged_copy(finished_sweep, tmp_path)
    (out / "sweep.yaml").unlink()
    fifo(out / "sweep.yaml")
    one_error_line(*cli_process("sweep", "show", out), "named pipe")
    os.unlink(out / "sweep.yaml")
    shutil.copy(finished_sweep / "sweep.yaml", out / "sweep.yaml")
    (out / "study.journal").unlink()
    fifo(out / "study.journal")
    one_error_line(*cli_process("sweep", "show", out), "named pipe")


@pytest.mark.parametrize("name", ["sweep.yaml", "trials.csv", "study.journal", "workers.log"])
def test_cnn_runs_over_a_sweep_folder_holding_a_fifo_does_not_hang(finished_sweep, tmp_path, name):
    out = damaged_copy(finished_sweep, tmp_path)
    (out / name).unlink(missing_ok=True)
    fifo(out / name)
    code, stdout, stderr = cli_process("runs", tmp_path, "--json")
    assert code == 0, stderr
    row = next(r for r in json.loads(stdout) if r["kind"] == "sweep")
    if name == "sweep.yaml":
        assert row["state"] == "damaged" and "named pipe" in row["note"], row
    else:
        assert row["state"] != "damaged", row


def test_a_hand_edited_sweep_name_is_checked_and_printed_as_text(cnn, finished_sweep, tmp_path):
    out = damaged_copy(finished_sweep, tmp_path)
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    spec["name"] = "[/bold]x"  # no sweep file's name holds a '/' (and Rich reads a closing tag)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec))
    for args in (("sweep", "show", out), ("sweep", "resume", out)):
        assert_cli_error(cnn(*args), "name: must be a sweep file's name", "'[/bold]x'")
    rows = json.loads(cnn("runs", tmp_path, "--json").output)
    assert any(r["kind"] == "sweep" and r["state"] == "damaged" for r in rows), rows
    spec["name"] = "[red]x"  # a file name may hold brackets: shown as written
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec))
    result = cnn("sweep", "show", out, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["trials"], result.output
