"""The agent's disk spool: one SQLite database in WAL mode, so nothing is lost to a crash.

Tables::

    outbox(id, topic, key, value, size, created_ms, sent_ms)   records waiting for a Kafka ack
    inbox(id, topic, payload, received_ms)                     raw MQTT messages not yet fully used
    quarantine(id, topic, key, value, size, created_ms,        records Kafka refused for good
               quarantined_ms, reason, error)                   (kept, never resent)
    device_state(device, last_tick)                            newest tick spooled per device
    meta(key, value)                                           spool_id, processed_up_to

Write path (agent thread): :meth:`Spool.journal` stores raw MQTT messages *before* they are
acknowledged to the broker; :meth:`Spool.commit` stores output records, the per-device tick
watermark and the journal position in one transaction, and deletes journal rows whose ticks
are spooled. After a crash, :meth:`Spool.recovery` hands back the journal so the agent can
rebuild the ticks that were open, without emitting anything twice.

Read path (forwarder thread, its own connection): :class:`OutboxReader` reads records in id
order, marks them sent, and deletes them once Kafka acknowledged them; a record Kafka refused
for good (:class:`~edge.errors.DeliveryRefused`) moves to ``quarantine`` in one transaction,
so it neither blocks the records behind it nor disappears (:meth:`Spool.quarantined` lists it).

Capacity: ``max_records`` / ``max_bytes`` with an explicit policy when full: ``pause`` (the
spool keeps everything; :attr:`Spool.full` tells the agent to stop taking MQTT messages until it
drained below 90 %) or ``drop_oldest`` (the oldest records are deleted and counted).

``synchronous = "normal"`` survives the agent being killed (SIGKILL, OOM); ``"full"`` also
survives power loss, at the cost of an fsync per transaction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import SpoolDiskFull, SpoolError

__all__ = [
    "InboxRow",
    "OutRecord",
    "OutboxReader",
    "Quarantined",
    "Recovery",
    "Spool",
    "SpoolStats",
    "SpooledRecord",
]

log = logging.getLogger(__name__)
RESUME_FRACTION = 0.9
DROP_REPORT_S = 10.0  # at most one spool.dropped_oldest line per this many seconds


def _failure(what: str, exc: sqlite3.Error) -> SpoolError:
    """SpoolDiskFull for SQLITE_FULL (disk or quota full), else SpoolError."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return SpoolDiskFull(f"{what}: {exc}")
    return SpoolError(f"{what}: {exc}")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL,
    size INTEGER NOT NULL, created_ms INTEGER NOT NULL, sent_ms INTEGER);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL,
    size INTEGER NOT NULL, created_ms INTEGER NOT NULL, quarantined_ms INTEGER NOT NULL,
    reason TEXT NOT NULL, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS device_state (device TEXT PRIMARY KEY, last_tick INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes
    created_ms: int


@dataclass(frozen=True)
class SpooledRecord:
    id: int
    topic: str
    key: bytes | None
    value: bytes
    created_ms: int
    sent_ms: int | None


@dataclass(frozen=True)
class Quarantined:
    """A record Kafka refused for good, as kept in the spool's ``quarantine`` table."""

    id: int
    topic: str
    key: bytes | None
    value: bytes
    created_ms: int
    quarantined_ms: int
    reason: str
    error: str


@dataclass(frozen=True)
class InboxRow:
    id: int
    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True)
class Recovery:
    rows: list[InboxRow]
    processed_up_to: int  # journal rows up to this id went through decoding before the crash
    device_ticks: dict[str, int]  # device key -> newest tick index already spooled


@dataclass(frozen=True)
class SpoolStats:
    records: int
    bytes: int
    oldest_created_ms: int | None


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as exc:
        raise SpoolError(f"cannot open spool {path}: {exc}") from exc
    return conn


class _Counters:
    """Record count and bytes of the outbox, shared by the writer and the reader."""

    def __init__(self, records: int, size: int) -> None:
        self.lock = threading.Lock()
        self.records = records
        self.bytes = size

    def add(self, records: int, size: int) -> None:
        with self.lock:
            self.records += records
            self.bytes += size


