"""systemd's service notification protocol (``sd_notify``) over a plain unix datagram socket.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``). The agent
sends ``READY=1`` once it runs, ``WATCHDOG=1`` at least every half interval while its loop is
alive, ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload and ``STOPPING=1`` on shutdown.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the agent runs the same way
from a shell. No dependency: the protocol is one ``sendto`` of ``KEY=VALUE`` lines.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "WatchdogPinger", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval systemd asks for, in seconds; None when there is no watchdog.

    ``$WATCHDOG_PID``, when set, must be this process (a child must not ping for its parent).
    """
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    want_pid = env.get("WATCHDOG_PID", "")
    if want_pid and want_pid != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("sdnotify.bad_watchdog_usec", extra={"value": raw})
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; silent (returns False) without one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()  # abstract namespace
        elif path.startswith("/"):
            self._address = path
        elif path:
            log.warning("sdnotify.bad_socket", extra={"value": path})
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if sent."""
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._sock is None:
                    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    self._sock = socket.socket(socket.AF_UNIX, kind)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failed:  # once: a watchdog ping fails every few seconds otherwise
                    log.warning("sdnotify.send_failed", extra={"error": str(exc)})
                self._failed = True
                return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload)
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class WatchdogPinger:
    """A thread that sends ``WATCHDOG=1`` every ``interval_s / 2`` while ``alive()`` is true.

    ``alive`` is the agent loop's own liveness (its heartbeat is fresh): a wedged loop stops the
    pings, systemd kills the agent after ``WatchdogSec=`` and ``Restart=`` brings it back.
    """

    def __init__(self, notifier: Notifier, interval_s: float, alive: Callable[[], bool]) -> None:
        self._notifier = notifier
        self._period = max(0.05, interval_s / 2)
        self._alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gapwatch-watchdog", daemon=True)
        self.sent = 0
        self.skipped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._period + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            if self._alive():
                if self._notifier.watchdog():
                    self.sent += 1
            else:
                self.skipped += 1
                if self.skipped == 1 or self.skipped % 10 == 0:
                    log.error("sdnotify.loop_stalled", extra={"skipped_pings": self.skipped})
