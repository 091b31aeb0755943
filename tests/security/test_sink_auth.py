"""The real ``gapwatch sink`` through SASL_SSL Kafka into an InfluxDB with authentication.

Runs at log level DEBUG with the Kafka and InfluxDB passwords in environment variables: the
points arrive, and neither password shows in the log or on the command line. With a wrong
InfluxDB password the sink stops with a clear error that names the fix, not the secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge.schema import ScoredTick
from pipeline.influx import Influx1Client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
T0 = 1_764_000_000_000


def _produce(kafka: Any, topic: str, n: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        security_protocol="SASL_SSL",
        ssl_cafile=str(kafka.ca_file),
        sasl_mechanism="SCRAM-SHA-256",
        sasl_plain_username=kafka.scram_user.name,
        sasl_plain_password=kafka.scram_user.password,
        acks="all",
    )
    try:
        for i in range(n):
            tick = ScoredTick(
                "lab", "pump-1", T0 + i * 1000, {"flow": float(i)}, (), {}, 1.0, 1.0, 5.0,
                False, (), "skab", "1",
            )  # fmt: skip
            producer.send(topic, key=tick.key.encode(), value=tick.encode())
        producer.flush(30)
    finally:
        producer.close()


def _sink_env(kafka: Any, influx: Any, name: str, influx_password: str) -> dict[str, str]:
    user = kafka.plain_user  # PLAIN sends the password itself (inside TLS)
    settings = {
        "KAFKA__BOOTSTRAP": kafka.bootstrap,
        "KAFKA__TOPIC": f"{name}.scored",
        "KAFKA__GROUP_ID": f"{name}-sink",
        "KAFKA__DEADLETTER_TOPIC": f"{name}.deadletter",
        "KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA__SASL_MECHANISM": "PLAIN",  # kafka-python logs its auth bytes at DEBUG
        "KAFKA__SASL_USERNAME": user.name,
        "KAFKA__SASL_PASSWORD": user.password,
        "KAFKA__SSL_CAFILE": str(kafka.ca_file),
        "INFLUX__URL": influx.url,
        "INFLUX__DATABASE": name.replace("-", "_"),
        "INFLUX__USERNAME": influx.admin,
        "INFLUX__PASSWORD": influx_password,
        "INFLUX__CREATE_DATABASE": "true",
        "BATCH__MAX_WAIT_S": "0.2",
        "METRICS__PORT": "0",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_SINK__")}
    env.update({f"GAPWATCH_SINK__{k}": v for k, v in settings.items()})
    return env


def _points(influx: Any, database: str) -> int:
    client = Influx1Client(influx.url, database, username=influx.admin, password=influx.password)
    try:
        series = client.query('SELECT count("flow") FROM "readings"')
    except Exception:  # the database may not exist yet
        return 0
    finally:
        client.close()
    return int(series[0].values[0][-1]) if series and series[0].values else 0


def test_sink_over_sasl_ssl_into_authenticated_influx_keeps_its_secrets(
    sec_kafka: Any, sec_influx: Any, tmp_path: Path
) -> None:
    name = f"sec-sink-{uuid.uuid4().hex[:8]}"
    _produce(sec_kafka, f"{name}.scored", 20)
    env = _sink_env(sec_kafka, sec_influx, name, sec_influx.password)
    log = tmp_path / "sink.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gapwatch", "sink", "--log-level", "DEBUG"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        deadline = time.monotonic() + 90
        while _points(sec_influx, name.replace("-", "_")) < 20 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        assert _points(sec_influx, name.replace("-", "_")) == 20, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text(errors="replace")[-3000:]
    text = log.read_text(errors="replace")
    assert '"debug"' in text.lower() or "debug" in text.lower()
    for secret in (sec_kafka.plain_user.password, sec_influx.password):
        assert secret not in text, "a secret is in the sink's log"
        assert secret not in cmdline


def test_sink_with_a_wrong_influx_password_fails_clearly(
    sec_kafka: Any, sec_influx: Any, tmp_path: Path
) -> None:
    name = f"sec-sink-{uuid.uuid4().hex[:8]}"
    _produce(sec_kafka, f"{name}.scored", 3)
    wrong = "wrong-" + sec_influx.password
    env = _sink_env(sec_kafka, sec_influx, name, wrong)
    result = subprocess.run(
        [sys.executable, "-m", "gapwatch", "sink", "--log-level", "DEBUG"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "401" in output or "authorization" in output.lower(), output[-3000:]
    assert wrong not in output and sec_influx.password not in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert events, "the sink wrote no structured log"
