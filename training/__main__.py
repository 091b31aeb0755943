"""``python -m training``: this package's commands (``gapwatch`` has them all)."""

from edge.cli.dispatch import dispatch
from training.cli import COMMANDS

raise SystemExit(dispatch("python -m training", COMMANDS))
