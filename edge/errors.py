"""Errors raised by the edge package.

Hierarchy::

    EdgeError                    root of everything edge raises
    ├── BundleError              a model bundle is unusable (one error lists every problem)
    ├── SchemaError              a scored-tick or dead-letter record does not decode
    ├── ConfigError              an agent config value is wrong (names the field and the fix)
    ├── PayloadError             one MQTT payload is bad (carries a stable ``reason``)
    ├── SpoolError               the local disk spool cannot store or read records
    │   └── SpoolDiskFull        ... because its disk is full (transient: intake pauses)
    ├── InputError               data given to the scorer does not fit the bundle (names what)
    ├── DeliveryRefused          Kafka refused one record for good (too large, invalid topic):
    │                            retrying cannot help, so it is quarantined (``reason``)
    └── TransportError           MQTT or Kafka is unreachable after bounded retries
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ConfigError",
    "EdgeError",
    "InputError",
    "PayloadError",
    "SchemaError",
    "SpoolDiskFull",
    "SpoolError",
    "TransportError",
]


class EdgeError(Exception):
    """Root of every error the edge package raises."""


class BundleError(EdgeError):
    """A model bundle failed validation; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        joined = "\n  - ".join(self.problems)
        super().__init__(f"bad model bundle {path}:\n  - {joined}")


class SchemaError(EdgeError):
    """A record does not match the versioned message schema.

    ``reason`` is the stable dead-letter label: ``not_json`` (not JSON or not UTF-8),
    ``bad_name`` (a name that is not encodable as UTF-8) or ``bad_schema`` (anything else).
    """

    def __init__(self, message: str, reason: str = "bad_schema") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(EdgeError):
    """A configuration value is invalid."""


class PayloadError(EdgeError):
    """A sensor payload could not be accepted; ``reason`` is a stable, countable label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class SpoolError(EdgeError):
    """The disk spool failed (disk full, corrupt database)."""


class SpoolDiskFull(SpoolError):
    """The spool's disk (or quota) is full: nothing more can be stored until space frees."""


class DeliveryRefused(EdgeError):
    """Kafka refused this one record, and would refuse it again: ``reason`` is a stable label.

    Not a :class:`TransportError`: the broker is there, the record is the problem. The
    forwarder quarantines such a record instead of retrying it, so it never blocks the queue.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TransportError(EdgeError):
    """A broker (MQTT or Kafka) could not be reached after bounded retries."""


class InputError(EdgeError):
    """Data given to the scorer (a tick, a series, a file) does not fit the bundle."""
