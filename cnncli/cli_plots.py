"""Picture commands: ``cnn plot`` and ``cnn show-kernels`` (registered on the main app by cli.py)."""

from __future__ import annotations

from cnncli.cli import app  # noqa: F401
