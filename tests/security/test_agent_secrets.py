"""The real agent with every security option on, and its secrets nowhere to be seen.

``gapwatch agent`` runs at log level DEBUG against the private Mosquitto (TLS + password from a
file) and the private Kafka (SASL_SSL, SCRAM-SHA-256 and, in a test of its own, SASL PLAIN, which
sends the password itself; password from an environment variable),
with signed bundles (``bundles.trusted_keys``). It must deliver records, refuse an unsigned
and a tampered model version while keeping the signed one, accept a newly signed one, and never
write a secret to its log, its ``--check`` output or its command line.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.bundle import MODEL_FILE
from edge.signing import generate_private_key, public_key_pem, sign_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _harness() -> Any:
    import importlib.util

    key = "_gapwatch_tests_faults_harness"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "tests" / "faults" / "harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _publish(mq: Any, topic: str, n: int, t0_s: int) -> None:
    ctx = ssl.create_default_context(cafile=str(mq.pki.ca_cert))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.tls_set_context(ctx)
    client.username_pw_set(mq.user, mq.password)
    client.connect("127.0.0.1", mq.tls_port)
    client.loop_start()
    info = None
    channels = _harness().SKAB_CHANNELS
    for i in range(n):
        payload = {"ts": t0_s + i, "values": {c: float(i % 7) for c in channels}}
        info = client.publish(topic, json.dumps(payload), qos=1)
    assert info is not None
    info.wait_for_publish(20)
    client.disconnect()
    client.loop_stop()


def _consume(kafka: Any, topic: str, want: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        security_protocol="SASL_SSL",
        ssl_cafile=str(kafka.ca_file),
        sasl_mechanism="PLAIN",
        sasl_plain_username=kafka.plain_user.name,
        sasl_plain_password=kafka.plain_user.password,
        group_id=None,
        auto_offset_reset="earliest",
    )
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(json.loads(r.value) for r in records)
    finally:
        consumer.close()
    return out


def _secure_env(
    h: Any,
    sec_mqtt: Any,
    sec_kafka: Any,
    tmp_path: Path,
    bundles: Path,
    mechanism: str,
    **settings: str,
) -> tuple[dict[str, str], str, int, list[str]]:
    """The agent's environment at DEBUG: MQTT over TLS with a password file, Kafka over
    SASL_SSL with ``mechanism`` (PLAIN: the broker's plain user, SCRAM-SHA-256: its SCRAM
    user), the password in an environment variable. Returns (env, prefix, metrics port,
    secrets)."""
    user = sec_kafka.plain_user if mechanism == "PLAIN" else sec_kafka.scram_user
    mqtt_secret = tmp_path / "mqtt.password"
    mqtt_secret.write_text(sec_mqtt.password + "\n")
    mqtt_secret.chmod(0o600)
    prefix = f"sec-{uuid.uuid4().hex[:8]}"
    metrics_port = _free_port()
    env = h.agent_env(
        prefix=prefix,
        state=tmp_path / "state",
        mqtt_port=sec_mqtt.tls_port,
        kafka_bootstrap=sec_kafka.bootstrap,
        bundles=bundles,
        metrics_port=metrics_port,
        log_level='"DEBUG"',
        mqtt__username=json.dumps(sec_mqtt.user),
        mqtt__password_file=json.dumps(str(mqtt_secret)),
        mqtt__tls__enabled="true",
        mqtt__tls__ca_file=json.dumps(str(sec_mqtt.pki.ca_cert)),
        kafka__security_protocol='"SASL_SSL"',
        kafka__sasl_mechanism=json.dumps(mechanism),
        kafka__sasl_username=json.dumps(user.name),
        kafka__ssl_cafile=json.dumps(str(sec_kafka.ca_file)),
        **settings,
    )
    env["GAPWATCH_AGENT__KAFKA__SASL_PASSWORD"] = user.password
    return env, prefix, metrics_port, [sec_mqtt.password, user.password]


def _assert_no_secret(agent: Any, cmdline: str, secret_values: list[str]) -> None:
    log = agent.log_text(tail=10_000_000)
    assert "DEBUG" in log.upper(), "the agent did not log at DEBUG as configured"
    for secret in secret_values:
        assert secret not in log, "a secret is in the agent's log"
        assert secret not in cmdline, "a secret is on the agent's command line"


def test_agent_over_sasl_plain_at_debug_keeps_its_password(
    sec_mqtt: Any, sec_kafka: Any, tmp_path: Path
) -> None:
    """SASL PLAIN sends the password itself, and kafka-python logs those bytes at DEBUG: the
    agent at DEBUG must deliver over PLAIN and never write the password anywhere."""
    h = _harness()
    root = tmp_path / "bundles"
    h.write_tiny_bundle(root, version="1")
    env, prefix, metrics_port, secret_values = _secure_env(
        h, sec_mqtt, sec_kafka, tmp_path, root, "PLAIN"
    )
    check = subprocess.run(
        [sys.executable, "-m", "gapwatch", "agent", "--check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    for secret in secret_values:
        assert secret not in check.stdout + check.stderr
    agent = h.Agent(env, tmp_path, metrics_port, prefix)
    agent.start()
    try:
        agent.wait_subscribed()
        cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        _publish(sec_mqtt, f"{prefix}/lab/pump-1", 20, 1_764_000_000)
        records = _consume(sec_kafka, f"{prefix}.scored", 15)
        assert len(records) >= 15, f"records did not reach Kafka over PLAIN:\n{agent.log_text()}"
    finally:
        code = agent.stop()
    assert code == 0, agent.log_text()
    _assert_no_secret(agent, cmdline, secret_values)


def test_agent_with_tls_sasl_and_signed_bundles_keeps_its_secrets(
    sec_mqtt: Any, sec_kafka: Any, tmp_path: Path
) -> None:
    h = _harness()
    key = generate_private_key()
    pub = tmp_path / "bundles.pub"
    pub.write_bytes(public_key_pem(key))
    root = tmp_path / "bundles"
    sign_bundle(h.write_tiny_bundle(root, version="1"), key)

    env, prefix, metrics_port, secret_values = _secure_env(
        h, sec_mqtt, sec_kafka, tmp_path, root, "SCRAM-SHA-256",
        bundles__trusted_keys=json.dumps(str(pub)),
    )  # fmt: skip

    check = subprocess.run(
        [sys.executable, "-m", "gapwatch", "agent", "--check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    for secret in secret_values:
        assert secret not in check.stdout + check.stderr

    agent = h.Agent(env, tmp_path, metrics_port, prefix)
    agent.start()
    try:
        agent.wait_subscribed()
        cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        _publish(sec_mqtt, f"{prefix}/lab/pump-1", 20, 1_764_000_000)
        records = _consume(sec_kafka, f"{prefix}.scored", 15)
        assert len(records) >= 15, f"records did not reach Kafka:\n{agent.log_text()}"
        assert {r["model_version"] for r in records} == {"1"}

        # An unsigned version, then a tampered signed one: each refused, version 1 keeps running.
        def refused(why: str) -> bool:
            return any(
                e.get("event") == "reload.refused" and why in str(e.get("problem"))
                for e in agent.events()
            )

        h.write_tiny_bundle(root, version="2")
        h.wait_until("the unsigned version 2 to be refused", lambda: refused("unsigned"), 30)
        staged = h.write_tiny_bundle(tmp_path / "staging", version="3")
        sign_bundle(staged, key)
        (staged / MODEL_FILE).write_bytes((staged / MODEL_FILE).read_bytes() + b"\0")
        staged.rename(root / "skab" / "3")  # appears signed-and-tampered in one step
        h.wait_until(
            "the tampered version 3 to be refused",
            lambda: refused("modified after signing"),
            30,
        )
        time.sleep(2)  # several reload polls
        _publish(sec_mqtt, f"{prefix}/lab/pump-1", 10, 1_764_000_100)
        later = _consume(sec_kafka, f"{prefix}.scored", len(records) + 8)
        assert {r["model_version"] for r in later} == {"1"}, "an unsigned model was loaded"

        v4 = h.write_tiny_bundle(tmp_path / "staging", version="4")
        sign_bundle(v4, key)
        v4.rename(root / "skab" / "4")
        h.wait_until(
            "the signed version 4 to be accepted",
            lambda: any(
                e.get("event") == "reload.accepted" and str(e.get("to")) == "4"
                for e in agent.events()
            ),
            30,
        )
    finally:
        code = agent.stop()
    assert code == 0, agent.log_text()
    _assert_no_secret(agent, cmdline, secret_values)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_example_agent_config_has_no_inline_secrets() -> None:
    """The documented example config points secrets at files, never inline values."""
    example = REPO / "deploy" / "edge" / "agent.toml"
    if not example.exists():
        pytest.skip("deploy/edge/agent.toml not written yet")
    text = example.read_text()
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith(("password", "sasl_password")) and "=" in stripped:
            value = stripped.split("=", 1)[1].strip().strip('"')
            assert value == "", f"an inline secret in the example config: {line!r}"
