"""``gapwatch sink`` as a process against real Kafka and InfluxDB 1.x.

Each test uses its own topic, dead-letter topic, consumer group and database, and removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.schema import DeadLetter, ScoredTick
from pipeline.errors import StorageError
from pipeline.influx import Influx1Client

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000


def make_tick(i: int, devices: int = 4, **over: Any) -> ScoredTick:
    base: dict[str, Any] = {
        "site": "it",
        "device": f"dev-{i % devices}",
        "ts_ms": T0 + (i // devices) * 1000,
        "values": {"Pressure": 0.5 + i, "Current": None if i % 5 == 0 else 2.0 + i},
        "imputed": ("Current",) if i % 7 == 0 else (),
        "sigma": {"Current": 0.25} if i % 7 == 0 else {},
        "score": 0.1 * i,
        "smoothed": 0.05 * i,
        "threshold": 2.5,
        "anomaly": i % 11 == 0,
        "top_channels": ("Pressure",) if i % 11 == 0 else (),
        "model": "skab",
        "model_version": "v1",
    }
    base.update(over)
    return ScoredTick(**base)


@dataclass
class Stack:
    bootstrap: str
    influx_url: str
    topic: str
    deadletter: str
    group: str
    db: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self) -> Influx1Client:
        return Influx1Client(self.influx_url, self.db)

    def produce(self, values: list[tuple[bytes | None, bytes]]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        for key, value in values:
            producer.send(self.topic, key=key, value=value)
        producer.flush()
        producer.close()

    def produce_ticks(self, ticks: list[ScoredTick]) -> None:
        self.produce([(t.key.encode(), t.encode()) for t in ticks])

    def config(self, name: str, **sections: dict[str, Any]) -> Path:
        cfg: dict[str, dict[str, Any]] = {
            "kafka": {
                "bootstrap": self.bootstrap,
                "topic": self.topic,
                "group_id": self.group,
                "deadletter_topic": self.deadletter,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "max_poll_interval_ms": 10000,
            },
            "influx": {"url": self.influx_url, "database": self.db, "create_database": True},
            "batch": {"max_points": 500, "max_wait_s": 0.2},
            "retry": {"initial_backoff_s": 0.2, "max_backoff_s": 1.0},
            "metrics": {"port": 0},
        }
        for key, extra in sections.items():
            cfg[key].update(extra)
        lines = []
        for section, values in cfg.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        path = self.tmp / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_sink(self, name: str = "sink", **sections: dict[str, Any]) -> subprocess.Popen[bytes]:
        config = self.config(name, **sections)
        log = (self.tmp / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gapwatch", "sink", "--config", str(config), "--log-format",
             "json", "--log-level", "DEBUG"],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log_events(self, name: str = "sink") -> list[dict[str, Any]]:
        out = []
        for line in (self.tmp / f"{name}.log").read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def count(self, measurement: str = "readings") -> int:
        client = self.client()
        try:
            series = client.query(f'SELECT COUNT("revision") FROM "{measurement}"')
        finally:
            client.close()
        return int(series[0].values[0][1]) if series else 0

    def committed(self) -> dict[int, int]:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = admin.list_group_offsets(self.group).get(self.group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == self.topic}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=60)


@contextlib.contextmanager
def open_stack(
    bootstrap: str, influx_url: str, make_name: Callable[[str], str], tmp: Path
) -> Iterator[Stack]:
    """Fresh topics (4 partitions + dead letters), group and database; removed afterwards."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError

    s = Stack(
        bootstrap=bootstrap,
        influx_url=influx_url,
        topic=make_name("scored"),
        deadletter=make_name("dead"),
        group=make_name("group"),
        db=make_name("db").replace("-", "_"),
        tmp=tmp,
    )
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(s.topic, 4, 1), NewTopic(s.deadletter, 1, 1)])
    client = s.client()
    client.create_database()
    client.close()
    try:
        yield s
    finally:
        for proc in s.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        with contextlib.suppress(KafkaError):
            admin.delete_topics([s.topic, s.deadletter])
        admin.close()
        client = s.client()
        with contextlib.suppress(StorageError):
            client.drop_database()
        client.close()


