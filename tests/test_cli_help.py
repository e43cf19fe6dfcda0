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
