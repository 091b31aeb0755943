"""Rate limiting for repeated warning and error log lines.

A broker that is down, a full disk or a sensor sending garbage can produce the same warning
hundreds of times a second; on a gateway that fills the journal (and the SD card under it).
:class:`RepeatFilter` lets the first line of each kind through, drops the repeats within
``window_s`` and counts them: the next line of that kind that passes carries
``suppressed=<count>``. A "kind" is the logger, the level, the event name (the message) and
the subject the line names (its ``path``, ``model``, ``device`` or ``topic`` field), so a
refused bundle version never hides the refusal of the next one.
Lines below WARNING, and lines that already carry their own ``suppressed`` count (the agent's
``agent.bad_input``, limited per reason), are never touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RepeatFilter"]

SUBJECT_FIELDS = ("path", "model", "device", "topic")


class RepeatFilter(logging.Filter):
    """Drop repeats of the same warning/error within ``window_s``; count what was dropped."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or "suppressed" in vars(record):
            return True
        fields = vars(record)
        subject = tuple(str(fields.get(f, "")) for f in SUBJECT_FIELDS)
        key = (record.name, record.levelno, str(record.msg), *subject)
        now = self._clock()
        with self._lock:
            last, count = self._seen.get(key, (-float("inf"), 0))
            if now - last < self.window_s:
                self._seen[key] = (last, count + 1)
                self.dropped += 1
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # event names are a fixed set; this only bounds memory
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window_s}
        if count:
            record.suppressed = count
        return True