@pytest.fixture
def stack(
    kafka_bootstrap: str,
    influx_url: str,
    make_unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Stack]:
    with open_stack(kafka_bootstrap, influx_url, make_unique_name, tmp_path) as s:
        yield s


def test_records_become_the_expected_points(stack: Stack, free_port: int) -> None:
    ticks = [make_tick(i) for i in range(40)]
    revised = make_tick(8, values={"Pressure": 99.0, "Current": 98.0}, imputed=(), revision=1)
    stack.produce_ticks([*ticks, revised])
    proc = stack.start_sink(metrics={"port": free_port, "host": "127.0.0.1"})
    wait_for("40 points", lambda: stack.count() == 40)
    wait_for("all 41 offsets committed", lambda: sum(stack.committed().values()) == 41)

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5).read()
    assert b'gapwatch_sink_records_total{outcome="written"} 41.0' in metrics
    assert stop(proc) == 0

    client = stack.client()
    series = client.query('SELECT * FROM "readings" GROUP BY "site", "device"')
    alarms = client.query('SELECT * FROM "anomalies" GROUP BY "device"')
    client.close()
    got = {}
    for s in series:
        for row in s.values:
            fields = {c: v for c, v in zip(s.columns, row, strict=True) if v is not None}
            got[(s.tags["device"], fields.pop("time"))] = fields
    assert len(got) == 40
    for sent in ticks:
        fields = got[(sent.device, sent.ts_ms)]
        t = revised if (sent.device, sent.ts_ms) == (revised.device, revised.ts_ms) else sent
        assert fields["Pressure"] == t.values["Pressure"]
        assert fields.get("Current") == t.values["Current"]
        assert fields["Current_imputed"] is ("Current" in t.imputed)
        assert fields.get("Current_sigma") == t.sigma.get("Current")
        assert fields["score"] == pytest.approx(t.score, rel=0, abs=0)
        assert fields["anomaly"] is t.anomaly
        assert fields["revision"] == t.revision
        assert fields["model_version"] == "v1"
    alarm_points = {(s.tags["device"], row[0]) for s in alarms for row in s.values}
    expected = {(t.device, t.ts_ms) for t in ticks if t.anomaly} | {(revised.device, revised.ts_ms)}
    assert alarm_points == expected


def test_poison_records_land_in_the_dead_letter_topic(stack: Stack) -> None:
    from kafka import KafkaConsumer

    bad_schema = json.dumps(dict(make_tick(1).to_dict(), schema=9)).encode()
    reserved = make_tick(2, values={"time": 1.0}, imputed=(), sigma={})
    # InfluxDB itself refuses these two (400): a time past 2262, and a float written to a
    # field that is boolean in this shard ("Pressure_imputed" of the first record).
    far_future = make_tick(3, ts_ms=9_300_000_000_000_000)
    type_clash = make_tick(4, values={"Pressure_imputed": 1.0}, imputed=(), sigma={})
    # The good record goes first and is stored before the rest is produced: the type clash
    # below needs "Pressure_imputed" to be boolean in the shard already, and records of
    # different partitions reach the sink in no fixed order.
    stack.produce([(b"k-ok", make_tick(0).encode())])
    proc = stack.start_sink()
    wait_for("the first good point", lambda: stack.count() == 1)
    stack.produce(
        [
            (b"k-json", b"\x00not json"),
            (b"k-schema", bad_schema),
            (b"k-name", reserved.encode()),
            (b"k-time", far_future.encode()),
            (b"k-type", type_clash.encode()),
            (b"k-ok2", make_tick(5).encode()),
        ]
    )
    consumer = KafkaConsumer(
        stack.deadletter,
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=30000,
    )
    letters = {}
    for record in consumer:
        letters[record.key] = DeadLetter.decode(record.value)
        if len(letters) == 5:
            break
    consumer.close()
    wait_for("2 good points", lambda: stack.count() == 2)
    wait_for("7 offsets committed", lambda: sum(stack.committed().values()) == 7)
    assert stop(proc) == 0
    assert {k: v.reason for k, v in letters.items()} == {
        b"k-json": "not_json",
        b"k-schema": "bad_schema",
        b"k-name": "unencodable",
        b"k-time": "rejected",
        b"k-type": "rejected",
    }
    assert letters[b"k-json"].raw == b"\x00not json"
    assert "400" in letters[b"k-type"].detail
    assert all(v.component == "sink" for v in letters.values())


