"""The CLI package's shape: one module per command group, none importing back up."""

import ast
from pathlib import Path

import cnncli.cli

CLI_DIR = Path(cnncli.cli.__file__).parent


def _cli_imports(path: Path) -> set[str]:
    """The cnncli.cli modules a file imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnncli.cli"):
            if node.module == "cnncli.cli":
                found.update(f"cnncli.cli.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cnncli.cli"))
    return found


def test_command_modules_import_only_the_app_module():
    for path in sorted(CLI_DIR.glob("*.py")):
        if path.name == "__init__.py":
            continue
        imports = _cli_imports(path)
        allowed = set() if path.name == "app.py" else {"cnncli.cli.app"}
        assert imports <= allowed, f"{path.name} imports {sorted(imports - allowed)}"


def test_no_import_cycle_in_the_cli_package():
    graph = {f"cnncli.cli.{p.stem}" if p.stem != "__init__" else "cnncli.cli": _cli_imports(p)
             for p in CLI_DIR.glob("*.py")}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, seen + (n,)))
                   for n in graph.get(start, ()))

    cyclic = [m for m in graph if reaches(m, m)]
    assert not cyclic, f"import cycle through {cyclic}"


def test_every_command_module_is_registered():
    names = {c.name or c.callback.__name__ for c in cnncli.cli.app.registered_commands}
    assert {"train", "eval", "generate-shapes", "summary", "gradcheck", "plot", "show-kernels"} <= names
