"""``python -m pipeline``: this package's commands (``gapwatch`` has them all)."""

from edge.cli.dispatch import dispatch
from pipeline.cli import COMMANDS

raise SystemExit(dispatch("python -m pipeline", COMMANDS))
