"""The agent as a service: sd_notify READY/WATCHDOG/RELOADING/STOPPING over a real socket,
SIGHUP re-reading the config without going down, and the retained status topic whose last
will says "offline" when the agent is SIGKILLed (private Mosquitto; Kafka is not needed:
records wait in the spool)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]


class _Notify:
    """A NOTIFY_SOCKET the way systemd provides it: a bound unix datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got: list[str] = []

    def wait_for(self, field: str, timeout_s: float, after: int = 0) -> int:
        """Index in :attr:`got` of the first ``field`` after position ``after``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for i in range(after, len(self.got)):
                if self.got[i] == field:
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {field} after #{after} in {timeout_s}s: {self.got}")
            with contextlib.suppress(TimeoutError):
                self.got += self.sock.recv(4096).decode().split("\n")


def _start(env: dict[str, str], config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gapwatch", "agent", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _env(h: Any, tmp_path: Path, bundles: Path, mqtt_port: int, prefix: str) -> dict[str, str]:
    kafka = f"127.0.0.1:{_free_port()}"  # nothing listens: records stay in the spool
    env = h.agent_env(
        prefix=prefix,
        state=tmp_path / "state",
        mqtt_port=mqtt_port,
        kafka_bootstrap=kafka,
        bundles=bundles,
        metrics_port=_free_port(),
    )
    del env["GAPWATCH_AGENT__MQTT__TOPICS"]  # from the config file, so SIGHUP can change it
    env["GAPWATCH_AGENT__LOG_FORMAT"] = "json"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _metrics_port(env: dict[str, str]) -> int:
    return int(env["GAPWATCH_AGENT__METRICS__PORT"])


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _publish(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    import paho.mqtt.publish as publish

    publish.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=port)


def _reading(ts: float) -> bytes:
    from importlib import import_module

    channels = import_module("_gapwatch_tests_faults_harness").SKAB_CHANNELS
    return json.dumps({"ts": ts, "values": dict.fromkeys(channels, 1.0)}).encode()


def test_sighup_reloads_the_config_and_notifies_systemd(
    tmp_path: Path, faults_harness: Any, faults_mosquitto: Any, faults_bundles: Path
) -> None:
    h = faults_harness
    prefix = f"svc-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    env = _env(h, tmp_path, faults_bundles, faults_mosquitto.port, prefix)
    notify = _Notify(tmp_path / "notify.sock")
    env["NOTIFY_SOCKET"] = notify.path
    env["WATCHDOG_USEC"] = "1000000"  # 1 s: a ping every 0.5 s
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\ntopics = ["{prefix}/a/{{site}}/{{device}}"]\n')
    log = tmp_path / "agent.log"
    proc = _start(env, config, log)
    try:
        ready = notify.wait_for("READY=1", 120)
        wd = notify.wait_for("WATCHDOG=1", 10, after=ready)
        notify.wait_for("WATCHDOG=1", 10, after=wd + 1)

        # A bad config on SIGHUP is refused: the agent keeps running on the old one.
        config.write_text("[mqtt]\ntopicz = []\n")
        proc.send_signal(signal.SIGHUP)
        h.wait_until(
            "reload refused",
            lambda: any(e["event"] == "agent.reload_refused" for e in _events(log)),
            30,
        )
        assert proc.poll() is None
        assert not any(f == "RELOADING=1" for f in notify.got)

        # A good one: RELOADING=1, a clean stop, READY=1 again, same process, new topics.
        config.write_text(f'[mqtt]\ntopics = ["{prefix}/b/{{site}}/{{device}}"]\n')
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING=1", 30, after=ready)
        notify.wait_for("READY=1", 120, after=reloading)
        notify.wait_for("WATCHDOG=1", 10, after=reloading)
        assert proc.poll() is None, "SIGHUP ended the agent"
        assert "STOPPING=1" not in notify.got
        port = _metrics_port(env)
        h.wait_until("metrics back", lambda: _metric(port, "gapwatch_agent_messages_total") == 0)
        for i in range(5):
            _publish(faults_mosquitto.port, f"{prefix}/b/lab/pump-1", _reading(time.time() + i))
        h.wait_until(
            "the new topic is read",
            lambda: _metric(port, "gapwatch_agent_messages_total") >= 5,
            30,
        )
        events = [e["event"] for e in _events(log)]
        assert events.count("agent.starting") == 2 and "agent.reloading" in events
        assert "agent.failed" not in events and "agent.cannot_start" not in events

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        notify.wait_for("STOPPING=1", 5, after=reloading)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        notify.sock.close()


def _retained(port: int, topic: str, timeout_s: float = 10.0) -> bytes | None:
    """The retained payload on ``topic`` as a fresh subscriber sees it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_connect(c: Any, *_: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def test_status_topic_is_online_then_offline_by_last_will_after_kill_9(
    tmp_path: Path, faults_harness: Any, faults_mosquitto: Any, faults_bundles: Path
) -> None:
    h = faults_harness
    prefix = f"lwt-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    env = _env(h, tmp_path, faults_bundles, faults_mosquitto.port, prefix)
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\ntopics = ["{prefix}/{{site}}/{{device}}"]\n')
    status = f"gapwatch/agents/{prefix}/status"  # the default template, client_id = prefix
    log = tmp_path / "agent.log"
    port = faults_mosquitto.port

    proc = _start(env, config, log)
    try:
        h.wait_until("online", lambda: _retained(port, status, 1.0) == b"online", 120)
        proc.kill()  # SIGKILL: no chance to say goodbye; the broker publishes the will
        proc.wait(10)
        h.wait_until("offline", lambda: _retained(port, status, 1.0) == b"offline", 60)

        proc = _start(env, config, log)
        h.wait_until("online again", lambda: _retained(port, status, 1.0) == b"online", 120)
        proc.send_signal(signal.SIGTERM)  # a clean stop sends no will: the agent says it
        assert proc.wait(60) == 0
        assert _retained(port, status, 5.0) == b"offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _publish(port, status, b"", retain=True)  # clear the retained message
