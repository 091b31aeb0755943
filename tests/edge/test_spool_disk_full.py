"""A full disk under the spool: SpoolDiskFull, intake paused, nothing acknowledged, then recovery.

The end-to-end version (a real 1 MiB tmpfs, a real agent and Kafka) is
``tests/faults/test_disk_full.py``; here the spool's disk is made full with SQLite's own page
limit or with ``min_free_bytes``, and the agent runs on the in-package fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.errors import SpoolDiskFull, SpoolError
from edge.spool import OutRecord, Spool

FULL = {"a": 11.0, "b": 12.0, "c": 13.0}


def test_min_free_bytes_refuses_new_data_but_not_bookkeeping(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    spool.commit([OutRecord("t", b"k", b"v" * 100, 1)])
    spool.min_free_bytes = 1 << 62  # more than any disk has
    with pytest.raises(SpoolDiskFull, match=r"spool\.min_free_bytes"):
        spool.journal([("sensors/a/b", b"{}", 1)])
    with pytest.raises(SpoolDiskFull):
        spool.commit([OutRecord("t", b"k", b"v", 2)])
    spool.commit([], processed_up_to=None)  # progress only: allowed
    reader = spool.reader()
    batch = reader.batch(0, 10)
    reader.mark_sent(batch[0].id, batch[-1].id, 5)  # the forwarder can still drain
    assert reader.ack([r.id for r in batch]) == 1
    assert spool.records == 0
    reader.close()


def test_sqlite_full_is_reported_as_spool_disk_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]
    spool._conn.execute(f"PRAGMA max_page_count={pages + 2}")  # the "disk" is nearly full
    with pytest.raises(SpoolDiskFull, match="full"):
        spool.journal([("sensors/a/b", b"x" * 200_000, 1)])
    assert issubclass(SpoolDiskFull, SpoolError)  # callers catching SpoolError still work


class FlakyDiskSpool(Spool):
    """A spool whose disk is full while ``disk_full`` is set (journal and commit refuse)."""

    disk_full = False

    def journal(self, messages: Sequence[tuple[str, bytes, int]]) -> list[int]:
        if self.disk_full and messages:
            raise SpoolDiskFull("cannot journal: database or disk is full")
        return super().journal(messages)

    def commit(self, records: Sequence[OutRecord], **kw: Any) -> int:
        if self.disk_full and records:
            raise SpoolDiskFull("cannot spool: database or disk is full")
        return super().commit(records, **kw)


def test_agent_pauses_on_a_full_disk_and_loses_nothing(
    tmp_path: Path,
    agent_bundle_factory: Callable[..., Path],
    agent_harness: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent_bundle_factory()
    spool = FlakyDiskSpool(tmp_path / "spool.sqlite")
    h = agent_harness(tmp_path, tmp_path / "bundles", spool=spool)
    caplog.set_level(logging.INFO)
    for k in range(3):
        h.publish("pump-1", k, FULL)
    h.pump()
    acked_before = len(h.source.acked)

    spool.disk_full = True
    for k in range(3, 6):
        h.publish("pump-1", k, FULL)
    h.pump()
    assert len(h.source.acked) == acked_before, "a message was acknowledged but not journaled"
    assert "spool.disk_full" in caplog.text
    assert h.metric("gapwatch_agent_intake_paused") == 1
    _ok, detail = h.agent.health()
    assert detail["spool_disk_full"] is True
    h.publish("pump-1", 6, FULL)
    h.pump()
    assert h.source.pending == 1, "intake went on although the disk is full"

    spool.disk_full = False
    h.clock.advance(1100)  # the agent retries once a second
    h.pump(5)
    assert "spool.disk_ok" in caplog.text
    assert h.metric("gapwatch_agent_intake_paused") == 0
    assert h.agent.health()[1]["spool_disk_full"] is False
    h.agent.shutdown()
    h.deliver()
    ticks = [t for t in h.scored() if t.revision == 0]
    stamps = sorted(t.ts_ms for t in ticks)
    assert len(stamps) == len(set(stamps)) == 7, stamps
    assert all(t.imputed == () for t in ticks), "a held message was lost and imputed"
    assert len(h.source.acked) == 7
