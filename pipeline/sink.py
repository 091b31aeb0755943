"""The sink's consume loop: scored ticks from a record source into InfluxDB, at least once.

Ports (the Kafka and InfluxDB adapters live in ``pipeline.cli.sink`` and ``influx``):
:class:`RecordSource` (poll, commit), :class:`PointWriter` (``influx.InfluxPort.write``),
:class:`DeadLetterPort`, :class:`Clock`.

Guarantees:

- **At least once, no duplicates.** Offsets are committed only after InfluxDB accepted every
  point of the batch and its dead letters were flushed. A point's identity is (measurement,
  site, device, tick time), so a record written twice (after a crash, a rebalance, a replay)
  overwrites the same point instead of adding one.
- **Outages.** While InfluxDB (or the dead-letter topic) is unreachable the batch in hand is
  retried with exponential backoff capped at ``max_backoff_s``; offsets do not move. With
  ``give_up_after_s > 0`` the sink raises :class:`SinkGaveUp` after that long (exit, restart,
  re-read from the last commit).
- **Poison.** A record that is not JSON, breaks the schema (``bad_schema``; ``bad_name`` for a
  name that is not encodable as UTF-8, such as a lone surrogate), cannot be expressed as line
  protocol (``unencodable``; ``name_collision`` for channel ``x`` beside ``x_imputed``), or that
  InfluxDB rejects with 400 goes to the dead-letter topic with the reason. Dead letters keep
  at most 16 KiB of the record, plus its length and sha256.
  A 400 on a batch is narrowed down by bisection (writes are idempotent), so the good records
  of the batch are written and only the bad ones are dead-lettered.
- **Revisions.** Per-device order holds within a partition, so last-write-wins is right. A
  revision that arrives after a *newer* revision of the same tick (seen by this process) is
  skipped as ``stale`` rather than written over it.
- **Throughput.** One batch is written by a writer thread while the next one is decoded (at
  most one batch in flight and one filling); the request body is joined before the hand-off so
  InfluxDB gets the next batch as soon as it answers. Records take
  :meth:`~pipeline.lineproto.LineEncoder.encode_json` (one JSON parse, cached templates)
  unless they need the schema's own decoder. A process running the sink should call
  :func:`pipeline.cli.sink.tune_interpreter` (garbage collector, GIL switch interval).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from edge.errors import SchemaError
from edge.ports import Clock
from edge.schema import DeadLetter, ScoredTick
from pipeline.config import SinkConfig
from pipeline.errors import (
    CommitFailed,
    LineProtocolError,
    PipelineError,
    PointsRejected,
    SinkGaveUp,
    StorageUnavailable,
    TransportUnavailable,
)
from pipeline.health import SinkHealth
from pipeline.lineproto import Encoded, LineEncoder
from pipeline.metrics import SinkMetrics

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

__all__ = [
    "DeadLetterPort",
    "PartitionRecords",
    "PointWriter",
    "RecordLike",
    "RecordSource",
    "Sink",
    "SinkSettings",
    "SinkStats",
    "SourceRecord",
]


class _Abandoned(PipelineError):
    """Internal: the batch in hand is dropped uncommitted (stop grace or revoke deadline)."""


class RecordLike(Protocol):
    """What the sink reads of a record (kafka-python's ConsumerRecord fits as is)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class SourceRecord:
    """A record, for fakes and tests."""

    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class PartitionRecords:
    """Records of one partition from one poll, in offset order."""

    topic: str
    partition: int
    records: Sequence[RecordLike]


class RecordSource(Protocol):
    def poll(self, timeout_s: float, max_records: int) -> list[PartitionRecords]: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-offset-to-read per partition; raise CommitFailed if refused."""


class PointWriter(Protocol):
    def write(self, body: bytes) -> None: ...


class DeadLetterPort(Protocol):
    def publish(self, letters: list[tuple[DeadLetter, bytes | None]]) -> None:
        """Send (letter, key) pairs and block until all are acknowledged.

        Raise TransportUnavailable if any was not; the caller retries the whole list.
        """


@dataclass(frozen=True)
class SinkSettings:
    max_points: int = 5_000
    max_wait_s: float = 1.0
    max_poll_records: int = 10_000
    poll_timeout_s: float = 0.5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    give_up_after_s: float = 0.0
    stop_grace_s: float = 20.0
    revoke_timeout_s: float = 10.0
    revision_cache: int = 200_000

    @classmethod
    def from_config(cls, cfg: SinkConfig) -> SinkSettings:
        return cls(
            max_points=cfg.batch.max_points,
            max_wait_s=cfg.batch.max_wait_s,
            max_poll_records=cfg.kafka.max_poll_records,
            initial_backoff_s=cfg.retry.initial_backoff_s,
            max_backoff_s=cfg.retry.max_backoff_s,
            give_up_after_s=cfg.retry.give_up_after_s,
            stop_grace_s=cfg.retry.stop_grace_s,
        )


@dataclass
class SinkStats:
    records: int = 0
    written: int = 0  # records whose points InfluxDB accepted
    points: int = 0
    deadletters: int = 0
    stale: int = 0
    batches: int = 0
    commit_failures: int = 0


_Unit = tuple[TopicPartition, RecordLike, bytes, int]  # (partition, record, lines, points)


@dataclass
class _Batch:
    units: list[_Unit] = field(default_factory=list)
    letters: list[tuple[DeadLetter, bytes | None]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    records: int = 0
    points: int = 0
    stale: int = 0
    started: float = 0.0
    points_written: int = 0
    body: bytes = b""  # the units' lines joined, once the batch is handed off


class Sink:
    """The consume loop. ``run()`` blocks until ``request_stop()`` (safe from a signal handler)."""

    def __init__(
        self,
        source: RecordSource,
        writer: PointWriter,
        deadletters: DeadLetterPort,
        clock: Clock,
        *,
        settings: SinkSettings | None = None,
        metrics: SinkMetrics | None = None,
        encoder: LineEncoder | None = None,
        health: SinkHealth | None = None,
    ) -> None:
        self._source = source
        self._writer = writer
        self._letters = deadletters
        self._clock = clock
        self._s = settings or SinkSettings()
        self._metrics = metrics
        self._encoder = encoder or LineEncoder()
        self._health = health  # what /healthz reports (pipeline.health)
        self._batch = _Batch()
        self._inflight: tuple[Future[None], _Batch] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-writer")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._stop_deadline: float | None = None  # retries end here once a stop is requested
        self._revoke_deadline: float | None = None  # ... and here while handing back partitions
        self._revisions: dict[tuple[str, str, int], int] = {}
        self.stats = SinkStats()

    # ---------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Finish the batch in hand (retrying for at most ``stop_grace_s``), commit, return."""
        if self._stop_deadline is None:
            self._stop_deadline = self._clock.monotonic() + self._s.stop_grace_s
        self._stop.set()
        self._wake.set()

    def run(self) -> SinkStats:
        """Consume until stopped; then finish the batch in hand and commit it."""
        log.info("sink.started", extra={"settings": self._s})
        try:
            while not self._stop.is_set():
                self.poll_once()
            try:
                self._hand_off()
                self._complete_inflight()
            except _Abandoned:
                log.warning(
                    "sink.stop_uncommitted",
                    extra={"records": self._pending(), "stop_grace_s": self._s.stop_grace_s},
                )
            self._set_pending()
        finally:
            self._executor.shutdown(wait=True)
        log.info("sink.stopped", extra={"stats": self.stats})
        return self.stats

    def partitions_revoked(self) -> None:
        """Call before partitions are handed to another member: write and commit what we hold.

        If that cannot finish within ``revoke_timeout_s`` the batch is dropped uncommitted;
        the new owner re-reads it.
        """
        if self._inflight is None and self._batch.records == 0:
            return
        self._revoke_deadline = self._clock.monotonic() + self._s.revoke_timeout_s
        self._wake.set()
        try:
            self._hand_off()
            self._complete_inflight()
        except _Abandoned:
            log.warning("sink.revoke_dropped", extra={"records": self._pending()})
            self._batch = _Batch()
            self._inflight = None
        finally:
            self._revoke_deadline = None
        self._set_pending()

    # ---------------------------------------------------------------- consume side

    def poll_once(self) -> None:
        """One poll: decode records into the batch, hand full or old batches to the writer."""
        timeout = self._s.poll_timeout_s
        if self._batch.records:
            age = self._clock.monotonic() - self._batch.started
            timeout = max(0.0, min(timeout, self._s.max_wait_s - age))
        for group in self._source.poll(timeout, self._s.max_poll_records):
            if group.records:
                self._add_records((group.topic, group.partition), group.records)
        if self._inflight is not None and self._inflight[0].done():
            self._complete_inflight()
        if self._batch.records and (
            self._clock.monotonic() - self._batch.started >= self._s.max_wait_s
        ):
            self._hand_off()
        self._set_pending()

    def _add_records(self, tp: TopicPartition, records: Sequence[RecordLike]) -> None:
        """Encode one partition's records into the batch; hand it off whenever it is full.

        The hot loop of the sink (one pass per record): what it needs is kept in locals, and
        the batch's record and point counts are brought up to date at a hand-off and at the end.
        """
        encode = self._encoder.encode_json
        revisions = self._revisions
        max_points = self._s.max_points
        batch = self._batch
        append = batch.units.append
        points = batch.points
        first = 0  # index of the first record of ``records`` in ``batch``
        if not batch.records:
            batch.started = self._clock.monotonic()
        for i, record in enumerate(records):
            raw = record.value
            try:
                encoded = None if raw is None else encode(raw)
            except LineProtocolError as exc:
                self._dead(batch, tp, record, exc.reason, str(exc))
                continue
            except UnicodeError as exc:  # a name check missed: a dead letter, never a crash
                self._dead(batch, tp, record, "bad_name", f"{type(exc).__name__}: {exc}")
                continue
            if encoded is None:
                encoded = self._decode(batch, tp, record, raw)
                if encoded is None:
                    continue
            key = (encoded[1], encoded[2], encoded[3])
            revision = encoded[4]
            seen = revisions.get(key)
            if seen is not None and revision < seen:
                batch.stale += 1
                continue
            if revision > 0:
                if len(revisions) >= self._s.revision_cache:
                    revisions.clear()
                revisions[key] = revision
            append((tp, record, encoded[0], encoded[5]))
            points += encoded[5]
            if points >= max_points:
                batch.records += i + 1 - first
                batch.points = points
                batch.offsets[tp] = record.offset + 1
                first = i + 1
                self._hand_off()
                batch = self._batch
                append = batch.units.append
                points = 0
                batch.started = self._clock.monotonic()
        if first < len(records):
            batch.records += len(records) - first
            batch.points = points
            batch.offsets[tp] = records[-1].offset + 1

    def _decode(
        self, batch: _Batch, tp: TopicPartition, record: RecordLike, raw: bytes | None
    ) -> Encoded | None:
        """The slow path: decode with the schema's own reader; dead-letter what fails."""
        if raw is None:
            self._dead(batch, tp, record, "empty", "record has no value (tombstone)")
            return None
        try:
            tick = ScoredTick.decode(raw)
            lines = self._encoder.encode(tick)
        except SchemaError as exc:
            self._dead(batch, tp, record, exc.reason, str(exc))
            return None
        except LineProtocolError as exc:
            self._dead(batch, tp, record, exc.reason, str(exc))
            return None
        except UnicodeError as exc:  # a name check missed: still a dead letter, never a crash
            self._dead(batch, tp, record, "bad_name", f"{type(exc).__name__}: {exc}")
            return None
        return Encoded(lines, tick.site, tick.device, tick.ts_ms, tick.revision, lines.count(b"\n"))

    def _dead(
        self, batch: _Batch, tp: TopicPartition, record: RecordLike, reason: str, detail: str
    ) -> None:
        letter = DeadLetter.capture(
            reason,
            detail,
            f"kafka:{tp[0]}/{tp[1]}@{record.offset}",
            record.value or b"",
            int(self._clock.time() * 1000),
            component="sink",
        )
        batch.letters.append((letter, record.key))

    def _pending(self) -> int:
        inflight = self._inflight[1].records if self._inflight else 0
        return inflight + self._batch.records

    def _set_pending(self) -> None:
        if self._metrics is not None:
            self._metrics.pending_records.set(self._pending())

    # ---------------------------------------------------------------- hand-off and commit

    def _hand_off(self) -> None:
        """Wait for the batch in flight; start writing the current batch; commit the one before.

        The request body is joined while the batch before is still being written, and the
        offsets of that batch are committed after the next write has started, so InfluxDB gets
        the next batch the moment it answers. Commits stay in order: a batch is committed only
        after it was written and after every batch before it was committed.
        """
        batch = self._batch
        batch.body = b"".join([unit[2] for unit in batch.units])
        written = self._wait_inflight()
        if batch.records:
            self._batch = _Batch()
            self._inflight = (self._executor.submit(self._write_batch, batch), batch)
        if written is not None:
            self._commit(written)

    def _wait_inflight(self) -> _Batch | None:
        """The batch in flight once it is written (None if there is none), not yet committed."""
        if self._inflight is None:
            return None
        future, batch = self._inflight
        future.result()  # re-raises SinkGaveUp, _Abandoned, fatal StorageError
        self._inflight = None
        return batch

    def _complete_inflight(self) -> None:
        written = self._wait_inflight()
        if written is not None:
            self._commit(written)

    def _commit(self, batch: _Batch) -> None:
        st, m = self.stats, self._metrics
        letters_by_reason: dict[str, int] = {}
        for letter, _ in batch.letters:
            letters_by_reason[letter.reason] = letters_by_reason.get(letter.reason, 0) + 1
        written = len(batch.units) - letters_by_reason.get("rejected", 0)
        try:
            self._source.commit(batch.offsets)
        except CommitFailed as exc:
            st.commit_failures += 1
            if m is not None:
                m.commit_failures.inc()
            log.warning("sink.commit_failed", extra={"error": str(exc), "records": batch.records})
        else:
            st.batches += 1
            if m is not None:
                m.batches.inc()
                m.last_commit.set(self._clock.time())
        st.records += batch.records
        st.written += written
        st.points += batch.points_written
        st.deadletters += len(batch.letters)
        st.stale += batch.stale
        if m is not None:
            m.records.labels("written").inc(written)
            m.records.labels("deadletter").inc(len(batch.letters))
            m.records.labels("stale").inc(batch.stale)
            m.points_written.inc(batch.points_written)
            for reason, n in letters_by_reason.items():
                m.deadletters.labels(reason).inc(n)
        log.debug(
            "sink.batch_committed",
            extra={
                "records": batch.records,
                "points": batch.points_written,
                "offsets": batch.offsets,
            },
        )

    # ---------------------------------------------------------------- writer thread

    def _write_batch(self, batch: _Batch) -> None:
        if batch.units:
            self._write_units(batch, batch.units, batch.body)
            batch.body = b""
        if batch.letters:
            for letter, _ in batch.letters:
                log.warning(
                    "sink.deadletter",
                    extra={
                        "reason": letter.reason,
                        "source": letter.source,
                        "detail": letter.detail,
                    },
                )
            self._retry(lambda: self._letters.publish(batch.letters), "deadletter")

    def _write_units(self, batch: _Batch, units: list[_Unit], body: bytes = b"") -> None:
        body = body or b"".join([unit[2] for unit in units])
        started = self._clock.monotonic()
        try:
            self._retry(lambda: self._writer.write(body), "influxdb")
        except PointsRejected as exc:
            if self._metrics is not None:
                self._metrics.write_failures.labels("rejected").inc()
            if len(units) == 1:
                self._dead(batch, units[0][0], units[0][1], "rejected", str(exc))
                return
            mid = len(units) // 2
            self._write_units(batch, units[:mid])
            self._write_units(batch, units[mid:])
            return
        batch.points_written += sum([unit[3] for unit in units])
        if self._metrics is not None:
            self._metrics.write_seconds.observe(self._clock.monotonic() - started)

    def _retry(self, action: Callable[[], None], target: str) -> None:
        delay = self._s.initial_backoff_s
        first_failure: float | None = None
        while True:
            try:
                action()
                if self._health is not None:
                    self._health.ok("influxdb" if target == "influxdb" else "kafka")
                return
            except (StorageUnavailable, TransportUnavailable) as exc:
                if self._health is not None:
                    self._health.failed("influxdb" if target == "influxdb" else "kafka", str(exc))
                now = self._clock.monotonic()
                first_failure = now if first_failure is None else first_failure
                if self._metrics is not None and target == "influxdb":
                    self._metrics.write_failures.labels("unavailable").inc()
                give_up = self._s.give_up_after_s
                if give_up > 0 and now - first_failure >= give_up:
                    raise SinkGaveUp(
                        f"{target} unreachable for {now - first_failure:.0f}s "
                        f"(retry.give_up_after_s = {give_up}): {exc}"
                    ) from exc
                deadlines = [
                    d for d in (self._stop_deadline, self._revoke_deadline) if d is not None
                ]
                deadline = min(deadlines) if deadlines else None
                if deadline is not None and now >= deadline:
                    raise _Abandoned(f"{target} still unreachable at the deadline") from exc
                log.warning(
                    "sink.write_retry",
                    extra={"target": target, "error": str(exc), "backoff_s": delay},
                )
                if deadline is not None:
                    delay = min(delay, max(0.0, deadline - now))
                self._clock.wait(self._wake, delay)
                self._wake.clear()  # a stop or revoke wakes one sleep, to look at its deadline
                delay = min(delay * 2, self._s.max_backoff_s)
