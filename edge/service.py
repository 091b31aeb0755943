"""The agent as a service: signals, SIGHUP reload, systemd readiness and watchdog.

:class:`ServiceControl` runs the agent (a ``run(config, control)`` callable) and owns what a
supervisor talks to:

* SIGTERM / SIGINT: stop for good (finish the open ticks, spool them, exit).
* SIGHUP: re-read the config. The new config is loaded and validated first; if it is bad the
  agent logs ``agent.reload_refused`` and keeps running on the old one. If it is good the running
  agent stops cleanly (exactly as for SIGTERM: nothing is lost, unacknowledged MQTT messages come
  back) and starts again in the same process with the new config. If that start fails (say the
  new bundle root is empty) it falls back to the previous config. A SIGHUP never leaves the
  agent down.
* systemd (``Type=notify``): ``READY=1`` once the agent takes messages, ``WATCHDOG=1`` while its
  loop is alive (:class:`edge.sdnotify.WatchdogPinger`), ``RELOADING=1`` on SIGHUP,
  ``STOPPING=1`` on the way out.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from edge.config import AgentConfig
from edge.errors import BundleError, ConfigError
from edge.sdnotify import Notifier, WatchdogPinger, watchdog_interval_s

__all__ = ["ServiceControl"]

log = logging.getLogger(__name__)

RunFn = Callable[[AgentConfig, "ServiceControl"], int]


class ServiceControl:
    """Signal handling and sd_notify around one or more runs of the agent (see module doc)."""

    def __init__(
        self,
        load: Callable[[], AgentConfig],
        *,
        notifier: Notifier | None = None,
        on_config: Callable[[AgentConfig], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        import os

        self._load = load
        self._env = dict(os.environ if env is None else env)
        self.notifier = notifier if notifier is not None else Notifier(self._env)
        self._on_config = on_config
        self.stop = threading.Event()
        self._pending: AgentConfig | None = None
        self._pinger: WatchdogPinger | None = None
        self.reloads = 0

    # -- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("agent.signal", extra={"signal": signal.Signals(signum).name})
        self._pending = None
        self.stop.set()

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        log.info("agent.signal", extra={"signal": "SIGHUP"})
        self.request_reload()

    def request_reload(self) -> bool:
        """Load and validate the config again; on success stop the current run to restart it."""
        if self.stop.is_set() and self._pending is None:
            return False  # already stopping for good
        try:
            config = self._load()
        except ConfigError as exc:
            log.error("agent.reload_refused", extra={"error": str(exc)})
            return False
        self.notifier.reloading()
        self._pending = config
        self.stop.set()
        return True

    # -- lifecycle, called by the run function ---------------------------------------------

    def started(self, alive: Callable[[], bool], status: str = "") -> None:
        """The agent is taking messages: READY=1 and, under a watchdog, start pinging."""
        self.notifier.ready(status)
        interval = watchdog_interval_s(self._env)
        if interval is not None and self._pinger is None:
            self._pinger = WatchdogPinger(self.notifier, interval, alive)
            self._pinger.start()
            log.info("agent.watchdog", extra={"interval_s": interval})

    def stopping(self) -> None:
        """The run is over: stop pinging; tell systemd unless this is a reload."""
        if self._pinger is not None:
            self._pinger.stop()
            self._pinger = None
        if self._pending is None:
            self.notifier.stopping()

    # -- the loop --------------------------------------------------------------------------

    def serve(self, config: AgentConfig, run: RunFn) -> int:
        """Run the agent, again after each accepted SIGHUP; return the final exit code."""
        self.install_signals()
        previous: AgentConfig | None = None
        while True:
            self.stop.clear()
            self._pending = None
            try:
                code = run(config, self)
            except (BundleError, ConfigError) as exc:
                if previous is None:
                    raise
                log.error("agent.reload_failed", extra={"error": str(exc)})
                config, previous = previous, None
                self._apply(config)
                continue
            if self._pending is None:
                return code
            previous, config = config, self._pending
            self.reloads += 1
            log.info("agent.reloading", extra={"reloads": self.reloads})
            self._apply(config)

    def _apply(self, config: AgentConfig) -> None:
        if self._on_config is not None:
            self._on_config(config)
