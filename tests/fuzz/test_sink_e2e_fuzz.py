"""End-to-end fuzz of the real sink: 20,000 hostile Kafka records, valid ticks between them.

``gapwatch sink`` runs as a subprocess on the shared stack (Kafka, InfluxDB 1.x) with its own
topic (one partition, so offsets name records) and database. ``hostile.sink_inputs`` (seeded:
``GAPWATCH_FUZZ_SEED``) makes binary garbage, raw surrogate bytes, truncated JSON, non-objects,
unknown schema versions, missing fields, wrong types, NaN/Infinity/1e400, timestamps beyond
InfluxDB's range, nesting 50,000 deep, records of thousands of channels or 200 KB strings and
tombstones, with a valid tick of four good devices after every ten. Asserted:

* the sink never dies, and exits 0 on SIGTERM;
* every record is accounted for: points in ``readings`` + dead letters == records; each dead
  letter names one record (``kafka:<topic>/0@<offset>``), once, with a reason its category
  allows; categories that can never be a point (not JSON, wrong schema, tombstones...) are all
  dead letters;
* the good data between the bad is delivered: every valid tick is in InfluxDB with its values.

Lone surrogates in names (escaped, or as raw UTF-8-encoded surrogate bytes, which Python's json
reader accepts) and a record whose dead letter is over Kafka's record limit broke the sink on
the main of issue 16; they have their own tests, expected to fail until issue-16a lands.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from edge.schema import DeadLetter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTILE = int(os.environ.get("GAPWATCH_FUZZ_E2E_INPUTS", "20000"))
T0_MS = 1_764_000_000_000  # 2025-11-24: well inside InfluxDB's range, outside every other test's
NEVER_A_POINT = {
    "binary": {"not_json"},
    "not_json": {"not_json"},
    "deep": {"not_json"},
    "not_object": {"bad_schema"},
    "bad_schema_version": {"bad_schema"},
    "missing_field": {"bad_schema"},
    "non_finite": {"bad_schema"},
    "tombstone": {"empty"},
}
MAY_BE_A_POINT = {  # None: written as a point
    "wrong_types": {None, "bad_schema", "unencodable", "rejected"},
    "extreme_ts": {None, "bad_schema", "unencodable", "rejected"},
    "huge": {None, "unencodable", "rejected"},
    "valid": {None},
}


class _Letters:
    """A dead-letter topic read from the start, kept open so each call adds what is new."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.values: list[bytes] = []

    def poll(self) -> int:
        for records in self.consumer.poll(timeout_ms=500, max_records=50_000).values():
            self.values.extend(bytes(r.value) for r in records)
        return len(self.values)

    def close(self) -> None:
        self.consumer.close()


def _points(influx_url: str, database: str) -> int:
    from pipeline.errors import PipelineError
    from pipeline.influx import Influx1Client

    client = Influx1Client(influx_url, database, timeout_s=10)
    try:
        series = client.query('SELECT count("revision") FROM "readings"')
    except PipelineError:
        return 0
    finally:
        client.close()
    return sum(int(row[1]) for s in series for row in s.values)


def _good_points(influx_url: str, database: str) -> dict[tuple[str, int], tuple[float, ...]]:
    """``(device, ts_ms) -> (c0, c1, c2)`` of site ``fz``'s good devices; {} before the
    sink made the database."""
    from pipeline.errors import PipelineError
    from pipeline.influx import Influx1Client

    client = Influx1Client(influx_url, database, timeout_s=10)
    try:
        series = client.query(
            'SELECT "c0", "c1", "c2" FROM "readings" WHERE "site" = \'fz\' GROUP BY "device"'
        )
    except PipelineError:
        return {}
    finally:
        client.close()
    return {
        (str(s.tags.get("device")), int(row[0])): tuple(row[1:])
        for s in series
        for row in s.values
        if str(s.tags.get("device", "")).startswith("good-")
    }


