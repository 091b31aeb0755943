"""MQTT security on a real Mosquitto configured by the test (own instance, own ports).

Listener 1: TLS, ``allow_anonymous false``, users from a ``mosquitto_passwd`` file.
Listener 2: TLS with ``require_certificate true`` (the certificate's CN is the user name).
Anonymous and wrong credentials are refused; credentials and a client certificate signed by
the test CA are accepted; the agent's own MQTT adapter connects with TLS and a password file.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttConfig, TlsConfig
from edge.ports import SystemClock

pytestmark = pytest.mark.integration


def _context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def try_connect(
    port: int,
    ctx: ssl.SSLContext | None,
    username: str | None = None,
    password: str | None = None,
) -> str:
    """Connect, wait for CONNACK, disconnect. Returns "ok", a refusal reason, or "tls: ..."."""
    done = threading.Event()
    result: dict[str, str] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result["reason"] = "ok" if not reason.is_failure else str(reason)
        done.set()

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result.setdefault("reason", f"disconnected: {reason}")
        done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"sec-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if ctx is not None:
        client.tls_set_context(ctx)
    if username is not None:
        client.username_pw_set(username, password)
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except ssl.SSLError as exc:
        return f"tls: {exc.reason or exc}"
    except OSError as exc:
        return f"socket: {exc}"
    client.loop_start()
    try:
        done.wait(15)
    finally:
        client.disconnect()
        client.loop_stop()
    return result.get("reason", "timeout")


def test_anonymous_client_is_refused(sec_mqtt: Any) -> None:
    assert try_connect(sec_mqtt.tls_port, _context(sec_mqtt.pki.ca_cert)) == "Not authorized"


def test_wrong_password_is_refused(sec_mqtt: Any) -> None:
    reason = try_connect(sec_mqtt.tls_port, _context(sec_mqtt.pki.ca_cert), sec_mqtt.user, "nope")
    assert reason in {"Not authorized", "Bad user name or password"}


def test_credentials_are_accepted_over_tls(sec_mqtt: Any) -> None:
    ctx = _context(sec_mqtt.pki.ca_cert)
    assert try_connect(sec_mqtt.tls_port, ctx, sec_mqtt.user, sec_mqtt.password) == "ok"


def test_plaintext_client_cannot_talk_to_the_tls_listener(sec_mqtt: Any) -> None:
    reason = try_connect(sec_mqtt.tls_port, None, sec_mqtt.user, sec_mqtt.password)
    assert reason != "ok"


def test_server_certificate_from_an_untrusted_ca_is_rejected_by_the_client(
    sec_mqtt: Any,
) -> None:
    reason = try_connect(
        sec_mqtt.tls_port, _context(sec_mqtt.pki.rogue_ca_cert), sec_mqtt.user, sec_mqtt.password
    )
    assert reason.startswith("tls:"), reason
    assert "CERTIFICATE_VERIFY_FAILED" in reason


def test_client_certificate_is_accepted_on_the_mtls_listener(sec_mqtt: Any) -> None:
    pki = sec_mqtt.pki
    ctx = _context(pki.ca_cert, pki.client_cert, pki.client_key)
    assert try_connect(sec_mqtt.mtls_port, ctx) == "ok"


def test_mtls_listener_refuses_no_certificate_and_a_rogue_certificate(sec_mqtt: Any) -> None:
    pki = sec_mqtt.pki
    no_cert = try_connect(sec_mqtt.mtls_port, _context(pki.ca_cert))
    assert no_cert != "ok"
    rogue = _context(pki.ca_cert, pki.rogue_client_cert, pki.rogue_client_key)
    assert try_connect(sec_mqtt.mtls_port, rogue) != "ok"


def _agent_source(config: MqttConfig) -> Any:
    from edge.mqtt_source import MqttSource

    return MqttSource(config, f"gw-sec-{uuid.uuid4().hex[:6]}", ["sec/+/+"], SystemClock())


def _receive_one(
    source: Any, port: int, ctx: ssl.SSLContext, auth: tuple[str, str] | None, topic: str
) -> list[Any]:
    source.start()
    try:
        deadline = time.monotonic() + 20
        while not source.subscribed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.subscribed, "the agent's MQTT source did not connect and subscribe"
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
        pub.tls_set_context(ctx)
        if auth:
            pub.username_pw_set(*auth)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        pub.publish(topic, b'{"ts": 1764000000, "values": {"x": 1}}', qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        got: list[Any] = []
        while not got and time.monotonic() < deadline:
            got = source.poll(10, 0.2)
        source.ack(got)
        return got
    finally:
        source.stop()


def test_agent_mqtt_source_with_tls_and_password_file(sec_mqtt: Any, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text(sec_mqtt.password + "\n")
    secret.chmod(0o600)
    config = MqttConfig(
        host="127.0.0.1",
        port=sec_mqtt.tls_port,
        username=sec_mqtt.user,
        password_file=str(secret),
        tls=TlsConfig(enabled=True, ca_file=str(sec_mqtt.pki.ca_cert)),
    )
    ctx = _context(sec_mqtt.pki.ca_cert)
    got = _receive_one(
        _agent_source(config),
        sec_mqtt.tls_port,
        ctx,
        (sec_mqtt.user, sec_mqtt.password),
        "sec/lab/pump-1",
    )
    assert [m.topic for m in got] == ["sec/lab/pump-1"]


def test_agent_mqtt_source_with_client_certificate(sec_mqtt: Any) -> None:
    pki = sec_mqtt.pki
    config = MqttConfig(
        host="127.0.0.1",
        port=sec_mqtt.mtls_port,
        tls=TlsConfig(
            enabled=True,
            ca_file=str(pki.ca_cert),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        ),
    )
    ctx = _context(pki.ca_cert, pki.client_cert, pki.client_key)
    got = _receive_one(_agent_source(config), sec_mqtt.mtls_port, ctx, None, "sec/lab/pump-2")
    assert [m.topic for m in got] == ["sec/lab/pump-2"]


def test_agent_mqtt_source_with_wrong_password_never_subscribes(sec_mqtt: Any) -> None:
    config = MqttConfig(
        host="127.0.0.1",
        port=sec_mqtt.tls_port,
        username=sec_mqtt.user,
        password="wrong-" + sec_mqtt.password,
        tls=TlsConfig(enabled=True, ca_file=str(sec_mqtt.pki.ca_cert)),
        reconnect_min_s=1,
        reconnect_max_s=2,
    )
    source = _agent_source(config)
    source.start()
    try:
        time.sleep(3)
        assert not source.connected
        assert source.disconnected_for_s > 0  # feeds the agent's watchdog
    finally:
        source.stop()
