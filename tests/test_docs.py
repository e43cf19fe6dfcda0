"""The documentation keeps in step with the code: every layer type, command, option and config
key is documented in docs/ (or the README), the README stays a short front page, every
relative link resolves, and the MkDocs site builds without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from typer.main import get_command

from cnncli.cli import app
from cnncli.config import (EARLY_STOPPING_FIELDS, LOSS_FIELDS, OPTIMIZER_FIELDS, SCHEDULE_FIELDS,
                           SECTIONS, TRAINING_FIELDS)
from cnncli.data import COMMON_FIELDS, DATASETS
from cnncli.data.augment import FIELDS as AUGMENT_FIELDS
from cnncli.layers import LAYERS
from cnncli.sweep.spec import KEYS as SWEEP_KEYS, RANGE_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = {path.name: path.read_text(encoding="utf-8") for path in sorted(DOCS.glob("*.md"))}
ALL_TEXT = README + "\n".join(PAGES.values())
COMMANDS_PAGE = PAGES["commands.md"]
CONFIGS_PAGE = PAGES["configs.md"]

# Keys a layer's constructor takes that a config never writes: inferred from the previous layer.
INFERRED_LAYER_KEYS = {"in_channels", "in_features", "num_features"}


def section(text: str, heading: str) -> str:
    """The text under the Markdown heading line ``heading`` up to the next heading of the same
    or a higher level."""
    lines = text.splitlines()
    assert heading in lines, f"no heading {heading!r}"
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out)


def commands():
    """(full name such as ``cnn sweep run``, click command) for the root and every command and
    sub-command, walking the Typer/Click tree."""
    root = get_command(app)
    todo = [("cnn", root)]
    while todo:
        name, command = todo.pop(0)
        yield name, command
        for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
            todo.append((f"{name} {sub_name}", sub))


# --- layers ---------------------------------------------------------------------------------


def test_layer_table_matches_the_registry():
    table = section(CONFIGS_PAGE, "### `network`: the layers")
    rows = dict(re.findall(r"^\| `([a-z0-9_]+)` \|([^\n]*)$", table, flags=re.M))
    assert set(rows) == set(LAYERS)
    for name, cls in LAYERS.items():
        for key in cls.spec_keys():
            if key in INFERRED_LAYER_KEYS:
                assert f"`{key}`" in table, f"{name}: the inferred key {key} is not mentioned"
            else:
                assert f"`{key}`" in rows[name], f"layer {name}: key {key} is not in its row"


# --- commands and options -------------------------------------------------------------------


def test_every_command_and_sub_command_has_a_section():
    names = [name for name, _ in commands()]
    assert {"cnn train", "cnn eval", "cnn generate-shapes", "cnn summary", "cnn gradcheck",
            "cnn sweep run", "cnn data export"} <= set(names)
    for name in names:
        assert re.search(rf"^#+ `{re.escape(name)}`$", COMMANDS_PAGE, flags=re.M), \
            f"docs/commands.md has no section for {name}"


def test_every_command_is_in_the_overview_table():
    for name, command in commands():
        if name != "cnn" and not hasattr(command, "commands"):
            assert re.search(rf"^\| `{re.escape(name)}[ `]", COMMANDS_PAGE, flags=re.M), name


def test_every_option_is_documented_in_its_command_section():
    missing = []
    for name, command in commands():
        heading = next(line for line in COMMANDS_PAGE.splitlines()
                       if re.fullmatch(rf"#+ `{re.escape(name)}`", line))
        text = section(COMMANDS_PAGE, heading)
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and not re.search(rf"`{re.escape(opt)}[ `]", text):
                    missing.append(f"{name} {opt}")
    assert not missing, f"options not documented in docs/commands.md: {missing}"


# --- config keys ----------------------------------------------------------------------------


def config_keys() -> set[str]:
    """Every dotted config key the validator knows."""
    keys = set(SECTIONS)
    keys |= {"data.name"} | {f"data.{k}" for k in COMMON_FIELDS}
    for dataset in DATASETS.values():
        keys |= {f"data.{k}" for k in dataset.fields}
    keys |= {f"data.augment.{k}" for k in AUGMENT_FIELDS}
    keys |= {f"training.{k}" for k in TRAINING_FIELDS}
    keys |= {"training.optimizer.name", "training.optimizer.learning_rate"}
    for fields in OPTIMIZER_FIELDS.values():
        keys |= {f"training.optimizer.{k}" for k in fields}
    keys |= {"training.schedule.name"}
    for fields in SCHEDULE_FIELDS.values():
        keys |= {f"training.schedule.{k}" for k in fields}
    keys |= {f"training.early_stopping.{k}" for k in EARLY_STOPPING_FIELDS}
    keys |= {f"training.loss.{k}" for k in LOSS_FIELDS}
    return keys


def test_every_config_key_is_in_the_key_tables():
    keys = config_keys()
    assert {"seed", "data.path", "training.threads", "training.optimizer.momentum"} <= keys
    missing = sorted(k for k in keys if not re.search(rf"^\| `{re.escape(k)}` \|", CONFIGS_PAGE,
                                                        flags=re.M))
    assert not missing, f"config keys without a row in docs/configs.md: {missing}"


def test_every_dataset_is_documented():
    for name in DATASETS:
        assert f"`{name}`" in section(CONFIGS_PAGE, "### `data`"), name


def test_every_sweep_key_is_documented():
    sweeps = PAGES["sweeps.md"]
    for key in (*SWEEP_KEYS, *RANGE_KEYS, "choices"):
        assert re.search(rf"^\| `{key}`", sweeps, flags=re.M) or \
            re.search(rf"^\| [^|]*`{key}`[^|]*\|", sweeps, flags=re.M), key


# --- the README -----------------------------------------------------------------------------


def test_readme_is_a_short_front_page():
    assert len(README.splitlines()) <= 250


def test_readme_opens_with_the_two_commands():
    head = README[:800]
    assert "pip install . && cnn train configs/shapes.yaml" in head
    assert "pip install '.[test]' && pytest" in head


def test_no_machine_paths_and_no_diary():
    patterns = [r"/work/", r"/tmp/cirun", r"\bthis session\b", r"\bsession \d", r"load average (of )?\d",
                r"re-measured", r"/home/\w+"]
    for name, text in [("README.md", README), *PAGES.items()]:
        for pattern in patterns:
            m = re.search(pattern, text, flags=re.I)
            assert m is None, f"{name}: {m.group(0)!r} near {text[max(0, m.start() - 60):m.end() + 60]!r}"


# --- links ----------------------------------------------------------------------------------


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code removed."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+?)\s*$", text, flags=re.M)}


def links(path: Path):
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)\)", without_code(path.read_text(encoding="utf-8"))):
        yield m.group(1)


@pytest.mark.parametrize("path", [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
                                  *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{anchor}")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_every_page_is_in_the_nav():
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in PAGES:
        assert re.search(rf":\s*{re.escape(name)}\s*$", mkdocs_yml, flags=re.M), name


# --- the site -------------------------------------------------------------------------------


def test_mkdocs_builds_the_site_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configs" / "index.html").is_file()


# --- code blocks that claim to run, and listings of shipped files --------------------------

ILLUSTRATION = "# illustration"


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


DOC_FILES = {"README.md": README, **{f"docs/{name}": text for name, text in PAGES.items()}}
PYTHON_PAGES = [name for name, text in DOC_FILES.items() if fenced(text, "python")]


@pytest.fixture(scope="module")
def first_session(tmp_path_factory):
    """A folder where the README's first session ran (shapes.npz, runs/shapes/) and onnx.md's
    export (model.onnx): what the Python blocks of the docs start from."""
    folder = tmp_path_factory.mktemp("reader")
    (folder / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    for args in (["generate-shapes", "-o", "shapes.npz"],
                 ["train", "configs/shapes.yaml", "--run-dir", "runs/shapes", "-q"],
                 ["export", "runs/shapes/best.npz", "-o", "model.onnx", "-q"]):
        done = subprocess.run([sys.executable, "-m", "cnncli", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return folder


def test_the_docs_have_python_blocks_to_run():
    assert {"README.md", "docs/api.md", "docs/onnx.md"} <= set(PYTHON_PAGES)


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_every_python_block_runs_as_written(page, first_session, monkeypatch, capsys):
    """Each page's ```python blocks run in order in one namespace, as a reader pastes them into
    one session, in a folder where the README's first session ran; a block whose first line is
    ``# illustration ...`` is only read (development.md says so)."""
    monkeypatch.chdir(first_session)
    namespace, ran = {"__name__": "__main__"}, 0
    for i, block in enumerate(fenced(DOC_FILES[page], "python"), 1):
        if block.startswith(ILLUSTRATION):
            continue
        exec(compile(block, f"{page}, python block {i}", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran, f"{page}: no python block ran"
    capsys.readouterr()


def listings():
    """(doc, shipped path, how, block) for every code block whose first line names a shipped
    file: ``# configs/x.yaml`` (the file, exactly) or ``# configs/x.yaml, <words>`` (the same
    YAML data, e.g. annotated or in short)."""
    for name, text in DOC_FILES.items():
        for block in re.findall(r"^```\w*\n(.*?)^```", text, flags=re.M | re.S):
            m = re.match(r"# ([\w./-]+\.(?:yaml|yml|py|toml))(,[^\n]*)?\n", block)
            if m and (ROOT / m.group(1)).is_file():
                yield name, m.group(1), "data" if m.group(2) else "text", block[m.end():]


def test_listings_of_shipped_files_match_the_files():
    import yaml

    found = list(listings())
    assert {(doc, path) for doc, path, _, _ in found} >= {
        ("docs/sweeps.md", "configs/sweeps/shapes-lr.yaml"), ("README.md", "configs/shapes.yaml"),
        ("docs/configs.md", "configs/shapes.yaml")}
    for doc, path, how, block in found:
        shipped = (ROOT / path).read_text(encoding="utf-8")
        if how == "text":
            assert block == shipped, f"{doc}: its listing of {path} differs from the file"
        else:
            assert yaml.safe_load(block) == yaml.safe_load(shipped), \
                f"{doc}: its {path} has other keys or values than the file"
