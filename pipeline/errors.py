"""Errors raised by the pipeline package: the whole tree, in one place.

Hierarchy::

    PipelineError                  root of everything pipeline raises
    ├── ConfigError                a sink/dashboard/history config value is wrong
    ├── StorageError               InfluxDB rejected or could not take a write/query
    │   ├── StorageUnavailable     ... for now (down, overloaded): retrying may succeed
    │   ├── PointsRejected         ... with a 400: at least one line can never be written
    │   └── SinkGaveUp             InfluxDB or Kafka stayed unreachable past give_up_after_s
    ├── RegistryError              the bundle registry is inconsistent or a version is missing
    ├── CommitFailed               Kafka refused an offset commit (rebalance): records re-read
    ├── TransportUnavailable       Kafka (the dead-letter producer) is unreachable for now
    ├── LineProtocolError          a tick cannot be written as line protocol (a bad name)
    └── RequestError               a dashboard API parameter is wrong (answered with 400)
"""

from __future__ import annotations

__all__ = [
    "CommitFailed",
    "ConfigError",
    "LineProtocolError",
    "PipelineError",
    "PointsRejected",
    "RegistryError",
    "RequestError",
    "SinkGaveUp",
    "StorageError",
    "StorageUnavailable",
    "TransportUnavailable",
]


class PipelineError(Exception):
    """Root of every error the pipeline package raises."""


class ConfigError(PipelineError):
    """A configuration value is invalid."""


class StorageError(PipelineError):
    """InfluxDB rejected a request or stayed unreachable after bounded retries."""


class StorageUnavailable(StorageError):
    """InfluxDB could not take the request now (down, overloaded); retrying may succeed."""


class PointsRejected(StorageError):
    """InfluxDB answered 400 to a write: at least one line can never be written."""


class SinkGaveUp(StorageError):
    """InfluxDB or Kafka stayed unreachable longer than ``give_up_after_s``."""


class RegistryError(PipelineError):
    """The model registry is inconsistent, or a requested version does not exist."""


class CommitFailed(PipelineError):
    """Kafka refused an offset commit (the group rebalanced); the records will be re-read."""


class TransportUnavailable(PipelineError):
    """Kafka (dead-letter producer) is unreachable for now; retrying may succeed."""


class LineProtocolError(PipelineError):
    """A tick cannot be expressed as line protocol (a name InfluxDB cannot hold).

    ``reason`` is the dead letter's label: ``unencodable``, ``bad_name`` (not UTF-8) or
    ``name_collision`` (channel ``x`` beside a channel ``x_imputed`` or ``x_sigma``).
    """

    def __init__(self, message: str, reason: str = "unencodable") -> None:
        super().__init__(message)
        self.reason = reason


class RequestError(PipelineError):
    """A request parameter is wrong; answered with HTTP 400 and this message."""
