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


def _declared_commands(path: Path) -> set[str]:
    """The functions a file declares as commands: decorated ``@<some app>.command(...)``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                f = d.func if isinstance(d, ast.Call) else d
                if isinstance(f, ast.Attribute) and f.attr == "command":
                    names.add(node.name)
    return names


def _registered_callbacks(typer_app):
    """Every command callback reachable from ``typer_app``: its own commands and those of its
    sub-apps (``cnn data ...``, ``cnn sweep ...``)."""
    for command in typer_app.registered_commands:
        yield command.callback
    for group in typer_app.registered_groups:
        yield from _registered_callbacks(group.typer_instance)


def test_every_command_module_is_registered():
    """Each module of cnncli/cli/ other than app.py and __init__.py that declares commands is
    imported by the package, so every command it declares is registered in the app, and no
    command comes from anywhere else."""
    declared = {f"cnncli.cli.{p.stem}": _declared_commands(p) for p in sorted(CLI_DIR.glob("*.py"))
                if p.stem not in ("__init__", "app")}
    command_modules = {module for module, names in declared.items() if names}
    registered: dict[str, set[str]] = {}
    for callback in _registered_callbacks(cnncli.cli.app):
        registered.setdefault(callback.__module__, set()).add(callback.__name__)
    assert set(registered) == command_modules, (
        f"not registered: {sorted(command_modules - set(registered))}; "
        f"registered from elsewhere: {sorted(set(registered) - command_modules)}")
    assert registered == {module: declared[module] for module in command_modules}
    names = {c.name or c.callback.__name__ for c in cnncli.cli.app.registered_commands}
    assert {"train", "eval", "generate-shapes", "summary", "gradcheck", "plot", "show-kernels"} <= names