def test_a_surrogate_name_or_a_name_collision_never_stops_the_sink(stack: Stack) -> None:
    """Issue 16: ``"device": "pump-\\ud800"`` passed the schema and crashed the sink's loop
    (UnicodeEncodeError in lineproto); restarted, it read the same record again."""
    from kafka import KafkaConsumer

    def with_surrogate(tick: ScoredTick) -> bytes:
        return tick.encode().replace(b"@@", b"\\ud800")  # JSON text with a lone surrogate

    poison = [
        (b"k-device", with_surrogate(make_tick(1, device="pump-@@"))),
        (b"k-channel", with_surrogate(make_tick(2, values={"Pressure": 1.0, "C@@": 2.0},
                                                imputed=(), sigma={}))),
        (b"k-model", with_surrogate(make_tick(3, model="skab-@@"))),
        (b"k-clash", make_tick(4, values={"x": 1.0, "x_imputed": 2.0}, imputed=(), sigma={})
         .encode()),
    ]  # fmt: skip
    good = [make_tick(i, devices=2) for i in range(10, 30)]
    stack.produce([*poison, *((t.key.encode(), t.encode()) for t in good)])
    proc = stack.start_sink()
    wait_for("20 good points", lambda: stack.count() == 20)
    wait_for("all 24 offsets committed", lambda: sum(stack.committed().values()) == 24)
    assert proc.poll() is None, "the sink stopped"
    consumer = KafkaConsumer(
        stack.deadletter,
        bootstrap_servers=stack.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=30000,
    )
    letters = {}
    for record in consumer:
        letters[record.key] = DeadLetter.decode(record.value)
        if len(letters) == 4:
            break
    consumer.close()
    assert stop(proc) == 0
    assert {k: v.reason for k, v in letters.items()} == {
        b"k-device": "bad_name",
        b"k-channel": "bad_name",
        b"k-model": "bad_name",
        b"k-clash": "name_collision",
    }
    assert letters[b"k-device"].raw == poison[0][1]  # the record as it came
    assert "'x_imputed' collides" in letters[b"k-clash"].detail


def test_killed_mid_batch_and_restarted_loses_nothing_and_duplicates_nothing(stack: Stack) -> None:
    n = 24_000  # >= 240 sequential writes of 100 points: the kill cannot miss the stream
    stack.produce_ticks([make_tick(i, devices=12) for i in range(n)])
    slow = {"batch": {"max_points": 100, "max_wait_s": 0.2}}  # many batches: kill lands mid-run
    proc = stack.start_sink("first", **slow)
    wait_for("some points", lambda: stack.count() > 0)
    proc.kill()
    proc.wait(timeout=30)
    written_before = stack.count()
    assert 0 < written_before < n, "the kill should land mid-stream"
    proc = stack.start_sink("second", **slow)
    wait_for(f"{n} points", lambda: stack.count() == n, timeout_s=120)
    wait_for("all offsets committed", lambda: sum(stack.committed().values()) == n)
    assert stop(proc) == 0
    assert stack.count() == n
    assert stack.count("anomalies") == len([i for i in range(n) if i % 11 == 0])


