"""Shared fixtures: addresses of the local stack (deploy/local/stack) and unique names per test.

The service fixtures read the same environment variables as ``deploy/local/stack`` and probe the
service once per session. An unreachable service skips the test, unless
``GAPWATCH_REQUIRE_SERVICES=1`` (set by ``make test``), which turns the skip into a failure.

Subfolders add their own ``conftest.py`` for package-specific fixtures; keep this one small.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import NoReturn

import pytest

LOOPBACK = "127.0.0.1"
PROBE_TIMEOUT_S = 5.0


def _port(env: str, default: int) -> int:
    return int(os.environ.get(env, str(default)))


def _services_required() -> bool:
    return os.environ.get("GAPWATCH_REQUIRE_SERVICES", "") == "1"


def _unavailable(service: str, address: str, reason: object) -> NoReturn:
    message = (
        f"{service} is not reachable at {address} ({reason}). "
        "Start the local stack with `deploy/local/stack up` (or run `make test`)."
    )
    if _services_required():
        pytest.fail(f"GAPWATCH_REQUIRE_SERVICES=1: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def mqtt_addr() -> tuple[str, int]:
    """Mosquitto on loopback as ``(host, port)``; probed with a real MQTT connect (paho-mqtt)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = LOOPBACK, _port("GAPWATCH_MQTT_PORT", 11883)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    try:
        client.connect(host, port, keepalive=10)
        client.disconnect()
    except OSError as exc:
        _unavailable("Mosquitto", f"{host}:{port}", exc)
    return host, port


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers (``host:port``); probed with a metadata request (kafka-python)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    bootstrap = f"{LOOPBACK}:{_port('GAPWATCH_KAFKA_PORT', 19092)}"
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="gapwatch-test-probe",
            request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
            bootstrap_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
        )
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        _unavailable("Kafka", bootstrap, repr(exc))
    return bootstrap


@pytest.fixture(scope="session")
def influx_url() -> str:
    """InfluxDB 1.x HTTP API base URL; probed with GET /ping (expects 204)."""
    url = f"http://{LOOPBACK}:{_port('GAPWATCH_INFLUX_PORT', 18086)}"
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=PROBE_TIMEOUT_S) as resp:
            status = resp.status
    except (urllib.error.URLError, OSError) as exc:
        _unavailable("InfluxDB", url, exc)
    if status != 204:
        _unavailable("InfluxDB", url, f"GET /ping returned {status}")
    return url


def _test_slug(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test run, ``test-<testname>-<uuid8>``.

    Only ``[a-z0-9-]``: valid as a Kafka topic, an MQTT topic level, a consumer group or an
    InfluxDB database name. For several names in one test use ``make_unique_name``.
    """
    return f"test-{_test_slug(request)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory: ``make_unique_name("topic")`` -> ``topic-<testname>-<uuid8>``, new each call."""
    slug = _test_slug(request)

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{slug}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (for servers a test starts itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with the legacy importlib.resources API
    config.addinivalue_line(
        "filterwarnings",
        "ignore:(read_text|open_text) is deprecated:DeprecationWarning",
    )
