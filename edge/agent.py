"""The edge agent loop: MQTT message -> decode -> align -> impute/score -> spool (-> Kafka).

One thread runs :meth:`Agent.step` in a loop; the forwarder (:mod:`edge.forward`) moves spooled
records to Kafka in its own thread. Each step:

1. takes up to a few thousand messages from the source (none while the spool is full under the
   ``pause`` policy; a trickle of a few is given 2 ms to grow, so that each transaction carries
   several), journals them to the spool and only then acknowledges them to the broker;
2. decodes each (bad input becomes a dead letter with its reason), maps its device to a model by
   the config's ``devices`` rules, and feeds the device's aligner;
3. lets the wall clock close ticks of quiet devices (every 100 ms);
4. runs the micro-batch when it is full or old enough, turning each closed tick into a causal
   record (revision 0) and, when due, a back-fill record (revision 1, same ``ts_ms``);
5. commits records, per-device tick watermarks and the journal position in one transaction.

After a crash, :meth:`Agent.recover` replays the journal: ticks that were open are rebuilt and
emitted, ticks already spooled are not emitted again, and nothing is dead-lettered twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np

from edge.alerts import AlarmHook
from edge.align import AlignResult
from edge.bundle import Bundle
from edge.config import AgentConfig
from edge.decode import Limits, Reading, parse_ts
from edge.devices import Device, DeviceTable, same_grid
from edge.errors import PayloadError, SpoolDiskFull, TransportError
from edge.formats import build_inputs, decode_input
from edge.forward import Forwarder
from edge.intake import IntakeEvent, IntakeMonitor
from edge.metrics import AgentMetrics
from edge.microbatch import MicroBatch, Prepared
from edge.ports import Clock, InMessage, MessageSource
from edge.records import encode_scored
from edge.reload import BundleWatcher, ReloadEvent, topic_matches
from edge.schema import DeadLetter, unencodable
from edge.scorer import TickOutput
from edge.spool import OutRecord, Spool

__all__ = ["Agent"]

log = logging.getLogger(__name__)
_POLL_MAX = 2000
_GATHER_BELOW = 32  # fewer messages than this in a poll: gather for _GATHER_S more
_GATHER_S = 0.002
_ADVANCE_EVERY_MS = 100
_STATS_EVERY_S = 1.0
_BAD_LOG_EVERY_S = 10.0


def _writable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) spelled as escapes."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


class Agent:
    """Wires the pure core to its ports; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        source: MessageSource,
        spool: Spool,
        forwarder: Forwarder,
        watcher: BundleWatcher,
        clock: Clock,
        metrics: AgentMetrics | None = None,
        alarms: AlarmHook | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._spool = spool
        self._forwarder = forwarder
        self._watcher = watcher
        self._clock = clock
        self._metrics = metrics
        self._alarms = alarms  # alarm open/close events (edge.webhook); must not block
        if not watcher.current:
            watcher.load_initial()
        self._inputs = build_inputs(config.mqtt)  # [[mqtt.inputs]], then mqtt.topics
        a = config.align
        self._limits = Limits(
            max_payload_bytes=config.mqtt.max_payload_bytes,
            future_tolerance_ms=round(a.future_tolerance_s * 1000),
            max_age_ms=round(a.max_age_s * 1000),
            min_ts_ms=parse_ts(a.min_ts),
        )
        self._devices = DeviceTable(config, watcher.current)
        self._batch = MicroBatch(config.inference.batch_max_ticks, config.inference.batch_max_ms)
        self._out: list[OutRecord] = []
        self._lags: list[float] = []
        self._device_ticks: dict[str, int] = {}
        self._processed_up_to: int | None = None
        self._committed_up_to: int | None = None
        self._last_advance_ms = 0
        now = clock.monotonic()
        self._last_stats = now
        self._last_bundle_check = now
        self._down_since: float | None = None
        self._paused = False
        self._disk_full = False  # the spool's disk is full: intake pauses, retried each second
        self._disk_retry_at = 0.0
        self._pending: list[InMessage] = []  # taken from MQTT, not journaled yet (disk full)
        self._bad_logged: dict[str, tuple[float, int]] = {}
        mq = config.mqtt
        self._intake = IntakeMonitor(mq.flow_window, mq.overload_lag_s, start_s=now)
        self._newest_ts: int | None = None  # newest reading stamp processed (publisher time)
        self._last_intake = now
        self.heartbeat = now
        self._in_use: dict[str, Bundle] = {}
        self._emitted = [0, 0, 0, 0]
        if metrics:
            self._ticks_out0 = metrics.ticks_out.labels("0")
            self._ticks_out1 = metrics.ticks_out.labels("1")
        for name, bundle in watcher.current.items():
            self._model_info(name, bundle)

    # -- public ----------------------------------------------------------------------------

    def recover(self) -> int:
        """Replay the journal left by a crash; return how many messages it held."""
        rec = self._spool.recovery()
        self._devices.restored.update(rec.device_ticks)
        now = self._clock.now_ms()
        for row in rec.rows:
            # Replayed readings count as arriving now, so the wall clock does not close their
            # ticks before the broker redelivers what followed them.
            restoring = row.id <= rec.processed_up_to
            self._handle(
                row.topic, row.payload, row.received_ms, row.id, restoring=restoring, arrival=now
            )
        if rec.rows:
            self._processed_up_to = rec.rows[-1].id
            log.info(
                "agent.recovered",
                extra={"journal": len(rec.rows), "devices": len(self._devices)},
            )
        self._commit()
        return len(rec.rows)

    def step(self, timeout_s: float = 0.05) -> int:
        """One loop iteration; return the number of messages taken from the source."""
        if self._forwarder.error is not None:
            raise TransportError(f"the Kafka forwarder stopped: {self._forwarder.error!r}")
        mono = self._clock.monotonic()
        self.heartbeat = mono
        paused = self._spool.full or self._disk_full
        if paused != self._paused:
            self._paused = paused
            log.warning("agent.intake_paused" if paused else "agent.intake_resumed")
            if self._metrics:
                self._metrics.intake_paused.set(1 if paused else 0)
        wait = self._batch.wait_s(mono)
        timeout = timeout_s if wait is None else min(timeout_s, wait)
        msgs = [] if paused else self._source.poll(_POLL_MAX, timeout)
        if 0 < len(msgs) < _GATHER_BELOW:
            # A trickle: wait a moment for more, so each journal and commit transaction (the
            # fixed cost of a step) carries several messages instead of one.
            time.sleep(_GATHER_S)
            msgs += self._source.poll(_POLL_MAX - len(msgs), 0)
        if paused:
            time.sleep(timeout)
        if self._pending and mono >= self._disk_retry_at:
            msgs, self._pending = self._pending + msgs, []
        if msgs and not all(m.topic.isascii() for m in msgs):
            msgs = self._refuse_bad_topics(msgs)
        if msgs:
            try:
                ids = self._spool.journal([(m.topic, m.payload, m.received_ms) for m in msgs])
            except SpoolDiskFull as exc:
                self._pending = msgs  # not acknowledged: the broker still holds them too
                self._on_disk_full(exc)
                msgs, ids = [], []
        if msgs:
            self._source.ack(msgs)
            if self._metrics:
                self._metrics.messages_in.inc(len(msgs))
            for m, rid in zip(msgs, ids, strict=True):
                self._handle(
                    m.topic, m.payload, m.received_ms, rid, restoring=False, arrival=m.received_ms
                )
            self._processed_up_to = ids[-1]
            self._intake.processed(len(msgs), self._newest_ts)
        now_ms = self._clock.now_ms()
        if now_ms - self._last_advance_ms >= _ADVANCE_EVERY_MS:
            self._last_advance_ms = now_ms
            for dev in self._devices:
                self._on_aligned(dev, dev.aligner.advance(now_ms))
        if self._batch.due(self._clock.monotonic()):
            self._run_batch()
        self._commit()
        self._periodic()
        return len(msgs)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, then :meth:`shutdown`. Raises TransportError (watchdog)."""
        watchdog = self.config.mqtt.watchdog_s
        try:
            while not stop.is_set():
                self.step()
                if self._source.connected:
                    self._down_since = None
                elif self._down_since is None:
                    self._down_since = self._clock.monotonic()
                elif watchdog > 0 and self._clock.monotonic() - self._down_since > watchdog:
                    raise TransportError(
                        f"MQTT broker unreachable for more than {watchdog:.0f}s (mqtt.watchdog_s)"
                    )
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop reading, close every open tick, score it and spool it."""
        self._source.stop()
        for dev in self._devices:
            self._on_aligned(dev, dev.aligner.drain())
        self._run_batch()
        self._commit()
        log.info("agent.stopped", extra={"devices": len(self._devices)})

    def health(self) -> tuple[bool, dict[str, Any]]:
        alive = self._clock.monotonic() - self.heartbeat < 30.0
        stats = self._forwarder.stats
        stuck_s = self._forwarder.stuck_s()
        stuck = stuck_s > self.config.kafka.stuck_after_s
        detail = {
            "loop_alive": alive,
            "mqtt_connected": self._source.connected,
            "mqtt_subscribed": bool(getattr(self._source, "subscribed", self._source.connected)),
            "intake_paused": self._paused,
            "intake_overloaded": self._intake.overloaded,  # edge.intake; does not fail health
            "spool_disk_full": self._disk_full,
            "devices": len(self._devices),
            "models": {n: b.manifest.version for n, b in self._watcher.current.items()},
            "model_fallbacks": dict(self._watcher.fallbacks),  # model -> why CURRENT was refused
            "kafka_in_flight": stats.in_flight,
            "kafka_acked": stats.acked,
            "kafka_quarantined": stats.quarantined,
            "kafka_stuck_s": round(stuck_s, 1),
            "delivery_stuck": stuck,
        }
        detail["forwarder_alive"] = self._forwarder.error is None
        ok = alive and bool(self._watcher.current) and self._forwarder.error is None
        return ok and not stuck, detail

    # -- messages --------------------------------------------------------------------------

    def _refuse_bad_topics(self, msgs: list[InMessage]) -> list[InMessage]:
        """Dead-letter (``bad_name``) and acknowledge messages whose topic is not UTF-8.

        Such a topic (a lone surrogate; Mosquitto refuses them, a test double or another
        source may not) cannot even be journaled, so its dead letter is spooled without a
        journal row: a crash right after the ack loses that one dead letter, nothing else.
        """
        good: list[InMessage] = []
        bad: list[InMessage] = []
        for m in msgs:
            (bad if unencodable(m.topic) else good).append(m)
        for m in bad:
            detail = f"topic {_writable(m.topic)!r} is not encodable as UTF-8"
            self._dead_letter("bad_name", detail, m.topic, m.payload, m.received_ms)
        if bad:
            self._source.ack(bad)
            if self._metrics:
                self._metrics.messages_in.inc(len(bad))
        return good

    def _handle(
        self,
        topic: str,
        payload: bytes,
        received_ms: int,
        token: int,
        *,
        restoring: bool,
        arrival: int,
    ) -> None:
        announce = self.config.mqtt.announce_topic
        if announce and topic_matches(announce, topic):
            self._apply_reload(self._watcher.check())
            return
        try:
            readings = decode_input(
                topic,
                payload,
                received_ms,
                self._inputs,
                limits=self._limits,
                default_site=self.config.site,
            )
        except PayloadError as exc:
            if not restoring:
                self._dead_letter(exc.reason, exc.detail, topic, payload, received_ms)
            return
        for reading in readings:  # one, except for batched formats (line protocol, SenML)
            self._feed(reading, topic, payload, token, restoring=restoring, arrival=arrival)

    def _feed(
        self, r: Reading, topic: str, payload: bytes, token: int, *, restoring: bool, arrival: int
    ) -> None:
        """One reading of a message on to its device's aligner (or a dead letter)."""
        received_ms = r.received_ms
        if not restoring and (self._newest_ts is None or r.ts_ms > self._newest_ts):
            self._newest_ts = r.ts_ms
        dev = self._devices.get(r.site, r.device)
        if dev is None:
            if not restoring:
                detail = f"no [[devices]] rule matches {r.site}/{r.device}"
                self._dead_letter("unknown_device", detail, topic, payload, received_ms)
            return
        problems = list(r.rejected)
        idx: list[int] = []
        vals: list[float] = []
        for channel, value in r.values.items():
            i = dev.index.get(channel)
            if i is None:
                problems.append((channel, "unknown_channel"))
            else:
                idx.append(i)
                vals.append(value)
        if problems and not restoring:
            detail = ", ".join(f"{c}: {r}" for c, r in problems)
            self._dead_letter(problems[0][1], detail, topic, payload, received_ms)
        if not idx:
            return
        result = dev.aligner.add(r.ts_ms, idx, vals, arrival, token)
        if result.too_late:
            if not restoring:
                detail = f"tick {r.ts_ms} of {dev.key} is already closed"
                self._dead_letter("too_late", detail, topic, payload, received_ms)
            return
        if self._metrics and not restoring:
            self._metrics.readings_in.inc(len(idx))
        self._on_aligned(dev, result)

    # -- ticks -----------------------------------------------------------------------------

    def _on_aligned(self, dev: Device, result: AlignResult) -> None:
        for t in result.transitions:
            log.warning(
                f"agent.device_{t.kind}",
                extra={"device": dev.key, "ts_ms": t.ts_ms, "silent_ticks": t.silent_ticks},
            )
            if self._metrics:
                self._metrics.transitions.labels(t.kind).inc()
                silent = t.silent_ticks - dev.aligner.max_gap_ticks  # the rest were imputed
                if t.kind == "online" and silent > 0:
                    self._metrics.intake.gaps.labels("silent").inc(silent)
        if (
            self._metrics
            and result.ticks
            and (empty := sum(t.received_ms is None for t in result.ticks))
        ):
            self._metrics.intake.gaps.labels("missing").inc(empty)
        for tick in result.ticks:
            rule = dev.rule
            if rule.rescale and dev.finished < rule.warmup_ticks <= dev.prepared:
                self._run_batch()  # the scorer re-scales at the end of warm-up: finish first
            window, center, scale = dev.scorer.prepare_raw(tick.ts_ms, tick.values)
            dev.prepared += 1
            self._batch.add(
                Prepared(dev, dev.scorer, dev.bundle, tick, window, center, scale),
                self._clock.monotonic(),
            )
            if len(self._batch) >= self._batch.max_ticks:
                self._run_batch()

    def _run_batch(self) -> None:
        if not len(self._batch):
            return
        t0 = time.perf_counter()
        self._emitted = [0, 0, 0, 0]  # revision 0, revision 1, imputed entries, anomalies
        n = self._batch.run(self._emit)
        if self._metrics:
            m = self._metrics
            m.inference_seconds.observe(time.perf_counter() - t0)
            m.batch_ticks.observe(n)
            rev0, rev1, imputed, anomalies = self._emitted
            if rev0:
                self._ticks_out0.inc(rev0)
            if rev1:
                self._ticks_out1.inc(rev1)
            if imputed:
                m.imputed.inc(imputed)
            if anomalies:
                m.anomalies.inc(anomalies)

    def _emit(self, item: Prepared, outs: list[TickOutput]) -> None:
        dev: Device = item.owner
        tick = item.tick
        manifest = item.bundle.manifest
        now = self._clock.now_ms()
        topic = self.config.kafka.scored_topic
        key = dev.key.encode()
        counts = self._emitted
        for out in outs:
            if out.revision == 0:
                dev.finished += 1
                prev = self._device_ticks.get(dev.key)
                self._device_ticks[dev.key] = tick.tick if prev is None else max(prev, tick.tick)
                counts[0] += 1
                counts[2] += int(np.count_nonzero(out.imputed))
                if out.anomaly:
                    counts[3] += 1
                if self._alarms is not None:
                    self._alarms(dev.site, dev.name, manifest.name, manifest.version, out)
                if tick.received_ms is not None:
                    self._lags.append(max(0, now - tick.received_ms) / 1000.0)
            else:
                counts[1] += 1
            value = encode_scored(dev.site, dev.name, manifest, out, tick.received_ms)
            self._out.append(OutRecord(topic, key, value, now))

    def _dead_letter(
        self, reason: str, detail: str, topic: str, payload: bytes, received_ms: int
    ) -> None:
        detail = _writable(detail)
        letter = DeadLetter.capture(
            reason,
            detail,
            f"mqtt:{topic}",
            payload,
            received_ms,
            max_raw_bytes=self.config.kafka.deadletter_raw_max_bytes,
        )
        self._out.append(
            OutRecord(
                self.config.kafka.deadletter_topic,
                # a topic that is not UTF-8 (a lone surrogate) is dead-lettered as bad_name:
                # its key must still be writable
                topic.encode("utf-8", "backslashreplace"),
                letter.encode(),
                self._clock.now_ms(),
            )
        )
        if self._metrics:
            self._metrics.bad_input.labels(reason).inc()
            self._metrics.dead_letters.inc()
        now = self._clock.monotonic()
        last, suppressed = self._bad_logged.get(reason, (-math.inf, 0))
        if now - last >= _BAD_LOG_EVERY_S:
            log.warning(
                "agent.bad_input",
                extra={
                    "reason": reason,
                    "topic": _writable(topic),
                    "detail": detail[:200],
                    "suppressed": suppressed,
                },
            )
            self._bad_logged[reason] = (now, 0)
        else:
            self._bad_logged[reason] = (last, suppressed + 1)

    def _commit(self) -> None:
        if not self._out and self._processed_up_to == self._committed_up_to:
            return
        consumed_below = None
        if self._processed_up_to is not None:
            tokens = [t for d in self._devices if (t := d.aligner.min_token()) is not None]
            if (bt := self._batch.min_token()) is not None:
                tokens.append(bt)
            consumed_below = min([*tokens, self._processed_up_to + 1])
        try:
            dropped = self._spool.commit(
                self._out,
                device_ticks=self._device_ticks,
                processed_up_to=self._processed_up_to,
                consumed_below=consumed_below,
            )
        except SpoolDiskFull as exc:
            self._on_disk_full(exc)  # records stay in memory; the journal still has their input
            return
        if self._disk_full and not self._pending:
            self._disk_full = False
            log.warning("spool.disk_ok", extra={"path": str(self._spool.path)})
        if self._metrics:
            for lag in self._lags:
                self._metrics.tick_lag.observe(lag)
            if dropped:
                self._metrics.spool_dropped.inc(dropped)
        self._out, self._lags, self._device_ticks = [], [], {}
        self._committed_up_to = self._processed_up_to
        self._forwarder.notify()

    def _on_disk_full(self, exc: SpoolDiskFull) -> None:
        """Pause intake until the spool can store again (Kafka draining it frees space)."""
        self._disk_retry_at = self._clock.monotonic() + 1.0
        if not self._disk_full:
            self._disk_full = True
            log.error("spool.disk_full", extra={"path": str(self._spool.path), "error": str(exc)})

    # -- periodic: models, metrics ---------------------------------------------------------

    def _periodic(self) -> None:
        mono = self._clock.monotonic()
        if mono - self._last_bundle_check >= self.config.bundles.poll_s:
            self._last_bundle_check = mono
            self._apply_reload(self._watcher.check())
        if mono - self._last_intake >= _STATS_EVERY_S:
            self._last_intake = mono
            self._check_intake(mono)
        if self._metrics and mono - self._last_stats >= _STATS_EVERY_S:
            self._last_stats = mono
            stats = self._spool.stats()
            m = self._metrics
            m.spool_records.set(stats.records)
            m.spool_bytes.set(stats.bytes)
            age = (
                0.0
                if stats.oldest_created_ms is None
                else (self._clock.now_ms() - stats.oldest_created_ms) / 1000
            )
            m.spool_age.set(max(0.0, age))
            m.kafka_stuck.set(self._forwarder.stuck_s())
            m.mqtt_connected.set(1 if self._source.connected else 0)
            offline = sum(1 for d in self._devices if d.aligner.offline)
            m.devices.labels("online").set(len(self._devices) - offline)
            m.devices.labels("offline").set(offline)
            arrivals = [a for d in self._devices if (a := d.aligner.last_arrival_ms) is not None]
            if arrivals:
                m.last_message_age.set(max(0.0, (self._clock.now_ms() - min(arrivals)) / 1000))

    def _check_intake(self, mono: float) -> None:
        """Intake lag and overload (edge.intake): metrics, and a log line when it changes."""
        src: Any = self._source
        depth = int(getattr(src, "depth", 0)) + len(self._pending)
        oldest = self._pending[0].received_ms if self._pending else None
        oldest = oldest if oldest is not None else getattr(src, "oldest_received_ms", None)
        peak = src.take_peak() if hasattr(src, "take_peak") else None
        now_ms = self._clock.now_ms()
        sample, event = self._intake.observe(now_ms, mono, depth, oldest, peak)
        if self._metrics:
            self._metrics.intake.update(sample, self._intake.high_water)
            self._metrics.intake.refused.set(int(getattr(src, "dropped", 0)))
            if event is not None and event.kind == "overloaded" and event.duration_s == 0:
                self._metrics.intake.overloads.inc()
        if event is not None:
            _log_intake(event)

    def _apply_reload(self, events: list[ReloadEvent]) -> None:
        for ev in events:
            if self._metrics:
                self._metrics.model_reloads.labels("accepted" if ev.ok else "refused").inc()
            if ev.bundle is None:
                continue
            self._run_batch()  # windows prepared with the old model finish with it
            for dev in self._devices:
                if dev.rule.bundle == ev.name:
                    self._swap(dev, ev.bundle)
            self._model_info(ev.name, ev.bundle)

    def _swap(self, dev: Device, new: Bundle) -> None:
        if not same_grid(dev.bundle.manifest, new.manifest):
            # a new grid: what is open closes and is scored with the old model first
            self._on_aligned(dev, dev.aligner.drain())
            self._run_batch()
        self._devices.rebind(dev, new)

    def _model_info(self, name: str, new: Bundle) -> None:
        old = self._in_use.get(name)
        self._in_use[name] = new
        if not self._metrics:
            return
        if old is not None and old.manifest.version != new.manifest.version:
            try:
                self._metrics.model_info.remove(old.manifest.name, old.manifest.version)
            except KeyError:
                log.debug("agent.model_info_missing")
        self._metrics.model_info.labels(new.manifest.name, new.manifest.version).set(1)


def _log_intake(event: IntakeEvent) -> None:
    s = event.sample
    fields: dict[str, Any] = {
        "messages_behind": s.messages_behind,
        "broker_holding_back": s.saturated,
        "oldest_age_s": round(s.oldest_age_s, 3),
        "behind_s": None if s.behind_s is None else round(s.behind_s, 3),
        "rate_per_s": round(s.rate, 1),
        "drain_s": None if s.drain_s is None else round(s.drain_s, 3),
        "flow_window": s.window,
        "duration_s": round(event.duration_s, 1),
    }
    if event.kind == "overloaded":
        log.warning("mqtt.overloaded", extra=fields)
    else:
        fields.update(worst_behind=event.worst_behind, worst_age_s=round(event.worst_age_s, 3))
        log.info("mqtt.recovered", extra=fields)
