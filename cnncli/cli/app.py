"""The root Typer app, the consoles, the options several commands share (``--set``,
``--offline``, ``--storage``) and the one-line error handling every command shares.

Command modules (``cnncli.cli.train``, ``.evaluate``, ...) import this module and register
on ``app``; this module imports none of them, so no import runs back up. Only the ``cli``
package prints or exits; heavy modules load inside the commands.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption
from typing_extensions import Annotated

from cnncli import __version__
from cnncli.sweep.storage import STORAGE_ENV

HELP_OPTIONS = {"help_option_names": ["--help", "-h"]}  # -h is --help, in every command


def set_option(example: str, what: str = "config key", metavar: str | None = "KEY=VALUE"):
    """The type of ``--set KEY=VALUE`` (repeatable), its help showing ``example``."""
    return Annotated[Optional[List[str]], typer.Option(
        "--set", metavar=metavar, help=f"Override any {what}, e.g. --set {example} (repeatable).")]


OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never download datasets.")]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", metavar="URL", help=f"A database URL Optuna accepts, e.g. postgresql+psycopg://user@host/db "
                      f"(default: ${STORAGE_ENV}, else a study embedded in the sweep directory).",
    show_default=False)]


ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an output file that exists.")]
ConfigArg = Annotated[Path, typer.Argument(
    metavar="CONFIG", help="YAML config file.", show_default=False)]
CheckpointArg = Annotated[Path, typer.Argument(
    metavar="CHECKPOINT", help="A checkpoint .npz (a run's best.npz or last.npz).", show_default=False)]
ImagesArg = Annotated[List[Path], typer.Argument(
    metavar="PATH", help="Image files, folders (searched recursively) or .npz files of stored "
                         "images (array x or x_test).", show_default=False)]


def tta_option(tta: Optional[str]) -> Optional[str]:
    """The --tta value as cnncli.tta takes it: ``none`` is None; anything else not a mode
    exits 2 in one line."""
    from cnncli.tta import TTA_MODES

    if tta is None or tta == "none":
        return None
    if tta not in TTA_MODES:
        fail(f"--tta must be {', '.join(TTA_MODES)} or none, got {tta!r}", code=2)
    return tta


def refuse_existing(force: bool, *outputs: tuple[str, Optional[Path]]) -> None:
    """The one overwrite rule of every command that writes a file it is given (-o, --csv,
    --plot, --preview): an existing file is replaced only with --force; without it, one line
    naming the file and the option, exit 1. ``outputs``: (option, path or None) pairs. Folders
    (--run-dir, --sweep-dir, data export -o) are never replaced."""
    for option, path in outputs:
        if path is not None and not path.is_dir() and (path.exists() or path.is_symlink()) \
                and not force:
            fail(escape(f"{path}: exists; give --force to replace it, or another {option}"))


class PlainArgument(TyperArgument):
    """An argument shown in help as Click shows it, ``CHECKPOINT`` (its metavar, else its name in
    capitals), in the usage line and in the Arguments list; not ``{checkpoint}`` and
    ``checkpoint <path>``."""

    def _usage_display_name(self) -> str:
        name = self.metavar or self.name.upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    def _rich_display_name(self) -> str:
        return (self.metavar or self.name.upper()) + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx):
        return None


_CLICK_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN"}


class PlainOption(TyperOption):
    """An option whose value is shown as Click shows it, ``--epochs INTEGER`` (its metavar, else
    its type in capitals: INTEGER, FLOAT, TEXT, PATH); not ``<int range>`` or ``<list[str]>``."""

    def display_type_rich(self, ctx):
        if self.metavar is not None:
            return self.metavar
        label = self.display_type(ctx).strip("<>").removesuffix(" range")
        label = label.removeprefix("list[").removesuffix("]")
        return _CLICK_NAMES.get(label, "PATH" if label in ("path", "file", "directory") else label.upper())


class CnnGroup(TyperGroup):
    """The root group: gives every command's arguments and options the plain placeholders of
    PlainArgument and PlainOption, commands added later included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        todo = list(self.commands.values())
        while todo:
            command = todo.pop()
            todo.extend(getattr(command, "commands", {}).values())
            for param in command.params:
                if type(param) is TyperArgument:
                    param.__class__ = PlainArgument
                elif type(param) is TyperOption:
                    param.__class__ = PlainOption


app = typer.Typer(
    help="Train convolutional neural networks written from scratch in NumPy.\n\n"
         "Example: cnn train configs/shapes.yaml",
    cls=CnnGroup,
    context_settings=HELP_OPTIONS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

STATE = {"debug": False}


def console(stderr: bool = False, **kw):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, **kw)


