"""Errors raised by the pipeline package.

Hierarchy::

    PipelineError               root of everything pipeline raises
    ├── ConfigError             a sink/dashboard config value is wrong
    ├── StorageError            InfluxDB rejected or could not take a write/query
    └── RegistryError           the bundle registry is inconsistent or a version is missing
"""

from __future__ import annotations

__all__ = ["ConfigError", "PipelineError", "RegistryError", "StorageError"]


class PipelineError(Exception):
    """Root of every error the pipeline package raises."""


class ConfigError(PipelineError):
    """A configuration value is invalid."""


class StorageError(PipelineError):
    """InfluxDB rejected a request or stayed unreachable after bounded retries."""


class RegistryError(PipelineError):
    """The model registry is inconsistent, or a requested version does not exist."""
