"""gapwatch: fill gaps and flag anomalies in IoT sensor streams at the edge.

This tiny package only holds the ``gapwatch`` console script, which dispatches each
subcommand to the package that owns it (``edge``, ``training``, ``pipeline``) and imports
that package only when the subcommand runs, so an edge-only install never needs torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gapwatch")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
