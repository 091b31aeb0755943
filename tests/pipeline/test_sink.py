"""The sink's consume loop against the in-package fakes: at least once, no loss, dead letters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from edge.schema import ScoredTick
from pipeline.errors import SinkGaveUp, StorageError
from pipeline.fakes import FakeClock, FakeDeadLetters, FakeInflux, FakeRecordSource
from pipeline.metrics import SinkMetrics
from pipeline.sink import Sink, SinkSettings

TOPIC = "gapwatch.scored"


def tick(device: str = "pump-1", ts_ms: int = 1_700_000_000_000, **over: object) -> ScoredTick:
    base: dict[str, object] = {
        "site": "lab",
        "device": device,
        "ts_ms": ts_ms,
        "values": {"Pressure": 0.25, "Current": 1.5},
        "imputed": ("Current",),
        "sigma": {"Current": 0.1},
        "score": 0.7,
        "smoothed": 0.6,
        "threshold": 2.5,
        "anomaly": False,
        "top_channels": (),
        "model": "skab",
        "model_version": "v1",
    }
    base.update(over)
    return ScoredTick(**base)  # type: ignore[arg-type]


@dataclass
class Rig:
    source: FakeRecordSource
    influx: FakeInflux
    letters: FakeDeadLetters
    clock: FakeClock
    sink: Sink
    metrics: SinkMetrics
    registry: CollectorRegistry

    def run(self) -> None:
        self.source.on_empty = self.sink.request_stop
        self.sink.run()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def rig(influx: FakeInflux | None = None, **settings: object) -> Rig:
    source, letters, clock = FakeRecordSource(TOPIC), FakeDeadLetters(), FakeClock()
    influx = influx or FakeInflux()
    registry = CollectorRegistry()
    metrics = SinkMetrics.create(registry)
    base: dict[str, object] = {"max_points": 100, "max_wait_s": 1.0, "stop_grace_s": 5.0}
    base.update(settings)
    sink = Sink(
        source,
        influx,
        letters,
        clock,
        settings=SinkSettings(**base),  # type: ignore[arg-type]
        metrics=metrics,
    )
    return Rig(source, influx, letters, clock, sink, metrics, registry)


def readings(influx: FakeInflux) -> dict[tuple[str, int], dict[str, object]]:
    return {(tags["device"], t): fields for tags, t, fields in influx.rows("readings")}


def test_records_become_points_and_offsets_are_committed_after_the_write() -> None:
    r = rig()
    for i in range(10):
        r.source.add(tick(ts_ms=1_700_000_000_000 + i * 1000).encode(), partition=i % 2)
    r.run()
    got = readings(r.influx)
    assert len(got) == 10
    first = got[("pump-1", 1_700_000_000_000)]
    assert first["Pressure"] == 0.25
    assert first["Current_imputed"] is True
    assert first["Current_sigma"] == 0.1
    assert first["model_version"] == "v1"
    assert r.source.committed == {(TOPIC, 0): 5, (TOPIC, 1): 5}
    assert r.sink.stats.points == 10
    assert r.metric("gapwatch_sink_records_total", outcome="written") == 10
    assert r.metric("gapwatch_sink_points_written_total") == 10


def test_batches_are_cut_by_size() -> None:
    r = rig(max_points=4)
    for i in range(10):
        r.source.add(tick(ts_ms=i).encode())
    r.run()
    assert r.influx.writes == 3
    assert [c[(TOPIC, 0)] for c in r.source.commits] == [4, 8, 10]


def test_a_poll_spanning_several_batches_commits_each_batch_with_its_own_offsets() -> None:
    r = rig(max_points=3)
    r.source.add(tick(ts_ms=0).encode())  # offset 0: 1 point
    r.source.add(b"{not json")  # 1: dead letter
    r.source.add(tick(ts_ms=2, anomaly=True).encode())  # 2: 2 points, the batch is full
    r.source.add(tick(ts_ms=3, revision=1).encode())  # 3: 2 points
    r.source.add(tick(ts_ms=3, revision=0).encode())  # 4: stale
    r.source.add(tick(ts_ms=5).encode())  # 5: 1 point, full again
    r.source.add(tick(ts_ms=6).encode())  # 6: 1 point, written at stop
    r.source.add(tick(ts_ms=7).encode(), partition=1)  # another partition, same poll
    r.run()
    assert r.source.polls >= 1
    assert [dict(c) for c in r.source.commits] == [
        {(TOPIC, 0): 3},
        {(TOPIC, 0): 6},
        {(TOPIC, 0): 7, (TOPIC, 1): 1},
    ]
    assert r.influx.writes == 3
    st = r.sink.stats
    assert (st.records, st.written, st.points, st.deadletters, st.stale) == (8, 6, 8, 1, 1)
    assert r.metric("gapwatch_sink_records_total", outcome="written") == 6
    assert r.metric("gapwatch_sink_pending_records") == 0


def test_every_commit_covers_only_records_influx_already_holds() -> None:
    r = rig(max_points=7)
    n = 60
    for i in range(n):
        r.source.add(tick(ts_ms=i).encode(), partition=i % 3)
    seen: list[tuple[dict[tuple[str, int], int], set[int]]] = []
    commit = r.source.commit

    def checked_commit(offsets: Mapping[tuple[str, int], int]) -> None:
        seen.append((dict(offsets), {t for (_, t) in readings(r.influx)}))
        commit(offsets)

    r.source.commit = checked_commit  # type: ignore[method-assign]
    r.run()
    assert len(seen) == r.influx.writes > 3
    committed: dict[tuple[str, int], int] = {}
    for offsets, written in seen:
        for (_, partition), offset in offsets.items():
            assert offset >= committed.get((TOPIC, partition), 0)  # commits move forward only
            committed[(TOPIC, partition)] = offset
            # offset o of partition p holds the tick at ts_ms = 3 * o + p
            assert {3 * o + partition for o in range(offset)} <= written
    assert committed == {(TOPIC, 0): 20, (TOPIC, 1): 20, (TOPIC, 2): 20}


def test_batches_are_cut_by_age() -> None:
    r = rig(max_points=1000, max_wait_s=1.0)
    r.source.add(tick(ts_ms=1).encode())
    r.sink.poll_once()
    assert r.influx.writes == 0
    r.clock.advance(1.5)
    r.sink.poll_once()
    r.sink.poll_once()  # collects the finished write and commits it
    assert r.influx.writes == 1
    assert r.source.committed == {(TOPIC, 0): 1}


def test_influx_outage_is_retried_with_bounded_backoff_and_nothing_is_lost() -> None:
    influx = FakeInflux()
    influx.outages = 7
    r = rig(influx, initial_backoff_s=0.5, max_backoff_s=4.0, stop_grace_s=100.0)
    for i in range(5):
        r.source.add(tick(ts_ms=i).encode())
    r.run()
    assert len(readings(influx)) == 5
    assert r.clock.waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert r.source.commits == [{(TOPIC, 0): 5}]
    assert r.metric("gapwatch_sink_write_failures_total", kind="unavailable") == 7


def test_offsets_do_not_move_while_influx_is_down_and_give_up_surfaces() -> None:
    influx = FakeInflux()
    influx.outages = 10**9
    r = rig(influx, give_up_after_s=60.0, max_backoff_s=10.0, stop_grace_s=1000.0)
    r.source.add(tick().encode())
    with pytest.raises(SinkGaveUp, match="give_up_after_s"):
        r.run()
    assert r.source.commits == []
    assert influx.points == {}


def test_stop_during_an_outage_returns_after_the_grace_period_without_committing() -> None:
    influx = FakeInflux()
    influx.outages = 10**9
    r = rig(influx, stop_grace_s=5.0, max_backoff_s=1.0)
    r.source.add(tick().encode())
    r.run()  # the source asks to stop once drained; the write never succeeds
    assert r.source.commits == []
    assert sum(r.clock.waits) <= 5.0 + 1.0


def test_poison_records_go_to_dead_letters_and_the_sink_moves_on() -> None:
    r = rig()
    r.source.add(tick(ts_ms=1).encode(), key=b"lab/pump-1")
    r.source.add(b"{not json", key=b"k1")
    bad_schema = dict(tick().to_dict(), schema=7)
    r.source.add(json.dumps(bad_schema).encode(), key=b"k2")
    r.source.add(tick(values={"score": 1.0}, imputed=(), sigma={}).encode(), key=b"k3")
    r.source.add(None, key=b"k4")
    r.source.add(tick(ts_ms=2).encode())
    r.run()
    reasons = [(letter.reason, key) for letter, key in r.letters.letters]
    assert reasons == [
        ("not_json", b"k1"),
        ("bad_schema", b"k2"),
        ("unencodable", b"k3"),
        ("empty", b"k4"),
    ]
    first = r.letters.letters[0][0]
    assert first.component == "sink"
    assert first.raw == b"{not json"
    assert first.source == f"kafka:{TOPIC}/0@1"
    assert first.received_ms == int(r.clock.time() * 1000)
    assert len(readings(r.influx)) == 2
    assert r.source.committed == {(TOPIC, 0): 6}
    assert r.metric("gapwatch_sink_deadletters_total", reason="not_json") == 1


def test_a_point_influx_rejects_is_found_by_bisection_and_dead_lettered() -> None:
    influx = FakeInflux(reject=lambda line: "device=bad" in line)
    r = rig(influx)
    for i in range(9):
        r.source.add(tick(device="bad" if i == 6 else "ok", ts_ms=i).encode())
    r.run()
    assert [(letter.reason, letter.source) for letter, _ in r.letters.letters] == [
        ("rejected", f"kafka:{TOPIC}/0@6")
    ]
    assert "partial write" in r.letters.letters[0][0].detail
    assert sorted(t for (_, t) in readings(influx)) == [0, 1, 2, 3, 4, 5, 7, 8]
    assert r.source.committed == {(TOPIC, 0): 9}
    assert r.sink.stats.written == 8


def test_dead_letter_outage_holds_the_commit_until_letters_are_out() -> None:
    r = rig()
    r.letters.outages = 2
    r.source.add(b"garbage")
    r.run()
    assert len(r.letters.letters) == 1
    assert r.source.commits == [{(TOPIC, 0): 1}]
    assert len(r.clock.waits) == 2


def test_an_older_revision_never_overwrites_a_newer_one() -> None:
    r = rig()
    r.source.add(tick(revision=1, values={"Pressure": 2.0, "Current": 1.0}).encode())
    r.source.add(tick(revision=0, values={"Pressure": 1.0, "Current": 1.0}).encode())
    r.run()
    point = readings(r.influx)[("pump-1", 1_700_000_000_000)]
    assert point["revision"] == 1
    assert point["Pressure"] == 2.0
    assert r.sink.stats.stale == 1
    assert r.source.committed == {(TOPIC, 0): 2}


def test_revision_in_order_overwrites_the_same_point() -> None:
    r = rig()
    r.source.add(tick(revision=0, values={"Pressure": 1.0, "Current": None}).encode())
    r.source.add(tick(revision=1, values={"Pressure": 1.0, "Current": 3.0}).encode())
    r.run()
    rows = readings(r.influx)
    assert len(rows) == 1
    point = rows[("pump-1", 1_700_000_000_000)]
    assert (point["revision"], point["Current"]) == (1, 3.0)


def test_replaying_the_same_records_adds_no_points() -> None:
    r = rig()
    for _ in range(2):
        for i in range(5):
            r.source.add(tick(ts_ms=i, anomaly=i == 3, top_channels=("Pressure",)).encode())
    r.run()
    assert len(readings(r.influx)) == 5
    assert len(r.influx.rows("anomalies")) == 1


def test_a_refused_commit_is_counted_and_the_sink_goes_on() -> None:
    r = rig(max_points=2)
    r.source.fail_commits = 1
    for i in range(4):
        r.source.add(tick(ts_ms=i).encode())
    r.run()
    assert r.sink.stats.commit_failures == 1
    assert r.source.committed == {(TOPIC, 0): 4}
    assert len(readings(r.influx)) == 4


def test_revoked_partitions_get_their_batch_written_and_committed() -> None:
    r = rig(max_points=1000)
    for i in range(3):
        r.source.add(tick(ts_ms=i).encode())
    r.sink.poll_once()
    assert r.source.commits == []
    r.sink.partitions_revoked()
    assert r.source.committed == {(TOPIC, 0): 3}
    assert len(readings(r.influx)) == 3


def test_revoke_during_an_outage_drops_the_batch_uncommitted() -> None:
    influx = FakeInflux()
    influx.outages = 10**9
    r = rig(influx, max_points=1000, revoke_timeout_s=3.0)
    r.source.add(tick().encode())
    r.sink.poll_once()
    r.sink.partitions_revoked()
    assert r.source.commits == []
    influx.outages = 0
    r.source.add(tick(ts_ms=5).encode())
    r.run()
    assert r.source.committed == {(TOPIC, 0): 2}
    assert [t for (_, t) in readings(influx)] == [5]  # the dropped record is the next owner's


def test_fatal_storage_errors_stop_the_sink_without_commit() -> None:
    class Forbidden(FakeInflux):
        def write(self, body: bytes) -> None:
            raise StorageError("403: the user needs WRITE on the database")

    r = rig(Forbidden())
    r.source.add(tick().encode())
    with pytest.raises(StorageError, match="403"):
        r.run()
    assert r.source.commits == []


def _with_surrogate(body: dict[str, object]) -> bytes:
    """The record as JSON text, its placeholder ``@@`` spelled as a lone surrogate escape."""
    return json.dumps(body).replace("@@", "\\ud800").encode()


@pytest.mark.parametrize(
    "where",
    ["site", "device", "model", "model_version", "channel", "imputed", "top_channels"],
)
def test_a_lone_surrogate_in_a_name_is_a_dead_letter_and_the_sink_goes_on(where: str) -> None:
    # issue 16: `"device": "pump-\ud800"` passed ScoredTick.decode and crashed the loop with
    # UnicodeEncodeError in lineproto; under Restart=on-failure it re-read the same record.
    body = tick(anomaly=True, top_channels=("Pressure",)).to_dict()
    if where == "channel":
        body["values"] = {"Pressure": 0.25, "Cur@@": 1.5}
        body["imputed"], body["sigma"] = [], {}
    elif where == "imputed":
        body["values"] = {"Pressure": 0.25, "Cur@@": 1.5}
        body["imputed"], body["sigma"] = ["Cur@@"], {"Cur@@": 0.1}
    elif where == "top_channels":
        body["top_channels"] = ["Press@@"]
    else:
        body[where] = f"{body[where]}-@@"
    r = rig()
    r.source.add(tick(ts_ms=1).encode())
    r.source.add(_with_surrogate(body), key=b"poison")
    r.source.add(tick(ts_ms=2).encode())
    r.run()
    assert [(letter.reason, key) for letter, key in r.letters.letters] == [("bad_name", b"poison")]
    letter = r.letters.letters[0][0]
    assert "\\ud800" in letter.raw.decode()  # the record as it came, JSON escape intact
    assert letter.encode()  # and the letter itself is writable
    assert sorted(t for (_, t) in readings(r.influx)) == [1, 2]
    assert r.source.committed == {(TOPIC, 0): 3}
    assert r.metric("gapwatch_sink_deadletters_total", reason="bad_name") == 1


def test_a_channel_beside_its_imputed_twin_is_a_name_collision_dead_letter() -> None:
    r = rig()
    clash = tick(values={"x": 1.0, "x_imputed": 2.0}, imputed=(), sigma={})
    sigma_clash = tick(ts_ms=5, values={"y": 1.0, "y_sigma": 2.0}, imputed=("y",), sigma={"y": 1.0})
    r.source.add(clash.encode(), key=b"clash")
    r.source.add(sigma_clash.encode(), key=b"sigma")
    r.source.add(tick(ts_ms=2).encode())
    r.run()
    assert [(letter.reason, key) for letter, key in r.letters.letters] == [
        ("name_collision", b"clash"),
        ("name_collision", b"sigma"),
    ]
    assert "'x_imputed' collides" in r.letters.letters[0][0].detail
    assert sorted(t for (_, t) in readings(r.influx)) == [2]


def test_a_dead_letter_keeps_only_the_start_of_a_huge_record_with_its_length_and_hash() -> None:
    import hashlib

    from edge.schema import DEADLETTER_RAW_MAX_BYTES

    huge = b'{"not": "a tick", "pad": "' + b"x" * 900_000 + b'"}'
    r = rig()
    r.source.add(huge, key=b"huge")
    r.source.add(tick(ts_ms=2).encode())
    r.run()
    letter = r.letters.letters[0][0]
    assert letter.reason == "bad_schema"
    assert letter.raw == huge[:DEADLETTER_RAW_MAX_BYTES]
    assert (letter.raw_len, letter.raw_sha256) == (len(huge), hashlib.sha256(huge).hexdigest())
    assert len(letter.encode()) < DEADLETTER_RAW_MAX_BYTES + 1024
