"""Errors raised by the demo and the end-to-end benchmark (``gapwatch demo``, ``bench e2e``).

Hierarchy::

    DemoError                root of everything the demo raises
    ├── DataNotFound         the replay files are missing (says how to point at your own CSV)
    ├── BundleNotFound       no model bundle to score with (offline mode cannot train)
    ├── ServiceDown          a stack service or a process the demo started is not answering
    └── DemoTimeout          scored ticks did not reach InfluxDB in time

Errors of the packages underneath (``EdgeError``, ``PipelineError``, ``TrainingError``) are
re-raised as one of these with ``raise ... from exc``, so the CLI has one thing to catch.
"""

from __future__ import annotations

__all__ = ["BundleNotFound", "DataNotFound", "DemoError", "DemoTimeout", "ServiceDown"]


class DemoError(Exception):
    """Root of every error the demo and the end-to-end benchmark raise."""


class DataNotFound(DemoError):
    """The files to replay are not there."""


class BundleNotFound(DemoError):
    """No usable model bundle."""


class ServiceDown(DemoError):
    """Mosquitto, Kafka, InfluxDB, or a process the demo started, is not answering."""


class DemoTimeout(DemoError):
    """Something the demo waits for did not happen in time."""