class Spool:
    """Writer side of the spool (use from one thread); :meth:`reader` opens the read side."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_records: int = 2_000_000,
        max_bytes: int = 512 * 1024 * 1024,
        when_full: str = "pause",
        synchronous: str = "normal",
        min_free_bytes: int = 0,
    ) -> None:
        if when_full not in {"pause", "drop_oldest"}:
            raise SpoolError(f"when_full {when_full!r}: use 'pause' or 'drop_oldest'")
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool folder {self.path.parent}: {exc}") from exc
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.synchronous = synchronous
        self.min_free_bytes = min_free_bytes
        self._conn = _connect(self.path, synchronous)
        try:
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='spool_id'").fetchone()
            if row is None:
                self.spool_id = uuid.uuid4().hex
                self._conn.execute(
                    "INSERT INTO meta(key, value) VALUES('spool_id', ?)", (self.spool_id,)
                )
            else:
                self.spool_id = str(row[0])
            n, size = self._conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
            ).fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path} is unusable: {exc}") from exc
        self._counters = _Counters(int(n), int(size))
        self._paused = False
        self._unreported = (0, 0, 0)  # records, bytes, commits dropped since the last log line
        self._reported_at = -float("inf")

    # -- writer ------------------------------------------------------------------------------

    def journal(self, messages: Sequence[tuple[str, bytes, int]]) -> list[int]:
        """Store raw ``(topic, payload, received_ms)`` messages; return their journal ids."""
        if not messages:
            return []
        self._check_room(f"cannot journal {len(messages)} messages")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO inbox(topic, payload, received_ms) VALUES (?, ?, ?)", messages
            )
            last = int(self._conn.execute("SELECT last_insert_rowid()").fetchone()[0])
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _failure(f"cannot journal {len(messages)} messages", exc) from exc
        return list(range(last - len(messages) + 1, last + 1))

    def commit(
        self,
        records: Sequence[OutRecord],
        *,
        device_ticks: Mapping[str, int] | None = None,
        processed_up_to: int | None = None,
        consumed_below: int | None = None,
    ) -> int:
        """Store records and progress atomically; return how many old records were dropped."""
        rows = [
            (r.topic, r.key, r.value, len(r.value) + len(r.key or b""), r.created_ms)
            for r in records
        ]
        added = sum(r[3] for r in rows)
        dropped = dropped_bytes = 0
        if rows:
            self._check_room(f"cannot spool {len(rows)} records")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            if rows:
                self._conn.executemany(
                    "INSERT INTO outbox(topic, key, value, size, created_ms) VALUES (?,?,?,?,?)",
                    rows,
                )
            if self.when_full == "drop_oldest":
                dropped, dropped_bytes = self._drop_oldest(len(rows), added)
            if device_ticks:
                self._conn.executemany(
                    "INSERT INTO device_state(device, last_tick) VALUES (?, ?) ON CONFLICT(device) "
                    "DO UPDATE SET last_tick=max(last_tick, excluded.last_tick)",
                    list(device_ticks.items()),
                )
            if processed_up_to is not None:
                self._conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('processed_up_to', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (str(processed_up_to),),
                )
            if consumed_below is not None:
                self._conn.execute("DELETE FROM inbox WHERE id < ?", (consumed_below,))
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _failure(f"cannot spool {len(rows)} records", exc) from exc
        self._counters.add(len(rows) - dropped, added - dropped_bytes)
        if dropped:
            n, b, c = self._unreported
            self._unreported = (n + dropped, b + dropped_bytes, c + 1)
            if time.monotonic() - self._reported_at >= DROP_REPORT_S:
                self._report_drops()
        return dropped

    def _report_drops(self) -> None:
        """Log what drop_oldest deleted since the last line: every record is counted once.

        One line per :data:`DROP_REPORT_S` (and one at close), each with the exact totals it
        covers, so the journal stays small while the sum over ``records`` equals the metric.
        """
        n, b, c = self._unreported
        if not n:
            return
        self._unreported = (0, 0, 0)
        self._reported_at = time.monotonic()
        log.warning(
            "spool.dropped_oldest",
            extra={"records": n, "bytes": b, "commits": c, "suppressed": c - 1},
        )

    def _drop_oldest(self, new_records: int, new_bytes: int) -> tuple[int, int]:
        with self._counters.lock:
            over_n = self._counters.records + new_records - self.max_records
            over_b = self._counters.bytes + new_bytes - self.max_bytes
        dropped = dropped_bytes = 0
        while over_n > 0 or over_b > 0:
            chunk = over_n if over_n > 0 else 16  # over bytes only: a few at a time
            sizes = self._conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?) "
                "RETURNING size",
                (chunk,),
            ).fetchall()
            if not sizes:
                break
            freed = sum(int(s[0]) for s in sizes)
            dropped += len(sizes)
            dropped_bytes += freed
            over_n -= len(sizes)
            over_b -= freed
        return dropped, dropped_bytes

    def _check_room(self, what: str) -> None:
        """Raise SpoolDiskFull while less than ``min_free_bytes`` is free for the spool.

        Counts the disk's free space plus the database's own free pages (space drained records
        left behind), and leaves the rest as headroom for the forwarder's bookkeeping (marking
        records sent, deleting acknowledged ones), so a full disk drains instead of locking up.
        """
        if self.min_free_bytes <= 0:
            return
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free >= self.min_free_bytes:
            return
        try:
            # The write-ahead log keeps its size after checkpoints: give that space back first.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
            pages = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise SpoolDiskFull(f"{what}: cannot measure free space: {exc}") from exc
        free += int(pages) * int(page_size)
        if free < self.min_free_bytes:
            raise SpoolDiskFull(
                f"{what}: {free} bytes free for {self.path} "
                f"(spool.min_free_bytes {self.min_free_bytes})"
            )

    def recovery(self) -> Recovery:
        """The journal and progress left by the previous run (empty after a clean stop)."""
        try:
            rows = [
                InboxRow(int(i), str(t), bytes(p), int(r))
                for i, t, p, r in self._conn.execute(
                    "SELECT id, topic, payload, received_ms FROM inbox ORDER BY id"
                )
            ]
            got = self._conn.execute(
                "SELECT value FROM meta WHERE key='processed_up_to'"
            ).fetchone()
            ticks = {
                str(d): int(t)
                for d, t in self._conn.execute("SELECT device, last_tick FROM device_state")
            }
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the journal of {self.path}: {exc}") from exc
        return Recovery(rows, int(got[0]) if got else 0, ticks)

    @property
    def full(self) -> bool:
        """True while intake should pause (policy ``pause``): over the cap, until below 90 %."""
        if self.when_full != "pause":
            return False
        with self._counters.lock:
            n, b = self._counters.records, self._counters.bytes
        if self._paused:
            self._paused = (
                n >= self.max_records * RESUME_FRACTION or b >= self.max_bytes * RESUME_FRACTION
            )
        else:
            self._paused = n >= self.max_records or b >= self.max_bytes
        return self._paused

    @property
    def records(self) -> int:
        """Records waiting in the outbox (safe to read from any thread)."""
        with self._counters.lock:
            return self._counters.records

    def stats(self) -> SpoolStats:
        """Count, bytes and age of the outbox (from the writer's thread)."""
        with self._counters.lock:
            n, b = self._counters.records, self._counters.bytes
        try:
            row = self._conn.execute("SELECT created_ms FROM outbox ORDER BY id LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read spool stats: {exc}") from exc
        return SpoolStats(n, b, None if row is None else int(row[0]))

    def quarantined(self, limit: int = 1000) -> list[Quarantined]:
        """The newest ``limit`` quarantined records, oldest first."""
        try:
            rows = self._conn.execute(
                "SELECT id, topic, key, value, created_ms, quarantined_ms, reason, error FROM "
                "(SELECT * FROM quarantine ORDER BY id DESC LIMIT ?) ORDER BY id",
                (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the quarantine of {self.path}: {exc}") from exc
        return [
            Quarantined(
                int(i), str(t), None if k is None else bytes(k), bytes(v), int(c), int(q), r, e
            )
            for i, t, k, v, c, q, r, e in rows
        ]

    def reader(self) -> OutboxReader:
        """A read side with its own connection; create it in the thread that will use it."""
        return OutboxReader(self.path, self.synchronous, self._counters)

    def close(self) -> None:
        self._report_drops()
        self._conn.close()

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("spool.rollback_failed")


class OutboxReader:
    """Forwarder side: read records in order, mark them sent, delete them once acknowledged."""

    def __init__(self, path: Path, synchronous: str, counters: _Counters) -> None:
        self._conn = _connect(path, synchronous)
        self._counters = counters

    def batch(self, after_id: int, limit: int) -> list[SpooledRecord]:
        try:
            rows = self._conn.execute(
                "SELECT id, topic, key, value, created_ms, sent_ms FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the spool: {exc}") from exc
        return [
            SpooledRecord(int(i), str(t), None if k is None else bytes(k), bytes(v), int(c), s)
            for i, t, k, v, c, s in rows
        ]

    def mark_sent(self, first_id: int, last_id: int, now_ms: int) -> None:
        """Remember that ids in [first, last] went to Kafka at ``now_ms`` (for reconciliation)."""
        try:
            self._conn.execute(
                "UPDATE outbox SET sent_ms=? WHERE id BETWEEN ? AND ? AND sent_ms IS NULL",
                (now_ms, first_id, last_id),
            )
        except sqlite3.Error as exc:
            raise _failure("cannot mark records sent", exc) from exc

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged records; return how many were still there."""
        id_list = list(ids)
        if not id_list:
            return 0
        removed = freed = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for start in range(0, len(id_list), 500):
                chunk = id_list[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sizes = self._conn.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING size", chunk
                ).fetchall()
                removed += len(sizes)
                freed += sum(int(s[0]) for s in sizes)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.debug("spool.rollback_failed")
            raise _failure("cannot delete acknowledged records", exc) from exc
        self._counters.add(-removed, -freed)
        return removed

    def quarantine(self, refused: Sequence[tuple[int, str, str]], now_ms: int) -> int:
        """Move ``(id, reason, error)`` records from the outbox to ``quarantine``; return how many.

        One transaction: a record is in exactly one of the two tables at any time.
        """
        if not refused:
            return 0
        moved = freed = 0
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for rid, reason, error in refused:
                self._conn.execute(
                    "INSERT OR IGNORE INTO quarantine(id, topic, key, value, size, created_ms, "
                    "quarantined_ms, reason, error) SELECT id, topic, key, value, size, "
                    "created_ms, ?, ?, ? FROM outbox WHERE id = ?",
                    (now_ms, reason, error[:500], rid),
                )
                sizes = self._conn.execute(
                    "DELETE FROM outbox WHERE id = ? RETURNING size", (rid,)
                ).fetchall()
                moved += len(sizes)
                freed += sum(int(s[0]) for s in sizes)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.debug("spool.rollback_failed")
            raise _failure("cannot quarantine refused records", exc) from exc
        self._counters.add(-moved, -freed)
        return moved

    def sent_unacked(self) -> list[tuple[int, int]]:
        """``(id, sent_ms)`` of records sent to Kafka but not acknowledged, oldest first."""
        try:
            return [
                (int(i), int(s))
                for i, s in self._conn.execute(
                    "SELECT id, sent_ms FROM outbox WHERE sent_ms IS NOT NULL ORDER BY id"
                )
            ]
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the spool: {exc}") from exc

    def sent_topics(self) -> list[str]:
        try:
            return sorted(
                str(t)
                for (t,) in self._conn.execute(
                    "SELECT DISTINCT topic FROM outbox WHERE sent_ms IS NOT NULL"
                )
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot read the spool: {exc}") from exc

    def clear_sent(self) -> None:
        try:
            self._conn.execute("UPDATE outbox SET sent_ms=NULL WHERE sent_ms IS NOT NULL")
        except sqlite3.Error as exc:
            raise _failure("cannot reset sent marks", exc) from exc

    def close(self) -> None:
        self._conn.close()
