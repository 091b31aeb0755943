"""The disk spool and the forwarder (store and forward): order, caps, crash safety, no dups."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edge.errors import SpoolError
from edge.fakes import FakeClock, FakeSink
from edge.forward import SPOOL_HEADER, Forwarder
from edge.ports import SystemClock
from edge.spool import OutRecord, Spool


def rec(i: int, topic: str = "t") -> OutRecord:
    return OutRecord(topic, f"k{i % 3}".encode(), f"v{i}".encode(), 1000 + i)


def fill(spool: Spool, n: int, start: int = 0) -> None:
    spool.commit([rec(i) for i in range(start, start + n)])


def test_records_come_back_in_order_and_leave_when_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    fill(spool, 5)
    reader = spool.reader()
    batch = reader.batch(0, 3)
    assert [r.value for r in batch] == [b"v0", b"v1", b"v2"]
    assert [r.value for r in reader.batch(batch[-1].id, 10)] == [b"v3", b"v4"]
    assert reader.ack([batch[0].id, batch[2].id]) == 2
    assert [r.value for r in reader.batch(0, 10)] == [b"v1", b"v3", b"v4"]
    stats = spool.stats()
    assert stats.records == 3
    assert stats.bytes == sum(len(f"v{i}") + 2 for i in (1, 3, 4))
    assert stats.oldest_created_ms == 1001


def test_the_spool_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    first = Spool(path)
    fill(first, 3)
    ids = first.journal([("sensors/a/b", b"{}", 5)])
    first.commit([], device_ticks={"a/b": 42}, processed_up_to=ids[0])
    # no close(): the process "dies"; a new one opens the same file
    second = Spool(path)
    assert second.spool_id == first.spool_id
    assert second.stats().records == 3
    rec_ = second.recovery()
    assert [(r.topic, r.payload) for r in rec_.rows] == [("sensors/a/b", b"{}")]
    assert rec_.processed_up_to == ids[0]
    assert rec_.device_ticks == {"a/b": 42}


def test_journal_ids_are_consecutive_and_consumed_rows_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    ids = spool.journal([("t", b"a", 1), ("t", b"b", 2), ("t", b"c", 3)])
    assert ids == list(range(ids[0], ids[0] + 3))
    spool.commit([], consumed_below=ids[2], processed_up_to=ids[2])
    assert [r.payload for r in spool.recovery().rows] == [b"c"]


def test_device_watermark_only_moves_forward(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.commit([], device_ticks={"d": 10})
    spool.commit([], device_ticks={"d": 7})
    assert spool.recovery().device_ticks == {"d": 10}


def test_pause_policy_reports_full_until_below_ninety_percent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_records=10, when_full="pause")
    fill(spool, 9)
    assert not spool.full
    fill(spool, 2, start=9)
    assert spool.full
    assert spool.stats().records == 11  # pause keeps everything
    reader = spool.reader()
    reader.ack([r.id for r in reader.batch(0, 1)])
    assert spool.full  # 10 left: still above 90 %
    reader.ack([r.id for r in reader.batch(0, 2)])
    assert not spool.full


def test_drop_oldest_policy_drops_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_records=10, when_full="drop_oldest")
    fill(spool, 8)
    assert spool.commit([rec(i) for i in range(8, 13)]) == 3
    reader = spool.reader()
    assert [r.value for r in reader.batch(0, 100)] == [f"v{i}".encode() for i in range(3, 13)]
    assert not spool.full


def test_drop_oldest_log_lines_add_up_to_every_dropped_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_records=10, when_full="drop_oldest")
    caplog.set_level("WARNING", logger="edge.spool")
    dropped = sum(spool.commit([rec(i)]) for i in range(60))
    spool.close()
    lines = [r for r in caplog.records if r.getMessage() == "spool.dropped_oldest"]
    assert dropped == 50
    assert len(lines) < 5  # one line per report interval, not one per commit
    assert sum(int(vars(r)["records"]) for r in lines) == dropped


def test_a_bad_policy_and_an_unusable_file_are_spool_errors(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="when_full"):
        Spool(tmp_path / "s.sqlite", when_full="explode")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError):
        Spool(bad)


# -- forwarder ---------------------------------------------------------------------------------


def forwarder(spool: Spool, sink: FakeSink, clock: FakeClock, **kw: float) -> Forwarder:
    return Forwarder(spool, sink, clock, **kw)  # type: ignore[arg-type]


def run_until_idle(fwd: Forwarder, clock: FakeClock, rounds: int = 100) -> None:
    for _ in range(rounds):
        fwd.step()
        clock.advance(500)
        if fwd.idle:
            return


def test_forwarder_delivers_in_order_and_empties_the_spool(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock)
    fill(spool, 1200)
    fwd = forwarder(spool, sink, clock)
    run_until_idle(fwd, clock)
    assert sink.values("t") == [f"v{i}".encode() for i in range(1200)]
    assert spool.stats().records == 0
    assert fwd.stats.acked == 1200
    headers = {v for r in sink.records for k, v in r.headers if k == SPOOL_HEADER}
    assert len(headers) == 1200 and all(h.startswith(spool.spool_id.encode()) for h in headers)


def test_a_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, down=True)
    fwd = forwarder(spool, sink, clock)
    fill(spool, 10)
    for _ in range(20):
        fwd.step()
        clock.advance(1000)
    assert sink.records == [] and spool.stats().records == 10
    fill(spool, 10, start=10)
    sink.down = False
    run_until_idle(fwd, clock)
    assert sink.values("t") == [f"v{i}".encode() for i in range(20)]


def test_failed_deliveries_are_resent_and_ambiguous_ones_not_duplicated(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, fail_deliveries=2, ghost_deliveries=3)
    fwd = forwarder(spool, sink, clock)
    fill(spool, 10)
    run_until_idle(fwd, clock)
    values = sink.values("t")
    assert sorted(values, key=lambda v: int(v[1:])) == [f"v{i}".encode() for i in range(10)]
    assert len(values) == len(set(values)) == 10
    assert fwd.stats.reconciled == 3  # the ghosts were found in the broker, not resent


def test_a_crash_between_ack_and_delete_does_not_resend(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.sqlite"
    spool = Spool(path)
    sink = FakeSink(clock, auto_ack=False)
    fwd = forwarder(spool, sink, clock)
    fill(spool, 6)
    fwd.step()  # all 6 sent, none acknowledged yet
    sink.complete()  # the broker has them ... and the agent dies before deleting
    restarted = Spool(path)
    assert restarted.stats().records == 6
    fwd2 = forwarder(restarted, sink, clock)
    fill(restarted, 2, start=6)
    sink.auto_ack = True
    run_until_idle(fwd2, clock)
    assert sink.values("t") == [f"v{i}".encode() for i in range(8)]
    assert fwd2.stats.reconciled == 6


def test_in_flight_and_rate_are_bounded(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, auto_ack=False)
    fwd = forwarder(spool, sink, clock, max_in_flight=7, rate=1000.0)
    fill(spool, 50)
    fwd.step()
    assert fwd.stats.in_flight == 7
    sink.complete()
    fwd.step()
    assert fwd.stats.acked == 7
    slow_spool, slow_sink = Spool(tmp_path / "r.sqlite"), FakeSink(clock)
    slow = forwarder(slow_spool, slow_sink, clock, rate=10.0)
    fill(slow_spool, 100)
    slow.step()
    slow.step()
    assert len(slow_sink.records) == 10
    clock.advance(1000)
    slow.step()
    slow.step()
    assert len(slow_sink.records) == 20


def test_reconciliation_waits_for_the_broker(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.sqlite"
    spool = Spool(path)
    fill(spool, 3)
    spool.reader().mark_sent(1, 3, clock.now_ms())
    sink = FakeSink(clock, down=True)
    fwd = forwarder(Spool(path), sink, clock)
    for _ in range(5):
        fwd.step()
        clock.advance(2000)
    assert sink.records == []
    sink.down = False
    run_until_idle(fwd, clock)
    assert sink.values("t") == [b"v0", b"v1", b"v2"]


def test_spool_file_is_wal(tmp_path: Path) -> None:
    Spool(tmp_path / "s.sqlite")
    mode = sqlite3.connect(tmp_path / "s.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_forwarder_thread_drains_on_stop(tmp_path: Path) -> None:
    clock = SystemClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink()
    fwd = Forwarder(spool, sink, clock)
    stop = threading.Event()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fwd.run(stop, drain_timeout_s=5.0)
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    for i in range(0, 300, 30):
        fill(spool, 30, start=i)  # the agent thread writes while the forwarder reads
        fwd.notify()
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert sink.values("t") == [f"v{i}".encode() for i in range(300)]
    assert spool.records == 0


def test_a_wedged_producer_is_abandoned_and_its_records_resent(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, stuck=True)  # deliveries never complete, as with a wedged producer
    fwd = forwarder(spool, sink, clock, stall_timeout_s=30.0)
    fill(spool, 5)
    for _ in range(10):
        fwd.step()
        clock.advance(2000)
    assert sink.abandoned == 0 and fwd.stats.in_flight == 5  # 20 s: still waiting
    for _ in range(10):
        fwd.step()
        clock.advance(2000)
    assert sink.abandoned == 1
    sink.stuck = False
    run_until_idle(fwd, clock)
    assert sink.values("t") == [f"v{i}".encode() for i in range(5)]