def fail(message: str, code: int = 1):
    """One line on stderr, then exit."""
    err = console(stderr=True)
    err.print(f"[red]Error:[/red] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code=code)


@contextmanager
def cli_errors():
    """Turn cnncli's errors (and OS errors) into one line and exit code 1; --debug re-raises."""
    from cnncli.errors import CnnError

    try:
        yield
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader stopped early (cnn runs --json | head): not an error
        reader_gone()
    except CnnError as exc:
        if STATE["debug"]:
            raise
        fail(escape(with_option(exc)))
    except OSError as exc:
        if STATE["debug"]:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(escape(f"{where}{exc.strerror or exc}"))
    except MemoryError:
        if STATE["debug"]:
            raise
        fail("out of memory; try a smaller batch_size or network")
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if STATE["debug"]:
            raise
        fail(escape(f"unexpected {type(exc).__name__}: {exc} (a bug in cnncli; run with --debug "
                     "for the traceback)"))


def reader_gone():
    """The reader of stdout closed it (``cnn runs --json | head -c 10``): exit 0 quietly, as
    command-line tools do, with stdout pointed at /dev/null so that nothing left in its buffer
    fails again at exit (Python's signal docs, "Note on SIGPIPE")."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's stream)
        pass
    raise typer.Exit(code=0)


def main():
    """The console-script entry point: the app, with a reader that closes the pipe early
    (while printing or at the final flush) ending in exit 0 and nothing on stderr."""
    try:
        try:
            app()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        try:
            reader_gone()
        except typer.Exit:
            sys.exit(0)


OPTION_OF = {"override": "--set", "size": "--size", "channels": "--channels",
             "pixel_max": "--pixel-max", "input_scale": "--input-scale", "class_name": "--class"}
"""The command-line option that gives each library parameter a library error may be about."""


def with_option(exc) -> str:
    """An error's message as the user sees it: a problem with a value a library call was given
    (``cnncli.errors.about_value``) names the option that gave it."""
    from cnncli.errors import ConfigError

    option = OPTION_OF.get(getattr(exc, "param", None))
    if option is None:
        return str(exc)
    where = f"{option} {exc.shown}" if exc.shown else option
    if isinstance(exc, ConfigError):
        return str(ConfigError(exc.problem, where))
    return f"{where}: {exc.problem}" if exc.shown else f"{where} {exc.problem}"


_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def escape(text: str) -> str:
    """A message as one line of Rich-safe text (no line break of any kind, no markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text.translate(_LINE_BREAKS))


def _tolerant_streams():
    """Print what the terminal cannot encode (a non-ASCII path under an ASCII locale, a file name
    that is not valid UTF-8) as escapes instead of failing on it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _version(value: bool):
    if value:
        print(f"cnncli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
):
    """Train convolutional neural networks written from scratch in NumPy.

    Example: cnn train configs/shapes.yaml
    """
    STATE["debug"] = debug
    _tolerant_streams()



def load_checkpoint_network(path: Path):
    """``cnncli.checkpoint.load_network``, whose error says so when the file is a YAML config
    rather than a checkpoint (``cnn eval configs/shapes.yaml``) and names the command to run."""
    from cnncli.checkpoint import load_network
    from cnncli.errors import CheckpointError

    try:
        return load_network(path)
    except CheckpointError:
        if _is_yaml_config(path):
            raise CheckpointError(f"{path}: is a YAML config, not a checkpoint; train it first "
                                  f"(cnn train {path}), then give the run's best.npz or "
                                  "last.npz") from None
        raise


def _is_yaml_config(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix.lower() in (".yaml", ".yml"):
        return True
    from cnncli.config import read_config_file
    from cnncli.errors import CnnError

    try:
        return "network" in read_config_file(path)
    except CnnError:
        return False


_HEADER_BREAKS = "_.- "


def fit_table(table, out):
    """``table`` as ``out`` (a Console) should print it at its width: the title as a line of its
    own above it (wrapped between words at the console's width, not squeezed into the table's),
    and headers never cut: while the table cannot fit the console, the longest header is
    split in two lines after a ``_``, ``.``, ``-`` or space (``learning_`` / ``rate``), and every
    column is at least as wide as its header's longest word. Cells wrap as Rich wraps them."""
    from rich.console import Group
    from rich.measure import Measurement

    title, table.title = table.title, None

    def lines(header) -> list[str]:
        return str(header).split("\n") if isinstance(header, str) else []

    def width() -> int:  # the narrowest the table can be with every word whole
        return Measurement.get(out, out.options.update(width=10**4), table).minimum

    while width() > out.width:
        splittable = [(len(line), i, j) for i, col in enumerate(table.columns)
                      for j, line in enumerate(lines(col.header))
                      if any(c in line[1:-1] for c in _HEADER_BREAKS)]
        if not splittable:
            break
        _, i, j = max(splittable)
        parts = lines(table.columns[i].header)
        line = parts[j]
        cuts = [k + 1 for k, c in enumerate(line[:-1]) if c in _HEADER_BREAKS and k > 0]
        cut = min(cuts, key=lambda k: abs(len(line) - 2 * k))
        parts[j:j + 1] = [line[:cut].rstrip(), line[cut:]]
        table.columns[i].header = "\n".join(parts)
    for col in table.columns:  # Rich wraps a header between words; a word is never cut
        longest = max((len(word) for line in lines(col.header) for word in line.split()),
                      default=0)
        col.min_width = max(col.min_width or 0, longest)
    if title is None:
        return table
    return Group(out.render_str(title) if isinstance(title, str) else title, table)


def wrap_at_separators(name: str, width: int) -> str:
    """``name`` in lines of at most ``width``, broken after a ``/``, ``-`` or ``_`` where it
    can be (a part longer than a line is cut as Rich folds it)."""
    import re

    lines, line = [], ""
    for part in re.findall(r"[^/_-]*[/_-]?", name):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(ln for ln in lines if ln)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"
