"""Records Kafka refuses for good: quarantined, counted, never blocking the records behind them.

Issue 16: one dead letter over Kafka's record limit was retried forever (as "Kafka
unavailable"); nothing behind it was delivered, and a restart stopped on the same record.
"""

from __future__ import annotations

from pathlib import Path

from edge.fakes import FakeClock, FakeSink
from edge.forward import Forwarder
from edge.spool import OutRecord, Spool


def rec(i: int, size: int = 0) -> OutRecord:
    value = f"v{i}".encode() + b"x" * size
    return OutRecord("t", f"k{i}".encode(), value, 1000 + i)


def run(fwd: Forwarder, clock: FakeClock, rounds: int = 60) -> None:
    for _ in range(rounds):
        fwd.step()
        clock.advance(500)
        if fwd.idle:
            return


def delivered(sink: FakeSink) -> list[str]:
    return [v.decode()[:3].rstrip("x") for v in sink.values("t")]


def test_a_record_refused_at_send_is_quarantined_and_the_records_behind_it_go_on(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, max_record_bytes=1000)  # kafka-python's max_request_size check
    counted: list[tuple[str, int]] = []
    fwd = Forwarder(spool, sink, clock, on_quarantined=lambda r, n: counted.append((r, n)))
    spool.commit([rec(0), rec(1), rec(2, size=5000), rec(3), rec(4)])
    run(fwd, clock)
    assert delivered(sink) == ["v0", "v1", "v3", "v4"]
    assert spool.records == 0 and fwd.idle
    [q] = spool.quarantined()
    assert (q.topic, q.key, q.reason) == ("t", b"k2", "too_large")
    assert q.value == rec(2, size=5000).value  # kept whole: nothing is silently lost
    assert fwd.stats.quarantined == 1 and counted == [("too_large", 1)]
    assert fwd.stats.failed == 0 and fwd.stuck_s() == 0.0


def test_a_record_the_broker_refuses_is_found_alone_and_only_it_is_quarantined(
    tmp_path: Path,
) -> None:
    # The broker's refusal comes in a delivery callback, and kafka-python's idempotent
    # producer then fails every later batch with the same error (seen on the real broker):
    # the records behind the bad one are suspects, sent again alone, not quarantined.
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, broker_max_bytes=1000)  # the topic's max.message.bytes
    fwd = Forwarder(spool, sink, clock)
    spool.commit([rec(0), rec(1, size=5000), *(rec(i) for i in range(2, 8))])
    run(fwd, clock)
    assert delivered(sink) == ["v0", "v2", "v3", "v4", "v5", "v6", "v7"]
    assert [q.key for q in spool.quarantined()] == [b"k1"]
    assert fwd.stats.quarantined == 1
    assert sink.refused == 2  # once among the others, once alone
    assert sink.abandoned >= 2  # a fatal producer is never reused


def test_a_quarantined_record_stays_quarantined_across_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "s.sqlite"
    spool = Spool(path)
    sink = FakeSink(clock, max_record_bytes=1000)
    spool.commit([rec(0, size=5000), rec(1)])
    run(Forwarder(spool, sink, clock), clock)
    spool.close()
    again = Spool(path)
    again.commit([rec(2)])
    run(Forwarder(again, sink, clock), clock)
    assert delivered(sink) == ["v1", "v2"]
    assert sink.refused == 1
    assert [q.key for q in again.quarantined()] == [b"k0"]


def test_stuck_delivery_is_measured_while_records_wait_and_resets_on_progress(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "s.sqlite")
    sink = FakeSink(clock, down=True)
    fwd = Forwarder(spool, sink, clock)
    assert fwd.stuck_s() == 0.0  # nothing waiting
    spool.commit([rec(0), rec(1)])
    for _ in range(10):
        fwd.step()
        clock.advance(30_000)
    assert fwd.stuck_s() >= 290.0
    sink.down = False
    run(fwd, clock)
    assert fwd.stuck_s() == 0.0 and delivered(sink) == ["v0", "v1"]
