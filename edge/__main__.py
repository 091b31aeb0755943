"""``python -m edge``: this package's commands (``gapwatch`` has them all)."""

from edge.cli import COMMANDS
from edge.cli.dispatch import dispatch

raise SystemExit(dispatch("python -m edge", COMMANDS))
