"""Alarm events to an Alertmanager-compatible webhook, off the scoring thread.

:meth:`WebhookNotifier.on_tick` is the agent's alarm hook: it runs the pure
:class:`~edge.alerts.AlarmTracker` and puts each open/close event on a bounded queue without
ever blocking (a full queue drops the event and counts it). A background thread drains the
queue: it POSTs the waiting events as one JSON list (``edge.alerts.alertmanager_alert``),
retrying connection errors, 5xx, 408 and 429 ``retries`` times with exponential backoff
(``backoff_s`` doubled per try, capped at ``max_backoff_s``); another 4xx is final. Open alarms
are re-sent every ``resend_s`` while they last, as Alertmanager expects of its clients (it
resolves an alert that is not re-sent within its ``resolve_timeout``).

Counted in ``gapwatch_agent_alerts_total{outcome}``: ``sent`` (delivered, re-sends included),
``failed`` (retries exhausted or refused), ``dropped`` (queue full). ``webhook.retry``,
``webhook.failed`` and ``webhook.dropped`` are logged at most once per 10 s each, the next line
carrying ``suppressed=<count>`` of the ones left out (a dead receiver under an alarm storm
must not flood the journal).

The HTTP call goes through :class:`Transport` (stdlib ``urllib`` by default), so tests can
count attempts without a network.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edge.alerts import AlarmEvent, AlarmTracker, AlertLabels, Scored, alertmanager_alert
from edge.config import AlertsConfig

__all__ = [
    "RetryPolicy",
    "Transport",
    "UrllibTransport",
    "WebhookNotifier",
    "describe",
    "is_retryable",
]

log = logging.getLogger(__name__)
_BATCH_MAX = 64
_LOG_EVERY_S = 10.0


class Transport(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST ``body``; return the HTTP status. Raise OSError when no answer came."""


class UrllibTransport:
    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.read()
            return int(exc.code)


def is_retryable(status: int | None) -> bool:
    """None (no answer), 5xx, 408 and 429 are worth another try; other statuses are final."""
    return status is None or status >= 500 or status in {408, 429}


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def delays(self) -> list[float]:
        """The waits before each retry: ``backoff_s * 2**i`` capped at ``max_backoff_s``."""
        return [min(self.backoff_s * 2**i, self.max_backoff_s) for i in range(self.retries)]


class WebhookNotifier:
    """The alarm hook plus its delivery thread (see the module docstring)."""

    def __init__(
        self,
        config: AlertsConfig,
        *,
        env: Mapping[str, str],
        on_outcome: Callable[[str, int], None] | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._labels = AlertLabels(config.alertname, config.severity, config.generator_url)
        self._retry = RetryPolicy(config.retries, config.backoff_s, config.max_backoff_s)
        self._headers = {"Content-Type": "application/json", "User-Agent": "gapwatch-agent"}
        if config.auth_env:
            token = env.get(config.auth_env, "")
            if token:
                self._headers[config.auth_header] = token
            else:
                log.warning("webhook.auth_env_unset", extra={"env": config.auth_env})
        self._tracker = AlarmTracker(config.top_channels)
        self._queue: queue.Queue[AlarmEvent] = queue.Queue(config.queue_max)
        self._outcome = on_outcome or (lambda outcome, n: None)
        self._transport = transport or UrllibTransport()
        self._clock = clock
        self._open: dict[str, AlarmEvent] = {}  # owned by the delivery thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: dict[str, tuple[float, int]] = {}  # event -> (last logged, suppressed)
        self._log_lock = threading.Lock()
        self.sent = self.failed = self.dropped = 0

    def _warn(self, event: str, extra: dict[str, Any]) -> None:
        """``log.warning`` at most once per ``_LOG_EVERY_S`` per event, counting the rest."""
        now = self._clock()
        with self._log_lock:
            last, suppressed = self._logged.get(event, (-_LOG_EVERY_S, 0))
            if now - last < _LOG_EVERY_S:
                self._logged[event] = (last, suppressed + 1)
                return
            self._logged[event] = (now, 0)
        log.warning(event, extra={**extra, "suppressed": suppressed})

    # -- the scoring side: never blocks ------------------------------------------------------

    def on_tick(self, site: str, device: str, model: str, version: str, out: Scored) -> None:
        event = self._tracker.observe(site, device, model, version, out)
        if event is not None:
            self.submit(event)

    def submit(self, event: AlarmEvent) -> bool:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            self._outcome("dropped", 1)
            self._warn(
                "webhook.dropped",
                {"alarm": event.key, "kind": event.kind, "queue_max": self._cfg.queue_max},
            )
            return False
        return True

    # -- the delivery thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gapwatch-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (one try each, within ``timeout_s``), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        last_resend = self._clock()
        while not self._stop.is_set():
            resend = self._cfg.resend_s
            wait = 0.5 if not resend else max(0.0, min(0.5, last_resend + resend - self._clock()))
            batch = self._take(wait)
            if batch:
                self.deliver(batch)
            if resend and self._open and self._clock() - last_resend >= resend:
                last_resend = self._clock()
                self.deliver(list(self._open.values()), resend=True)
            elif resend and not self._open:
                last_resend = self._clock()
        rest = self._take(0.0)
        if rest:
            self.deliver(rest, final=True)

    def _take(self, wait_s: float) -> list[AlarmEvent]:
        out: list[AlarmEvent] = []
        try:
            out.append(self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait())
            while len(out) < _BATCH_MAX:
                out.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return out

    def deliver(
        self, events: list[AlarmEvent], *, resend: bool = False, final: bool = False
    ) -> bool:
        """POST ``events`` as one list, with retries; count and log the outcome."""
        if not resend:
            for ev in events:
                if ev.kind == "open":
                    self._open[ev.key] = ev
                else:
                    self._open.pop(ev.key, None)
        body = json.dumps([alertmanager_alert(ev, self._labels) for ev in events]).encode()
        delays = [] if final else self._retry.delays()
        status: int | None = None
        error = ""
        for attempt in range(len(delays) + 1):
            status, error = self._post(body)
            if status is not None and 200 <= status < 300:
                self.sent += len(events)
                self._outcome("sent", len(events))
                if attempt:
                    log.info("webhook.recovered", extra={"attempts": attempt + 1})
                return True
            if not is_retryable(status) or attempt == len(delays) or self._stop.is_set():
                break
            self._warn(
                "webhook.retry", {"status": status, "error": error, "backoff_s": delays[attempt]}
            )
            if self._stop.wait(delays[attempt]):
                break
        self.failed += len(events)
        self._outcome("failed", len(events))
        self._warn(
            "webhook.failed",
            {"alerts": len(events), "status": status, "error": error, "resend": resend},
        )
        return False

    def _post(self, body: bytes) -> tuple[int | None, str]:
        try:
            status = self._transport.post(self._cfg.url, body, self._headers, self._cfg.timeout_s)
        except (OSError, ValueError) as exc:  # ValueError: http.client's bad status line
            return None, f"{type(exc).__name__}: {exc}"
        return status, "" if 200 <= status < 300 else f"HTTP {status}"


def describe(config: AlertsConfig) -> dict[str, Any]:
    """The webhook settings for a log line: no secrets (user:password@ in the URL is masked;
    the auth value stays in its environment variable)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(config.url)
    url = config.url
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        url = urlunsplit(parts._replace(netloc=netloc))
    return {"url": url, "retries": config.retries, "auth_env": config.auth_env}
