"""Fixtures of the security suite: a test PKI and private, locked-down brokers.

Fixture names start with ``sec_`` so they never clash with other folders' fixtures. The helper
modules (``certs.py``, ``servers.py``) are loaded by path: tests are not a package.
A missing server binary skips, unless ``GAPWATCH_REQUIRE_SERVICES=1`` (``make test``).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def load_helper(name: str) -> ModuleType:
    """Import ``tests/security/<name>.py`` once, under a private module name."""
    key = f"_gapwatch_tests_security_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


certs = load_helper("certs")
servers = load_helper("servers")


def unavailable(what: str) -> None:
    if os.environ.get("GAPWATCH_REQUIRE_SERVICES", "") == "1":
        pytest.fail(f"GAPWATCH_REQUIRE_SERVICES=1: {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def sec_servers() -> ModuleType:
    """``servers.py``, once Mosquitto is known to be installed (else skip or fail)."""
    if servers.mosquitto_binary() is None:
        unavailable("mosquitto is not installed; run deploy/local/stack install")
    return servers


@pytest.fixture(scope="session")
def sec_pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """CA, loopback server certificate, a client certificate, and a rogue CA's client cert."""
    return certs.make_pki(tmp_path_factory.mktemp("pki"))


@dataclass(frozen=True)
class SecureMqtt:
    service: Any
    tls_port: int
    mtls_port: int
    user: str
    password: str
    pki: Any


@pytest.fixture(scope="session")
def sec_mqtt(tmp_path_factory: pytest.TempPathFactory, sec_pki: Any) -> Iterator[SecureMqtt]:
    """Mosquitto: TLS + password listener, and a TLS listener that requires a client cert."""
    if servers.mosquitto_binary() is None:
        unavailable("mosquitto is not installed; run deploy/local/stack install")
    user, password = "gateway-7", "pw-" + secrets.token_hex(8)
    tls_port, mtls_port = servers.free_port(), servers.free_port()
    service = servers.start_mosquitto(
        tmp_path_factory.mktemp("mosquitto"),
        tls_port=tls_port,
        mtls_port=mtls_port,
        ca_file=sec_pki.ca_cert,
        cert_file=sec_pki.server_cert,
        key_file=sec_pki.server_key,
        users={user: password},
    )
    try:
        yield SecureMqtt(service, tls_port, mtls_port, user, password, sec_pki)
    finally:
        service.stop()


@dataclass(frozen=True)
class SecureInflux:
    service: Any
    url: str
    admin: str
    password: str


@pytest.fixture(scope="session")
def sec_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureInflux]:
    """InfluxDB 1.x with ``auth-enabled = true`` and one admin user (created via /query)."""
    import shutil
    import urllib.parse
    import urllib.request

    if shutil.which("influxd") is None:
        unavailable("influxd is not installed; run deploy/local/stack install")
    service = servers.start_influxdb(tmp_path_factory.mktemp("influxdb"), auth=True)
    url = f"http://127.0.0.1:{service.port}"
    admin, password = "admin", "pw-" + secrets.token_hex(8)
    # With auth on and no user yet, InfluxDB accepts exactly this one statement unauthenticated.
    query = f"CREATE USER {admin} WITH PASSWORD '{password}' WITH ALL PRIVILEGES"
    body = urllib.parse.urlencode({"q": query}).encode()
    with urllib.request.urlopen(f"{url}/query", data=body, timeout=10) as resp:
        assert resp.status == 200
    try:
        yield SecureInflux(service, url, admin, password)
    finally:
        service.stop()


@dataclass(frozen=True)
class SecureKafka:
    service: Any
    bootstrap: str  # the SASL_SSL listener
    internal: str  # PLAINTEXT, inter-broker only (for admin work in tests)
    plain_user: Any
    scram_user: Any
    ca_file: Path


@pytest.fixture(scope="session")
def sec_kafka(tmp_path_factory: pytest.TempPathFactory, sec_pki: Any) -> Iterator[SecureKafka]:
    """A private KRaft broker with a SASL_SSL listener (PLAIN and SCRAM-SHA-256 users)."""
    if servers.kafka_lib() is None:
        unavailable("Kafka jars or java missing; run deploy/local/stack install")
    plain = servers.KafkaUser("agent", "pw-" + secrets.token_hex(8))
    scram = servers.KafkaUser("sink", "pw-" + secrets.token_hex(8))
    sasl_port, internal_port = servers.free_port(), servers.free_port()
    service = servers.start_kafka(
        tmp_path_factory.mktemp("kafka"),
        plain_port=internal_port,
        sasl_port=sasl_port,
        server_key=sec_pki.server_key,
        server_cert_chain=sec_pki.server_cert,
        ca_file=sec_pki.ca_cert,
        plain_users=(plain,),
        scram_users=(scram,),
    )
    try:
        yield SecureKafka(
            service,
            f"127.0.0.1:{sasl_port}",
            f"127.0.0.1:{internal_port}",
            plain,
            scram,
            sec_pki.ca_cert,
        )
    finally:
        service.stop()
