"""``python -m cnncli`` runs the command-line tool."""

from cnncli.cli import main

main()
