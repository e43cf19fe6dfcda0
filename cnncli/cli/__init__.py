"""The ``cnn`` command: a Typer app (``app.py``) and one module per command group.

Importing this package registers every command on ``app``; ``main`` is the console-script
entry point.
"""

from cnncli.cli import train, evaluate, predict, explain, data, model, plots, export, sweep, runs  # noqa: F401,I001  (registers commands, in help order)
from cnncli.cli import lrfind  # noqa: F401,E402  (registers cnn lr-find)
from cnncli.cli.app import app, main


__all__ = ["app", "main"]
