"""Spool -> Kafka: the forwarder thread of the agent (store and forward).

Every record leaves the spool only when Kafka acknowledged it. Records are sent in spool order
(id order), at most ``max_in_flight`` unacknowledged at a time and at most ``rate`` per second,
each with a header ``gapwatch-spool: <spool_id>:<id>``.

Duplicates. Within one producer session kafka-python's idempotent producer (on by default in
3.x, with ``acks=all``) removes duplicates caused by its own retries. Two cases remain where a
record may already be in Kafka although the spool still holds it: a delivery that failed
ambiguously (timeout) and a crash between Kafka's ack and the spool delete. In both cases the
forwarder **reconciles** before sending again: it waits until nothing is in flight, asks
Kafka which of the sent-but-unacknowledged spool ids it holds (reading the topics from the
time of the oldest such send, filtering on the header), deletes those from the spool and
resends the rest in order. That is done at start-up when the spool holds sent records, and
after any delivery failure. So records reach Kafka once (per spool id), except when the
header lookup itself cannot see a record (e.g. the topic was truncated meanwhile).

Poison records. A record Kafka refuses for good (:class:`~edge.errors.DeliveryRefused`: too
large, invalid topic; the adapter decides which errors mean that) is not retried: it moves to
the spool's ``quarantine`` table (kept, never resent), is counted (``on_quarantined``) and
logged once (``forward.quarantined``), and the records behind it go on. Retrying it would
block every record behind it forever, across restarts.

A refusal raised by ``send`` itself (the producer's own size check) is certain: the record
never left. A refusal reported by a delivery callback (the broker's limit) is not: kafka-python's
idempotent producer turns such an error fatal and fails every batch after it with the same
error. So those records become *suspects*: the producer is dropped (a new one starts clean),
the sent records are reconciled, and each suspect is then sent **alone** (nothing else in
flight) on the fresh producer. Refused alone, it is quarantined and the producer dropped
again; acknowledged, it was collateral and delivery goes on. Good records are never
quarantined for sharing a producer with a bad one.

Stuck delivery. :meth:`Forwarder.stuck_s` is how long records have been waiting without any
of them being acknowledged or quarantined (0 while the spool is empty); the agent's health
turns unhealthy past ``kafka.stuck_after_s``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge.errors import DeliveryRefused, EdgeError, SpoolDiskFull, TransportError
from edge.ports import Clock, RecordSink
from edge.spool import OutboxReader, Spool, SpooledRecord

__all__ = ["SPOOL_HEADER", "ForwardStats", "Forwarder"]

log = logging.getLogger(__name__)
SPOOL_HEADER = "gapwatch-spool"
_BATCH = 500
_RECONCILE_MARGIN_MS = 5000
_MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class ForwardStats:
    acked: int
    failed: int
    in_flight: int
    reconciled: int  # records found already in Kafka by reconciliation
    quarantined: int = 0  # records Kafka refused for good, moved to the spool's quarantine


class Forwarder:
    """Moves records from the spool to a :class:`~edge.ports.RecordSink` (one thread)."""

    def __init__(
        self,
        spool: Spool,
        sink: RecordSink,
        clock: Clock,
        *,
        max_in_flight: int = 5000,
        rate: float = 20000.0,
        stall_timeout_s: float = 90.0,
        on_acked: Callable[[int, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_quarantined: Callable[[str, int], None] | None = None,
    ) -> None:
        self._spool = spool
        self._sink = sink
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._rate = rate
        self._stall_timeout_s = stall_timeout_s
        self._generation = 0
        self._last_progress = 0.0
        self._on_acked = on_acked  # (count, created_ms of the newest acked) for metrics
        self._on_error = on_error
        self._on_quarantined = on_quarantined  # (reason, count) for metrics
        self._progress_at = clock.monotonic()  # last ack/quarantine, or last seen empty
        self._reader: OutboxReader | None = None
        self._done: queue.SimpleQueue[tuple[int, int, int, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._in_flight: set[int] = set()
        self._suspects: set[int] = set()  # refused in a callback: to be sent alone once more
        self._probe: int | None = None  # the suspect in flight alone, if any
        self._cursor = 0
        self._needs_reconcile = True  # at start: the previous run may have left sent records
        self._tokens = float(min(rate, _BATCH))
        self._last_refill: float | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._wake = threading.Event()
        self.acked = 0
        self.failed = 0
        self.reconciled = 0
        self.quarantined = 0
        self.error: BaseException | None = None  # set when the thread died of an exception

    @property
    def stats(self) -> ForwardStats:
        return ForwardStats(
            self.acked, self.failed, len(self._in_flight), self.reconciled, self.quarantined
        )

    def stuck_s(self) -> float:
        """Seconds records have waited with none acknowledged or quarantined (0: none waiting).

        Safe from any thread; grows even when the forwarder thread itself is wedged.
        """
        if self._spool.records == 0:
            return 0.0
        return max(0.0, self._clock.monotonic() - self._progress_at)

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing left in the spool."""
        return not self._in_flight and self._spool.records == 0

    def notify(self) -> None:
        """New records were spooled (called by the agent thread)."""
        self._wake.set()

    def step(self) -> bool:
        """One round: settle acks, reconcile if needed, send what is allowed. True if busy."""
        if self._reader is None:
            self._reader = self._spool.reader()
        busy = self._settle()
        now = self._clock.monotonic()
        if self._spool.records == 0:
            self._progress_at = now
        if busy or not self._in_flight:
            self._last_progress = now
        elif now - self._last_progress > self._stall_timeout_s:
            self._abandon(now)
        if now < self._retry_at:
            return busy
        if self._needs_reconcile:
            if self._in_flight:
                return busy  # wait for every outstanding delivery to end (ack or failure)
            try:
                self._reconcile()
            except (TransportError, SpoolDiskFull) as exc:
                self._fail_later(f"reconcile: {exc}")
                return busy
        return self._send(now) or busy

    def run(self, stop: threading.Event, drain_timeout_s: float) -> None:
        """Thread body: forward until ``stop``; then drain for up to ``drain_timeout_s``.

        An unexpected exception ends the thread and is kept in :attr:`error` (the agent loop
        checks it and stops, so a supervisor restarts the process).
        """
        try:
            self._run(stop, drain_timeout_s)
        except BaseException as exc:
            self.error = exc
            log.exception("forward.crashed")
            raise

    def _step_safely(self) -> bool:
        """:meth:`step`, riding out a full spool disk: retry later, then reconcile."""
        try:
            return self.step()
        except SpoolDiskFull as exc:
            self._needs_reconcile = True  # what was sent but not recorded is found in Kafka
            self._fail_later(f"spool disk full: {exc}")
            return False

    def _run(self, stop: threading.Event, drain_timeout_s: float) -> None:
        try:
            while not stop.is_set():
                if not self._step_safely():
                    self._wake.wait(0.02)
                    self._wake.clear()
            deadline = self._clock.monotonic() + drain_timeout_s
            while self._clock.monotonic() < deadline and not self.idle:
                if not self._step_safely():
                    self._wake.wait(0.02)
                    self._wake.clear()
            if self._in_flight:
                try:
                    self._sink.flush(min(2.0, max(0.1, deadline - self._clock.monotonic())))
                except EdgeError as exc:
                    log.warning("forward.flush_failed", extra={"error": str(exc)})
                self._settle()
        finally:
            left = self._spool.records
            log.info("forward.stopped", extra={"acked": self.acked, "left_in_spool": left})
            if self._reader is not None:
                self._reader.close()

    # -- internals ---------------------------------------------------------------------------

    def _settle(self) -> bool:
        acked: list[int] = []
        refused: list[tuple[int, DeliveryRefused]] = []
        suspects: list[int] = []
        newest_created = 0
        failed = 0
        while True:
            try:
                generation, rid, created_ms, error = self._done.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation:
                continue  # from an abandoned producer: reconciliation decides about it
            self._in_flight.discard(rid)
            if error is None:
                acked.append(rid)
                newest_created = max(newest_created, created_ms)
            elif isinstance(error, DeliveryRefused):
                if rid == self._probe:
                    refused.append((rid, error))  # refused alone, on a fresh producer: certain
                else:
                    suspects.append(rid)
            else:
                failed += 1
                if not self._needs_reconcile:
                    log.warning("forward.delivery_failed", extra={"id": rid, "error": str(error)})
                self._needs_reconcile = True
        if acked:
            assert self._reader is not None
            try:
                self._reader.ack(acked)
            except SpoolDiskFull as exc:
                # Still marked sent in the spool: reconciliation finds them in Kafka later.
                self._needs_reconcile = True
                self._fail_later(f"spool disk full: {exc}")
            self.acked += len(acked)
            if self._on_acked is not None:
                self._on_acked(len(acked), newest_created)
        if acked:
            self._progress_at = self._clock.monotonic()
            self._suspects.difference_update(acked)
        if self._probe is not None and self._probe not in self._in_flight:
            self._probe = None  # its result is in (ack, refusal or failure)
        if refused:
            self._quarantine(refused)
        if suspects:
            self._suspects.update(suspects)
            log.warning(
                "forward.refused_in_flight",
                extra={"records": len(suspects), "first_id": min(suspects)},
            )
        if refused or suspects:
            self._restart_producer()  # its state is fatal now: every later batch would fail
        if failed:
            self.failed += failed
            if self._on_error is not None:
                self._on_error("delivery")
        return bool(acked or failed or refused or suspects)

    def _quarantine(self, refused: list[tuple[int, DeliveryRefused]]) -> None:
        """Move records Kafka refused for good out of the way: kept, counted, logged once."""
        assert self._reader is not None
        try:
            moved = self._reader.quarantine(
                [(rid, exc.reason, exc.detail) for rid, exc in refused], self._clock.now_ms()
            )
        except SpoolDiskFull as exc:
            # Still in the outbox, marked sent: reconciliation sends them again, and Kafka
            # refuses them again, once the disk has room.
            self._needs_reconcile = True
            self._fail_later(f"spool disk full: {exc}")
            return
        self.quarantined += moved
        self._progress_at = self._clock.monotonic()
        self._suspects.difference_update(rid for rid, _ in refused)
        by_reason: dict[str, int] = {}
        for rid, why in refused:
            by_reason[why.reason] = by_reason.get(why.reason, 0) + 1
            log.error(
                "forward.quarantined",
                extra={"id": rid, "reason": why.reason, "error": why.detail[:300]},
            )
        if self._on_quarantined is not None:
            for reason, n in by_reason.items():
                self._on_quarantined(reason, n)

    def _reconcile(self) -> None:
        assert self._reader is not None
        sent = self._reader.sent_unacked()
        if sent:
            topics = self._reader.sent_topics()
            since = min(s for _, s in sent) - _RECONCILE_MARGIN_MS
            prefix = f"{self._spool.spool_id}:".encode()
            found = self._sink.find_sent(topics, since, SPOOL_HEADER, prefix)
            ids = {int(v[len(prefix) :]) for v in found if v[len(prefix) :].isdigit()}
            already = [i for i, _ in sent if i in ids]
            removed = self._reader.ack(already)
            self._suspects.difference_update(already)  # it did arrive: no longer a suspect
            self.reconciled += removed
            self._reader.clear_sent()
            log.info(
                "forward.reconciled",
                extra={"sent_unacked": len(sent), "already_in_kafka": removed},
            )
        self._cursor = 0
        self._needs_reconcile = False
        self._backoff = 0.5

    def _send(self, now: float) -> bool:
        assert self._reader is not None
        if self._last_refill is not None:
            cap = max(self._rate, float(_BATCH))
            self._tokens = min(cap, self._tokens + (now - self._last_refill) * self._rate)
        self._last_refill = now
        room = min(self._max_in_flight - len(self._in_flight), int(self._tokens), _BATCH)
        if room <= 0 or self._probe is not None:
            return False  # a suspect is alone in flight until its result is known
        batch = self._reader.batch(self._cursor, room)
        if not batch:
            return False
        if self._suspects:
            batch = self._cut_at_suspect(batch)
            if not batch:
                return False
        try:
            self._reader.mark_sent(batch[0].id, batch[-1].id, self._clock.now_ms())
        except SpoolDiskFull as exc:
            self._fail_later(f"spool disk full: {exc}")
            return False
        prefix = self._spool.spool_id
        refused: list[tuple[int, DeliveryRefused]] = []
        for rec in batch:
            header = [(SPOOL_HEADER, f"{prefix}:{rec.id}".encode())]
            try:
                self._sink.send(
                    rec.topic, rec.key, rec.value, header, self._callback(rec.id, rec.created_ms)
                )
            except DeliveryRefused as exc:  # refused before it left: never in flight
                refused.append((rec.id, exc))
                self._cursor = rec.id
                self._tokens -= 1
                if rec.id == self._probe:
                    self._probe = None
                continue
            except TransportError as exc:
                self._probe = None
                if refused:
                    self._quarantine(refused)
                self._needs_reconcile = True
                self._fail_later(f"send: {exc}")
                return True
            self._in_flight.add(rec.id)
            self._cursor = rec.id
            self._tokens -= 1
        if refused:
            self._quarantine(refused)
        return True

    def _cut_at_suspect(self, batch: list[SpooledRecord]) -> list[SpooledRecord]:
        """The records before the first suspect; or the suspect alone, once nothing is in flight."""
        for i, rec in enumerate(batch):
            if rec.id in self._suspects:
                if i > 0:
                    return batch[:i]
                if self._in_flight:
                    return []
                self._probe = rec.id
                log.info("forward.probing", extra={"id": rec.id, "suspects": len(self._suspects)})
                return batch[:1]
        return batch

    def _restart_producer(self) -> None:
        """Drop the producer (pending deliveries are forgotten) and reconcile before resending."""
        self._sink.abandon()
        self._generation += 1
        self._in_flight.clear()
        self._probe = None
        self._needs_reconcile = True

    def _callback(self, rid: int, created_ms: int) -> Callable[[BaseException | None], None]:
        generation = self._generation

        def done(error: BaseException | None) -> None:
            self._done.put((generation, rid, created_ms, error))
            if not self._wake.is_set():
                self._wake.set()

        return done

    def _abandon(self, now: float) -> None:
        """Deliveries stopped completing (a wedged producer): drop it and reconcile."""
        stalled_s = round(now - self._last_progress, 1)
        log.warning(
            "forward.stalled", extra={"in_flight": len(self._in_flight), "stalled_s": stalled_s}
        )
        self._restart_producer()
        self._last_progress = now
        if self._on_error is not None:
            self._on_error("stalled")

    def _fail_later(self, why: str) -> None:
        self._retry_at = self._clock.monotonic() + self._backoff
        log.warning("forward.kafka_unavailable", extra={"error": why, "retry_in_s": self._backoff})
        self._backoff = min(_MAX_BACKOFF_S, self._backoff * 2)
        if self._on_error is not None:
            self._on_error("unavailable")
