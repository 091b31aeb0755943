"""The sink's health: is it consuming (Kafka) and writing (InfluxDB)? Pure; the clock is injected.

The parts of the sink report what they see, from whichever thread they run on:

- the consume loop calls :meth:`SinkHealth.polled` on every poll, and ``ok("kafka")`` /
  ``failed("kafka", error)`` when it asks the brokers for the partitions' end offsets (the
  consumer lag refresh, a few seconds apart) or publishes dead letters;
- the writer thread calls ``ok("influxdb")`` / ``failed("influxdb", error)`` after each write.

:meth:`SinkHealth.report` is what ``/healthz`` answers: healthy (200) when the consume loop polled
within ``stale_after_s``, Kafka answered (at least once, and its last answer was not a
failure) and InfluxDB is not failing now; else 503. InfluxDB counts as not failing until a
write fails (it is tried at start-up when the sink creates its database, and with each batch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "SinkHealth"]

TARGETS = ("kafka", "influxdb")


@dataclass
class _Target:
    last_ok: float | None = None
    failing_since: float | None = None
    error: str = ""
    failures: int = 0


class SinkHealth:
    """Thread-safe record of the sink's last successes and failures (see the module doc)."""

    def __init__(self, clock: Callable[[], float], stale_after_s: float = 60.0) -> None:
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._targets = {t: _Target() for t in TARGETS}
        self._last_poll: float | None = None
        self._started = clock()
        self.extra: dict[str, Any] = {}  # e.g. lag per partition, set by the consume loop

    def polled(self) -> None:
        self._last_poll = self._clock()

    def ok(self, target: str) -> None:
        with self._lock:
            t = self._targets[target]
            t.last_ok = self._clock()
            t.failing_since = None
            t.error = ""

    def failed(self, target: str, error: str) -> None:
        with self._lock:
            t = self._targets[target]
            if t.failing_since is None:
                t.failing_since = self._clock()
            t.error = error[:500]
            t.failures += 1

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)`` for ``/healthz``."""
        now = self._clock()
        since = self._last_poll if self._last_poll is not None else self._started
        loop_alive = now - since < self._stale_after_s
        detail: dict[str, Any] = {}
        with self._lock:
            for name, t in self._targets.items():
                detail[name] = {
                    "ok": t.failing_since is None,
                    "error": t.error,
                    "failing_for_s": None
                    if t.failing_since is None
                    else round(now - t.failing_since, 3),
                    "last_ok_age_s": None if t.last_ok is None else round(now - t.last_ok, 3),
                    "failures": t.failures,
                }
        kafka = self._targets["kafka"]
        consuming = loop_alive and kafka.last_ok is not None and bool(detail["kafka"]["ok"])
        writing = bool(detail["influxdb"]["ok"])
        detail.update(
            loop_alive=loop_alive,
            consuming=consuming,
            writing=writing,
            **self.extra,
        )
        return consuming and writing, detail
