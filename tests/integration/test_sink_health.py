"""``gapwatch sink``'s ``/healthz`` and consumer lag on the real Kafka and InfluxDB.

The lag function is checked against a plain consumer (exact counts), the process against the
shared stack (200, lag 0 once everything is read, 404 elsewhere) and against a private InfluxDB
that is killed and started again (503 while it is down, 200 once writes succeed again).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def _load(path: Path, key: str) -> ModuleType:
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


it = _load(HERE / "test_sink_kafka_influx.py", "_gapwatch_tests_sink_it")
servers = _load(HERE.parent / "security" / "servers.py", "_gapwatch_tests_security_servers")


@pytest.fixture
def stack(
    kafka_bootstrap: str,
    influx_url: str,
    make_unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Any]:
    with it.open_stack(kafka_bootstrap, influx_url, make_unique_name, tmp_path) as s:
        yield s


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def health(port: int) -> tuple[int, dict[str, Any]]:
    code, body = get(port, "/healthz")
    return code, (json.loads(body) if body else {})


def lag_samples(port: int) -> dict[int, float]:
    _, text = get(port, "/metrics")
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("gapwatch_sink_consumer_lag{"):
            labels, value = line.rsplit(" ", 1)
            out[int(labels.split('partition="')[1].split('"')[0])] = float(value)
    return out


def test_consumer_lag_is_end_offset_minus_position(stack: Any) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    from pipeline.kafka_in import consumer_lag

    producer = KafkaProducer(bootstrap_servers=stack.bootstrap)
    per_partition = {0: 7, 1: 3, 2: 0, 3: 5}
    for p, n in per_partition.items():
        for i in range(n):
            producer.send(stack.topic, value=b"x%d" % i, partition=p)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(stack.topic, p) for p in per_partition]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        assert consumer_lag(consumer, stack.topic, 5000) == {
            (stack.topic, p): n for p, n in per_partition.items()
        }
        read = 0
        for _ in range(50):
            read += sum(len(r) for r in consumer.poll(timeout_ms=200, max_records=4).values())
            if read:
                break
        lag = consumer_lag(consumer, stack.topic, 5000)
        assert read > 0 and sum(lag.values()) == sum(per_partition.values()) - read
        for tp in tps:
            assert lag[(tp.topic, tp.partition)] == (
                per_partition[tp.partition] - consumer.position(tp)
            )
    finally:
        consumer.close()


def test_healthz_is_200_while_consuming_and_writing_and_lag_drains_to_zero(
    stack: Any, free_port: int
) -> None:
    ticks = [it.make_tick(i) for i in range(40)]
    stack.produce_ticks(ticks)
    proc = stack.start_sink(metrics={"port": free_port, "host": "127.0.0.1", "lag_interval_s": 0.5})
    it.wait_for("40 points", lambda: stack.count() == 40)
    it.wait_for(
        "lag 0 on all 4 partitions", lambda: lag_samples(free_port) == dict.fromkeys(range(4), 0.0)
    )
    code, body = health(free_port)
    assert code == 200, body
    assert body["status"] == "ok" and body["consuming"] and body["writing"]
    assert body["kafka"]["ok"] and body["influxdb"]["ok"] and body["consumer_lag"] == 0
    assert sorted(body["partitions"]) == [f"{stack.topic}/{p}" for p in range(4)]
    assert get(free_port, "/nothing-here")[0] == 404
    code, metrics = get(free_port, "/metrics")
    assert code == 200
    for name in (b"process_cpu_seconds_total", b"python_info{", b"gapwatch_sink_build_info{"):
        assert name in metrics
    assert it.stop(proc) == 0


def test_healthz_is_503_while_influxdb_is_down_and_200_once_it_is_back(
    stack: Any, free_port: int, tmp_path: Path
) -> None:
    if servers.shutil.which("influxd") is None:
        pytest.skip("influxd is not installed")
    influx = servers.start_influxdb(tmp_path / "influx", auth=False)
    url = f"http://127.0.0.1:{influx.port}"
    try:
        proc = stack.start_sink(
            influx={"url": url, "database": stack.db, "create_database": True},
            metrics={"port": free_port, "host": "127.0.0.1", "lag_interval_s": 0.5},
            retry={"initial_backoff_s": 0.2, "max_backoff_s": 0.5},
        )
        it.wait_for("healthy", lambda: health(free_port)[0] == 200)
        influx.kill()
        stack.produce_ticks([it.make_tick(i) for i in range(8)])
        it.wait_for("503 naming InfluxDB", lambda: health(free_port)[0] == 503)
        _, body = health(free_port)
        assert body["status"] == "unhealthy" and not body["writing"]
        assert not body["influxdb"]["ok"] and body["influxdb"]["error"]
        assert body["influxdb"]["failing_for_s"] >= 0
        influx.start()
        it.wait_for("healthy again", lambda: health(free_port)[0] == 200)
        _, body = health(free_port)
        assert body["influxdb"]["ok"] and body["influxdb"]["failures"] >= 1
        assert it.stop(proc) == 0
    finally:
        influx.kill()
