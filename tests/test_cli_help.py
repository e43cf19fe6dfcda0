"""Help: plain placeholders (no ``<path>`` or ``list[str]``), ``-h`` as well as ``--help`` on
every command, and the option names every command shares (``-o, --out FILE``, ``-q``)."""

from cnncli.cli import app


def all_commands():
    import typer

    group = typer.main.get_command(app)
    todo, out = [((), group)], []
    while todo:
        path, cmd = todo.pop()
        if hasattr(cmd, "commands"):
            todo.extend(((*path, name), sub) for name, sub in cmd.commands.items())
        else:
            out.append(path)
    return sorted(out)


def test_help_shows_plain_placeholders_and_h_works_everywhere(cnn):
    commands = all_commands()
    assert ("eval",) in commands and ("data", "download") in commands
    for path in [(), ("data",), *commands]:
        long, short = cnn(*path, "--help"), cnn(*path, "-h")
        assert long.exit_code == short.exit_code == 0, (path, short.output)
        assert long.output == short.output
        text = long.output
        usage = text.splitlines()[0]
        assert usage.startswith("Usage: ") and "{" not in usage and "<" not in usage, usage
        for bad in ("<path>", "<int", "<float", "<str>", "list[str]", "<list"):
            assert bad not in text, (path, bad, text)
        assert "-h, --help" in text
    assert cnn("eval", "-h").output.splitlines()[0].endswith(" eval [OPTIONS] CHECKPOINT")
    for path in [("train",), ("gradcheck",), ("summary",)]:
        assert "--set KEY=VALUE" in cnn(*path, "-h").output
    assert "--epochs INTEGER" in cnn("train", "-h").output


def test_the_one_file_a_command_writes_is_o_out(cnn):
    for command in ["plot", "show-kernels", "generate-shapes"]:
        assert "-o, --out FILE" in cnn(command, "-h").output, command
    assert "-q, --quiet" in cnn("train", "-h").output
    assert "--plot FILE" in cnn("eval", "-h").output


def options():
    """(command path, click option) for every option of every command, walking the Click tree."""
    import typer

    for path in all_commands():
        command = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                yield path, param


def placeholder(path, option) -> str:
    """The placeholder help shows after the option, e.g. FILE in ``-o, --out FILE``."""
    import typer

    return option.display_type_rich(typer.Context(typer.main.get_command(app)))


def test_files_folders_set_and_fixed_choices_show_one_placeholder_each():
    import typer

    seen = {}
    for path, option in options():
        if option.is_flag:
            continue
        shown = placeholder(path, option)
        seen[(path, option.opts[0])] = shown
        kind = option.display_type(typer.Context(typer.main.get_command(app))).strip("<>")
        if kind in ("path", "file", "directory"):  # a pathlib.Path parameter
            assert shown in ("FILE", "DIR"), (path, option.opts, shown)
        assert shown not in ("TEXT", "PATH"), (path, option.opts, shown)  # say what it takes
        if "--set" in option.opts:
            assert shown == "KEY=VALUE", (path, shown)
    assert seen[(("sweep", "run"), "--storage")] == "URL"
    assert seen[(("sweep", "show"), "--study")] == "NAME"
    assert seen[(("data", "preview"), "--set")] == "KEY=VALUE"
    assert seen[(("train",), "--resume")] == "DIR" and seen[(("train",), "--init-from")] == "FILE"
    assert seen[(("data", "export"), "--out")] == "DIR"


FIXED = {(("runs",), "--sort"): [], (("eval",), "--split"): ["x.npz"],
         (("eval",), "--tta"): ["x.npz"], (("predict",), "--tta"): ["x.npz", "y.png"],
         (("explain",), "--method"): ["x.npz", "y.png"], (("gradcheck",), "--impl"): ["c.yaml"]}


def test_every_option_with_a_fixed_set_lists_its_choices(cnn, tmp_path):
    """The choices in the help are exactly those a wrong value's error names."""
    import re

    listed = {(path, option.opts[0]): placeholder(path, option).split("|")
              for path, option in options() if "|" in placeholder(path, option)}
    assert set(listed) == set(FIXED)
    for (path, opt), choices in listed.items():
        result = cnn(*path, *FIXED[path, opt], opt, "bogus")
        assert result.exit_code == 2 and "must be" in result.stderr, (path, result.output)
        named = re.findall(r"\b[a-z_]+\b", result.stderr.split("must be")[1].split("got")[0])
        assert set(named) - {"or", "of", "one"} == set(choices), (path, result.stderr)


OUTPUT_OPTIONS = ("--out", "--csv", "--plot", "--preview")


def test_one_overwrite_rule_for_every_output_file(cnn, finished_run, tmp_path):
    """Walking the command tree: every option that names a file to write (-o/--out FILE, --csv,
    --plot, --preview) refuses an existing file without --force, before any work, with one
    line naming the file and the option; with --force the file is replaced."""
    import numpy as np

    from conftest import ROOT

    best = finished_run / "best.npz"
    images = tmp_path / "x.npz"
    np.savez(images, x=np.random.default_rng(0).random((4, 3, 3)))
    shapes = ROOT / "configs" / "shapes.yaml"
    args = {("eval",): [best], ("predict",): [best, images], ("explain",): [best, images],
            ("generate-shapes",): [], ("plot",): [finished_run], ("show-kernels",): [best],
            ("export",): [best], ("data", "preview"): [shapes],
            ("lr-find",): [shapes, "--steps", "5"]}
    outputs = [(path, option.opts) for path, option in options()
               if set(option.opts) & set(OUTPUT_OPTIONS) and placeholder(path, option) == "FILE"]
    assert {path for path, _ in outputs} == set(args), "a command that writes a file is missing"
    for path, opts in outputs:
        names = [o.opts[0] for p, o in options() if p == path]
        assert "--force" in names, path
        opt = next(o for o in opts if o.startswith("--"))
        target = tmp_path / f"{'-'.join(path)}{opt}.{'csv' if opt == '--csv' else 'npz' if path == ('generate-shapes',) and opt == '--out' else 'onnx' if path == ('export',) else 'png'}"
        target.write_bytes(b"kept")
        if path == ("generate-shapes",) and opt != "--out":  # not the default ./shapes.npz
            (tmp_path / "other.npz").unlink(missing_ok=True)
            args[path] = ["-o", tmp_path / "other.npz"]
        result = cnn(*path, *args[path], opt, target)
        assert result.exit_code == 1, (path, opt, result.output)
        assert result.stderr.strip() == (f"Error: {target}: exists; give --force to replace it, "
                                         f"or another {opt}"), (path, result.stderr)
        assert target.read_bytes() == b"kept"
        if path == ("generate-shapes",):
            (tmp_path / "other.npz").unlink(missing_ok=True)
        result = cnn(*path, *args[path], opt, target, "--force")
        assert result.exit_code == 0, (path, opt, result.output)
        assert target.read_bytes() != b"kept", (path, opt)
