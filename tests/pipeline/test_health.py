"""The sink's health record (pure) and how the consume loop and writer feed it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from edge.metrics import MetricsServer
from edge.schema import ScoredTick
from pipeline.fakes import FakeClock, FakeDeadLetters, FakeInflux, FakeRecordSource
from pipeline.health import SinkHealth
from pipeline.metrics import SinkMetrics
from pipeline.sink import Sink, SinkSettings

TOPIC = "gapwatch.scored"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_healthy_only_once_kafka_answered_and_while_nothing_fails() -> None:
    clock = Clock()
    h = SinkHealth(clock, stale_after_s=30.0)
    ok, detail = h.report()
    assert not ok and not detail["consuming"] and detail["writing"]  # Kafka not heard from yet
    h.polled()
    h.ok("kafka")
    ok, detail = h.report()
    assert ok and detail["consuming"] and detail["writing"] and detail["loop_alive"]
    clock.now += 5
    h.failed("influxdb", "connection refused")
    clock.now += 2
    ok, detail = h.report()
    assert not ok and not detail["writing"]
    assert detail["influxdb"] == {
        "ok": False,
        "error": "connection refused",
        "failing_for_s": 2.0,
        "last_ok_age_s": None,
        "failures": 1,
    }
    h.ok("influxdb")
    assert h.report()[0]
    h.failed("kafka", "KafkaTimeoutError")
    ok, detail = h.report()
    assert not ok and not detail["consuming"] and detail["kafka"]["last_ok_age_s"] == 7.0
    h.ok("kafka")
    assert h.report()[0]
    clock.now += 31  # the consume loop stopped polling
    ok, detail = h.report()
    assert not ok and not detail["loop_alive"]
    json.dumps(detail)  # what /healthz sends


def tick(ts_ms: int) -> bytes:
    return ScoredTick(
        site="lab",
        device="pump-1",
        ts_ms=ts_ms,
        values={"Pressure": 1.0},
        imputed=(),
        sigma={},
        score=0.5,
        smoothed=0.5,
        threshold=3.0,
        anomaly=False,
        top_channels=(),
        model="m",
        model_version="1",
    ).encode()


def test_the_writer_reports_influxdb_outages_and_recovery() -> None:
    source, letters, clock, influx = (
        FakeRecordSource(TOPIC),
        FakeDeadLetters(),
        FakeClock(),
        FakeInflux(),
    )
    health = SinkHealth(clock.monotonic)
    seen: list[bool] = []

    class Recording(FakeInflux):
        def write(self, body: bytes) -> None:
            seen.append(health.report()[1]["writing"])
            influx.write(body)

    influx.outages = 2
    sink = Sink(
        source,
        Recording(),
        letters,
        clock,
        settings=SinkSettings(max_points=10, max_wait_s=1.0, initial_backoff_s=0.1),
        metrics=SinkMetrics.create(CollectorRegistry()),
        health=health,
    )
    for i in range(3):
        source.add(tick(1_700_000_000_000 + i * 1000))
    source.on_empty = sink.request_stop
    sink.run()
    assert seen == [True, False, False]  # before each attempt: fine, failing, failing
    detail = health.report()[1]
    assert detail["influxdb"]["ok"] and detail["influxdb"]["failures"] == 2


def test_sink_metrics_carry_runtime_collectors_and_build_info() -> None:
    registry = CollectorRegistry()
    SinkMetrics.create(registry)
    names = {m.name for m in registry.collect()}
    assert {"process_cpu_seconds", "python_info", "gapwatch_sink_build_info"} <= names
    assert "gapwatch_sink_consumer_lag" in names


@pytest.mark.parametrize(("path", "status"), [("/healthz", 503), ("/metrics", 200), ("/x", 404)])
def test_the_endpoint_answers_healthz_metrics_and_404(path: str, status: int) -> None:
    registry = CollectorRegistry()
    SinkMetrics.create(registry)
    health = SinkHealth(Clock())
    server = MetricsServer(registry, "127.0.0.1", 0, health.report)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                code, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read()
    finally:
        server.stop()
    assert code == status
    if path == "/healthz":
        assert json.loads(body)["status"] == "unhealthy"