def test_two_sinks_in_one_group_split_the_partitions(stack: Stack) -> None:
    first = stack.start_sink("a")
    second = stack.start_sink("b")

    def assigned(name: str) -> list[str] | None:
        events = [e for e in stack.log_events(name) if e["event"] == "sink.partitions_assigned"]
        return events[-1]["partitions"] if events else None

    def split() -> bool:
        a, b = assigned("a"), assigned("b")
        return bool(a) and bool(b) and len(set(a or []) | set(b or [])) == 4

    wait_for("both sinks to own partitions", split)
    a, b = set(assigned("a") or []), set(assigned("b") or [])
    assert not (a & b)
    n = 2000
    stack.produce_ticks([make_tick(i, devices=16) for i in range(n)])
    wait_for(f"{n} points", lambda: stack.count() == n, timeout_s=120)
    wait_for("all offsets committed", lambda: sum(stack.committed().values()) == n)
    assert stop(first) == 0
    assert stop(second) == 0
    written = {
        name: sum(
            e["stats"]["records"] for e in stack.log_events(name) if e["event"] == "sink.stopped"
        )
        for name in ("a", "b")
    }
    assert written["a"] > 0 and written["b"] > 0
    assert written["a"] + written["b"] == n


# ---------------------------------------------------------------- InfluxDB outage
# A private influxd on free ports with a temporary data directory, so stopping it does not
# disturb the shared stack or other tests.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PrivateInflux:
    def __init__(self, root: Path) -> None:
        self.root = root / "influxd"
        self.root.mkdir()
        root = self.root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = root / "influxdb.conf"
        self.conf.write_text(
            f"""
reporting-disabled = true
bind-address = "127.0.0.1:{_free_port()}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                return bool(resp.status == 204)
        except OSError:
            return False

    def start(self) -> None:
        log = (self.root / "influxd.log").open("ab")
        self.proc = subprocess.Popen(
            [influxd_path(), "-config", str(self.conf)], stdout=log, stderr=log
        )
        wait_for("private influxd to answer /ping", self._ping, timeout_s=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None


def influxd_path() -> str:
    found = shutil.which("influxd") or shutil.which("influxd", path="/usr/bin:/usr/sbin")
    if found is None:
        pytest.skip("influxd is not installed (deploy/local/stack install)")
    return found


@pytest.fixture
def private_influx(tmp_path: Path) -> Iterator[PrivateInflux]:
    server = PrivateInflux(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack_on_private_influx(
    kafka_bootstrap: str,
    private_influx: PrivateInflux,
    make_unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Stack]:
    with open_stack(kafka_bootstrap, private_influx.url, make_unique_name, tmp_path) as s:
        yield s


def test_influx_down_mid_run_then_up_loses_nothing(
    stack_on_private_influx: Stack, private_influx: PrivateInflux
) -> None:
    stack = stack_on_private_influx
    proc = stack.start_sink(retry={"initial_backoff_s": 0.2, "max_backoff_s": 1.0})
    stack.produce_ticks([make_tick(i) for i in range(400)])
    wait_for("400 points", lambda: stack.count() == 400)
    wait_for("400 offsets committed", lambda: sum(stack.committed().values()) == 400)

    private_influx.stop()
    stack.produce_ticks([make_tick(i) for i in range(400, 1000)])
    wait_for(
        "the sink to retry",
        lambda: any(e["event"] == "sink.write_retry" for e in stack.log_events()),
    )
    time.sleep(1.5)  # several retries while InfluxDB is down
    assert proc.poll() is None, "the sink must keep retrying, not exit"
    assert sum(stack.committed().values()) == 400, "offsets must not move while InfluxDB is down"

    private_influx.start()
    wait_for("1000 points", lambda: stack.count() == 1000, timeout_s=90)
    wait_for("1000 offsets committed", lambda: sum(stack.committed().values()) == 1000)
    assert stop(proc) == 0
    assert stack.count() == 1000