@pytest.fixture
def fuzz_sink(
    tmp_path: Path,
    fuzz_harness: ModuleType,
    kafka_bootstrap: str,
    influx_url: str,
    make_unique_name: Callable[[str], str],
) -> Iterator[Callable[[], Any]]:
    """``make() -> harness.Sink`` (started) on a fresh one-partition topic and database."""
    from kafka.admin import KafkaAdminClient, NewTopic

    sinks: list[Any] = []

    def make() -> Any:
        topic, database = make_unique_name("fuzz"), make_unique_name("fuzz").replace("-", "_")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            admin.close()
        workdir = tmp_path / f"sink-{len(sinks)}"
        workdir.mkdir()
        env = fuzz_harness.sink_env(
            kafka_bootstrap=kafka_bootstrap, topic=topic, influx_url=influx_url, database=database
        )
        sink = fuzz_harness.Sink(env, workdir)
        sink.topic, sink.database = topic, database  # type: ignore[attr-defined]
        sinks.append(sink)
        sink.start()
        return sink

    try:
        yield make
    finally:
        for sink in sinks:
            sink.kill()


def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> list[int]:
    """Produce in order; return each record's offset."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
        max_in_flight_requests_per_connection=1,
    )
    try:
        futures = [producer.send(topic, value=v, key=b"fuzz") for v in values]
        producer.flush(120)
        return [int(f.get(timeout=60).offset) for f in futures]
    finally:
        producer.close()


def offset_of(letter: DeadLetter) -> int:
    return int(letter.source.rsplit("@", 1)[1])


def test_twenty_thousand_hostile_records_are_accounted_for_and_valid_ticks_written(
    fuzz_sink: Callable[[], Any],
    fuzz_harness: ModuleType,
    fuzz_hostile: ModuleType,
    fuzz_seed: int,
    kafka_bootstrap: str,
    influx_url: str,
) -> None:
    h = fuzz_harness
    sink = fuzz_sink()
    inputs = fuzz_hostile.sink_inputs(fuzz_seed, HOSTILE, T0_MS)
    started = time.monotonic()
    offsets = produce(kafka_bootstrap, sink.topic, [i.value for i in inputs])
    assert offsets == list(range(len(inputs))), "one partition, offsets from 0"
    produced_s = time.monotonic() - started
    letters = _Letters(kafka_bootstrap, f"{sink.topic}.sink-deadletter")
    seen = {"points": 0, "letters": 0, "stable": 0}

    def accounted() -> bool:
        assert sink.proc is not None and sink.proc.poll() is None, sink.log_text()
        now = (_points(influx_url, sink.database), letters.poll())
        done = sum(now) >= len(inputs) and now == (seen["points"], seen["letters"])
        seen.update(points=now[0], letters=now[1], stable=seen["stable"] + 1 if done else 0)
        return seen["stable"] >= 3  # the same counts three polls running

    try:
        h.wait_until("every record written or dead-lettered", accounted, 240)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}\n{sink.log_text()}") from None
    finally:
        letters.close()
    assert sink.stop() == 0, sink.log_text()
    elapsed = time.monotonic() - started

    decoded = [DeadLetter.decode(v) for v in letters.values]
    by_offset = Counter(offset_of(d) for d in decoded)
    reason = {offset_of(d): d.reason for d in decoded}
    outcomes = Counter((i.category, reason.get(k)) for k, i in enumerate(inputs))
    print(f"\nsink e2e fuzz, seed {fuzz_seed}: {len(inputs)} records produced in")
    print(f"  {produced_s:.1f} s, accounted in {elapsed:.1f} s: {seen['points']} points + ")
    print(f"  {seen['letters']} dead letters")
    for category, n in sorted(Counter(i.category for i in inputs).items()):
        got = {str(r) if r else "point": c for (cat, r), c in outcomes.items() if cat == category}
        print(f"  {category:18} {n:6}  {got}")
    assert [k for k, n in by_offset.items() if n > 1] == [], "a record dead-lettered twice"
    assert set(by_offset) <= set(range(len(inputs))), "a dead letter of no record"
    assert seen["points"] + seen["letters"] == len(inputs), "records neither written nor letters"
    allowed = {
        **{c: set(r) for c, r in NEVER_A_POINT.items()},
        **{c: set(r) for c, r in MAY_BE_A_POINT.items()},
    }
    unexpected = {(c, r): n for (c, r), n in outcomes.items() if r not in allowed[c]}
    assert unexpected == {}, f"outcomes no category allows: {unexpected}"

    # the good data behind the bad is in InfluxDB, as produced
    good = _good_points(influx_url, sink.database)
    valid = [i for i in inputs if i.category == "valid"]
    lost = [i.key for i in valid if (i.key[1], i.key[2]) not in good]
    assert lost == [], f"{len(lost)} valid ticks not in InfluxDB, e.g. {lost[:5]}"
    altered = [
        i.key
        for i in valid
        if not all(
            math.isclose(got, want, rel_tol=1e-9)
            for got, want in zip(
                good[(i.key[1], i.key[2])],
                json.loads(i.value or b"{}")["values"].values(),
                strict=True,
            )
        )
    ]
    assert altered == [], f"{len(altered)} valid ticks written with other values: {altered[:5]}"


def _poison_then_valid(
    fuzz_sink: Callable[[], Any],
    fuzz_harness: ModuleType,
    fuzz_hostile: ModuleType,
    kafka_bootstrap: str,
    influx_url: str,
    poison: list[bytes],
    reasons: set[str],
) -> list[DeadLetter]:
    """Each poison record followed by valid ticks: each poison one dead letter with a reason
    in ``reasons``, the sink lives and exits 0, and every valid tick is written."""
    sink = fuzz_sink()
    values: list[bytes | None] = []
    want = set()
    for k, p in enumerate([*poison, None]):
        if p is not None:
            values.append(p)
        for j in range(3):
            ts = T0_MS + 1000 * (3 * k + j)
            body = fuzz_hostile.scored_body("fz", "good-0", ts, {"c0": 1.0, "c1": 2.0, "c2": 3.0})
            values.append(json.dumps(body).encode())
            want.add(("good-0", ts))
    produce(kafka_bootstrap, sink.topic, values)

    def written() -> bool:
        assert sink.proc is not None and sink.proc.poll() is None, f"died:\n{sink.log_text()}"
        return want <= set(_good_points(influx_url, sink.database))

    fuzz_harness.wait_until("the valid ticks behind the poison in InfluxDB", written, 45)
    letters = fuzz_harness.read_topic(
        kafka_bootstrap, f"{sink.topic}.sink-deadletter", lambda vs: len(vs) >= len(poison), 20
    )
    assert sink.stop() == 0, sink.log_text()
    decoded = [DeadLetter.decode(v) for v in letters]
    assert sorted(offset_of(d) for d in decoded) == [4 * k for k in range(len(poison))]
    assert {d.reason for d in decoded} <= reasons, [d.reason for d in decoded]
    return decoded


def test_lone_surrogates_in_names_are_bad_name_dead_letters(
    fuzz_sink: Callable[[], Any],
    fuzz_harness: ModuleType,
    fuzz_hostile: ModuleType,
    kafka_bootstrap: str,
    influx_url: str,
) -> None:
    def with_name(field: str, name: str, raw_bytes: bool) -> bytes:
        body = fuzz_hostile.scored_body("fz", "pump", T0_MS - 10_000, {"c0": 1.0})
        marker = "SURROGATE"
        if field == "values":
            body["values"] = {marker: 1.0}
        else:
            body[field] = marker
        text = json.dumps(body).encode()
        return text.replace(
            marker.encode(), name.encode("utf-8", "surrogatepass") if raw_bytes else
            name.encode("unicode_escape")
        )  # fmt: skip

    poison = [
        with_name("device", "pump-\ud800", False),
        with_name("site", "\udfff", False),
        with_name("values", "x\ud800", False),
        with_name("device", "pump-\ud800", True),  # raw bytes ED A0 80: json.loads takes them
        with_name("values", "\udbff", True),
    ]
    _poison_then_valid(
        fuzz_sink, fuzz_harness, fuzz_hostile, kafka_bootstrap, influx_url, poison, {"bad_name"}
    )


def test_a_record_whose_dead_letter_is_over_kafkas_limit_blocks_nothing(
    fuzz_sink: Callable[[], Any],
    fuzz_harness: ModuleType,
    fuzz_hostile: ModuleType,
    kafka_bootstrap: str,
    influx_url: str,
) -> None:
    import random

    junk = bytes([0xFF]) + random.Random(7).randbytes(900_000)  # base64 in the letter: 1.2 MB
    (letter,) = _poison_then_valid(
        fuzz_sink, fuzz_harness, fuzz_hostile, kafka_bootstrap, influx_url, [junk], {"not_json"}
    )
    assert getattr(letter, "raw_len", None) == len(junk)
    assert len(letter.raw) <= 16 * 1024
