"""The webhook notifier against a local HTTP receiver (http.server): delivery, retries after
failures, auth header, the bounded queue that never blocks the scoring thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edge.alerts import AlarmEvent
from edge.config import AlertsConfig
from edge.webhook import RetryPolicy, WebhookNotifier, is_retryable

T0 = 1_700_000_000_000


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with 503, then 200; keeps every body and header."""

    fail_first: int = 0
    status_after: int = 200
    bodies: list[list[dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    got: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests += 1
            status = 503 if state.requests <= state.fail_first else state.status_after
            if status == 200:
                state.bodies.append(json.loads(body))
                state.headers.append(dict(self.headers))
                state.got.set()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/api/v2/alerts"
    server.shutdown()
    server.server_close()


def event(kind: str = "open", device: str = "pump-1") -> AlarmEvent:
    ended = None if kind == "open" else T0 + 5000
    return AlarmEvent(kind, "lab", device, "skab", "3", T0, ended, ("Current",), 4.0, 2.0)  # type: ignore[arg-type]


def config(url: str, **kw: Any) -> AlertsConfig:
    base: dict[str, Any] = {"url": url, "backoff_s": 0.01, "max_backoff_s": 0.02, "resend_s": 0}
    return AlertsConfig(**{**base, **kw})


def test_retry_policy_doubles_and_caps() -> None:
    assert RetryPolicy(4, 1.0, 3.0).delays() == [1.0, 2.0, 3.0, 3.0]
    assert [is_retryable(s) for s in (None, 500, 503, 429, 408, 400, 404)] == [
        True, True, True, True, True, False, False,
    ]  # fmt: skip


def test_events_reach_the_receiver_with_the_auth_header(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    outcomes: list[tuple[str, int]] = []
    n = WebhookNotifier(
        config(url, auth_env="HOOK_TOKEN", auth_header="Authorization"),
        env={"HOOK_TOKEN": "Bearer s3cret"},
        on_outcome=lambda o, k: outcomes.append((o, k)),
    )
    assert n.deliver([event("open"), event("close", "pump-2")])
    [body] = state.bodies
    assert [a["labels"]["device"] for a in body] == ["pump-1", "pump-2"]
    assert "endsAt" not in body[0] and body[1]["endsAt"].endswith("Z")
    assert state.headers[0]["Authorization"] == "Bearer s3cret"
    assert state.headers[0]["Content-Type"] == "application/json"
    assert outcomes == [("sent", 2)]


def test_a_receiver_that_fails_first_then_recovers_gets_the_alert(
    receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    state.fail_first = 2
    n = WebhookNotifier(config(url, retries=3), env={})
    assert n.deliver([event()])
    assert state.requests == 3 and len(state.bodies) == 1
    assert (n.sent, n.failed) == (1, 0)


def test_retries_exhausted_count_as_failed(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.fail_first = 10
    n = WebhookNotifier(config(url, retries=2), env={})
    assert not n.deliver([event()])
    assert state.requests == 3 and (n.sent, n.failed) == (0, 1)


def test_a_client_error_is_not_retried(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.status_after = 400
    n = WebhookNotifier(config(url, retries=3), env={})
    assert not n.deliver([event()])
    assert state.requests == 1 and n.failed == 1


def test_no_receiver_at_all_fails_without_raising() -> None:
    n = WebhookNotifier(config("http://127.0.0.1:9/x", retries=1, timeout_s=1.0), env={})
    assert not n.deliver([event()])
    assert n.failed == 1


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    # not started: nothing drains the queue
    n = WebhookNotifier(config("http://127.0.0.1:9/x", queue_max=2), env={})
    assert [n.submit(event(device=f"d{i}")) for i in range(4)] == [True, True, False, False]
    assert n.dropped == 2


def test_the_thread_delivers_alarm_transitions_from_ticks(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.fail_first = 1

    @dataclass(frozen=True)
    class Tick:
        ts_ms: int
        anomaly: bool
        top_channels: tuple[str, ...] = ("Pressure",)
        score: float | None = 3.0
        smoothed: float | None = 3.0
        threshold: float = 2.0

    n = WebhookNotifier(config(url), env={})
    n.start()
    try:
        for i, flag in enumerate([False, True, True, False]):
            n.on_tick("lab", "pump-1", "skab", "3", Tick(T0 + 1000 * i, flag))
        for _ in range(200):
            if n.sent >= 2:
                break
            state.got.wait(0.05)
    finally:
        n.stop()
    alerts = [a for body in state.bodies for a in body]
    assert [("endsAt" in a) for a in alerts] == [False, True]
    assert alerts[0]["startsAt"] == alerts[1]["startsAt"] == "2023-11-14T22:13:21.000Z"
    assert alerts[1]["annotations"]["top_channels"] == "Pressure"


def test_open_alarms_are_resent(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    n = WebhookNotifier(config(url, resend_s=0.05), env={})
    n.submit(event("open"))
    n.start()
    try:
        for _ in range(200):
            if len(state.bodies) >= 3:
                break
            state.got.clear()
            state.got.wait(0.05)
    finally:
        n.stop()
    assert len(state.bodies) >= 3
    assert all(body[0]["labels"]["device"] == "pump-1" for body in state.bodies)


def test_the_log_line_masks_credentials_in_the_url() -> None:
    from edge.webhook import describe

    line = describe(AlertsConfig(url="https://bot:pa55@hooks.example:8443/am", auth_env="TOK"))
    assert line == {"url": "https://***@hooks.example:8443/am", "retries": 3, "auth_env": "TOK"}
    assert describe(AlertsConfig(url="http://am:9093/api/v2/alerts"))["url"].startswith("http://am")


def test_check_reports_the_webhook_and_refuses_a_bad_url(
    tmp_path: Any, agent_bundle_factory: Any
) -> None:
    import os
    import subprocess
    import sys

    agent_bundle_factory()
    base = [
        sys.executable, "-m", "gapwatch", "agent", "--check",
        "--set", f'bundles.root="{tmp_path / "bundles"}"',
        "--set", 'devices=[{match="*", bundle="tiny"}]',
        "--set", f'state_dir="{tmp_path}"',
        "--set", 'alerts.auth_env="GW_TEST_UNSET_TOKEN"',
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "GW_TEST_UNSET_TOKEN"}
    ok = subprocess.run(
        [*base, "--set", 'alerts.url="http://u:p@am.local:9093/api/v2/alerts"'],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "alerts: webhook http://***@am.local:9093/api/v2/alerts" in ok.stdout
    assert "GW_TEST_UNSET_TOKEN is not set" in ok.stderr
    bad = subprocess.run(
        [*base, "--set", 'alerts.url="am.local:9093"'],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "alerts.url" in bad.stderr


def test_a_hanging_receiver_never_blocks_the_scoring_side() -> None:
    entered, release = threading.Event(), threading.Event()
    bodies: list[list[dict[str, Any]]] = []

    class Hanging:
        def post(self, url: str, body: bytes, headers: Any, timeout_s: float) -> int:
            entered.set()
            release.wait(30)
            bodies.append(json.loads(body))
            return 200

    n = WebhookNotifier(config("http://hook.local/x", queue_max=2), env={}, transport=Hanging())
    n.start()
    try:
        assert n.submit(event(device="d0"))
        assert entered.wait(10)  # the delivery thread now hangs in the POST of d0
        accepted = [n.submit(event(device=f"d{i}")) for i in range(1, 6)]
        assert accepted == [True, True, False, False, False]  # returned at once, queue full
        assert n.dropped == 3
        release.set()
        for _ in range(200):
            if n.sent == 3:
                break
            time.sleep(0.05)
    finally:
        release.set()
        n.stop()
    assert [a["labels"]["device"] for b in bodies for a in b] == ["d0", "d1", "d2"]


def test_warnings_are_rate_limited_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    n = WebhookNotifier(config("http://127.0.0.1:9/x", queue_max=1), env={}, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="edge.webhook"):
        for i in range(5):
            n.submit(event(device=f"d{i}"))  # the first fits, four are dropped
        now[0] = 10.0
        n.submit(event(device="late"))
    dropped = [r for r in caplog.records if r.getMessage() == "webhook.dropped"]
    assert [r.suppressed for r in dropped] == [0, 3]
    assert n.dropped == 5
