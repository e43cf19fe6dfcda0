"""The README keeps in step with the code: every layer type and every command is documented."""

import re

from typer.main import get_command

from cnncli.cli import app
from cnncli.layers import LAYERS
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_layer_table_matches_the_registry():
    section = README.split("Layers (`type:` in a config")[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M))
    assert documented == set(LAYERS)


def test_every_command_is_documented():
    group = get_command(app)
    names = set(group.commands)
    assert {"train", "eval", "generate-shapes", "summary", "gradcheck"} <= names
    for name in names:
        sub = group.commands[name]
        if hasattr(sub, "commands"):
            for inner in sub.commands:
                assert f"cnn {name} {inner}" in README, f"cnn {name} {inner}"
        else:
            assert f"`cnn {name}" in README, name


def test_readme_opens_with_the_two_commands():
    head = README[:800]
    assert "pip install . && cnn train configs/shapes.yaml" in head
    assert "pip install '.[test]' && pytest" in head
