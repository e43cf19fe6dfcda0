"""``cnn runs`` over odd run folders (issue 24, item 16): a config.yaml whose dataset name is a
number, a list, a date or Rich markup; a metrics.csv epoch of inf or nan; --sort over them. Such
a run is listed as damaged, and every text read from a file is printed as text, never as
markup."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from helpers import COUNTS, SHAPES
from cnncli.runs import SORT_KEYS


@pytest.fixture(scope="module")
def finished_run(cnn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    result = cnn("train", SHAPES, "--run-dir", folder / "run", "--epochs", 1, "-q")
    assert result.exit_code == 0, result.output
    return folder / "run"


DATASETS = {"number": "5", "list": "[a, b]", "date": "2024-01-01", "mapping": "{x: 1}",
            "null": "null"}
EPOCHS = {"inf": "inf", "nan": "nan", "-inf": "-inf", "zero": "0", "half": "1.5"}


@pytest.fixture(scope="module")
def odd_folder(finished_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    shutil.copytree(finished_run, root / "ok")
    for case, value in DATASETS.items():
        run = root / f"dataset-{case}"
        shutil.copytree(finished_run, run)
        text = (run / "config.yaml").read_text()
        cfg = yaml.safe_load(text)
        text = text.replace(f"name: {cfg['data']['name']}", f"name: {value}", 1)
        (run / "config.yaml").write_text(text)
    run = root / "markup"
    shutil.copytree(finished_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(
        f"name: {cfg['data']['name']}", "name: '[/bold][red]x'", 1))
    for case, value in EPOCHS.items():
        run = root / f"epoch-{case}"
        shutil.copytree(finished_run, run)
        lines = (run / "metrics.csv").read_text().splitlines()
        first = lines[1].split(",")
        first[0] = value
        (run / "metrics.csv").write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    shutil.copytree(finished_run, root / "[/bold] odd name" / "run")
    return root


def test_odd_run_folders_are_listed_as_damaged(cnn, odd_folder):
    for sort in SORT_KEYS:
        COUNTS["hostile"] += 1
        result = cnn("runs", odd_folder, "--json", "--sort", sort)
        assert result.exit_code == 0, result.output
        rows = {r["name"]: r for r in json.loads(result.output)}
        for case in DATASETS:
            row = rows[f"dataset-{case}"]
            assert row["state"] == "damaged" and "data.name" in row["note"], row
        for case in EPOCHS:
            row = rows[f"epoch-{case}"]
            assert row["state"] == "damaged" and "epoch" in row["note"], row
        assert rows["markup"]["state"] == "damaged" and "[/bold][red]x" in rows["markup"]["note"]
        assert rows["ok"]["state"] == "finished"


def test_text_from_files_is_printed_as_text(cnn, odd_folder):
    for sort in SORT_KEYS:
        result = cnn("runs", odd_folder, "--sort", sort)
        assert result.exit_code == 0, result.output
        assert "data.name: must be one of" in result.output and "'[/bold][red]x'" in result.output
        assert "[/bold] odd name/run" in result.output
        assert "Traceback" not in result.output and "a bug in cnncli" not in result.output
