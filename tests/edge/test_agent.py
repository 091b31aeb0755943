"""The agent loop with in-package fakes (MQTT, Kafka, clock), a real spool, a tiny ONNX bundle."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import MqttConfig
from edge.errors import TransportError
from edge.fakes import FakeClock, FakeSink
from edge.mqtt_source import MqttSource
from edge.schema import ScoredTick
from edge.spool import Spool

T0 = 1_700_000_000_000
BundleFactory = Callable[..., Path]
AgentFactory = Callable[..., Any]

FULL = {"a": 11.0, "b": 12.0, "c": 13.0}


def rev0(ticks: list[ScoredTick]) -> dict[int, ScoredTick]:
    out = {}
    for t in ticks:
        if t.revision == 0:
            assert (t.ts_ms - T0) // 1000 not in out, f"duplicate tick {t.ts_ms}"
            out[(t.ts_ms - T0) // 1000] = t
    return out


def test_readings_become_scored_ticks_with_imputed_gaps(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    for k in range(6):
        values = dict(FULL)
        if k == 3:
            del values["b"]
        h.publish("pump-1", k, values)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    by_tick = rev0(h.scored())
    assert sorted(by_tick) == list(range(6))
    t3 = by_tick[3]
    assert t3.key == "lab/pump-1"
    assert t3.imputed == ("b",)
    assert t3.values["b"] == 10.0  # tiny model: the channel centre
    assert t3.sigma == {"b": 2.0}  # exp(0/2) * scale
    assert t3.values["a"] == 11.0
    assert (t3.model, t3.model_version) == ("tiny", "1")
    assert by_tick[0].imputed == () and by_tick[0].score is not None
    backfills = [t for t in h.scored() if t.revision == 1]
    assert [(t.ts_ms - T0) // 1000 for t in backfills] == [3]  # backfill_delay 1: same tick again
    assert backfills[0].imputed == ("b",)
    assert all(m.ack_token for m in h.source.acked) and len(h.source.acked) == 6
    assert h.metric("gapwatch_agent_ticks_total", revision="0") == 6
    assert h.metric("gapwatch_agent_imputed_entries_total") == 1
    assert h.spool.recovery().rows == []  # the journal is consumed


def test_a_tick_without_any_reading_is_imputed_entirely(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    for k in (0, 1, 3, 4):
        h.publish("pump-1", k, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    t2 = rev0(h.scored())[2]
    assert t2.imputed == ("a", "b", "c")
    assert t2.score is None  # nothing observed: no score, no alarm
    assert t2.anomaly is False


def test_bad_input_is_dead_lettered_by_reason_and_the_agent_keeps_going(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles", "mqtt.max_payload_bytes=200")
    h.publish("pump-1", 0, FULL)
    h.raw("sensors/lab/pump-1", "{oops")
    h.raw("sensors/lab/pump-1", b"\xff\xfe")
    h.raw("sensors/lab/pump-1", '{"ts": 1700000001, "values": {"a": NaN}}')
    h.raw("sensors/lab/pump-1", '{"ts": 1700000001, "values": {"a": "1"}}')
    h.raw("sensors/lab/pump-1", '{"ts": 1900000000, "values": {"a": 1}}')
    h.raw(
        "sensors/lab/pump-1", '{"ts": 1700000001, "values": {"a": 1}, "pad": "' + "x" * 300 + '"}'
    )
    h.publish("fan-9", 0, FULL, site="yard")  # no rule for yard/*
    h.publish("pump-1", 1, {"a": 1.0, "zzz": 5.0})  # unknown channel: 'a' is still used
    h.publish("pump-1", 2, FULL)
    h.publish("pump-1", 0, {"c": 1.0})  # tick 0 is closed (lateness 0): too late
    h.raw("elsewhere/x", "1")
    h.publish("pump-1", 3, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    reasons = Counter(d.reason for d in h.dead())
    assert reasons == Counter(
        {
            "not_json": 1,
            "not_utf8": 1,
            "non_finite": 1,
            "bad_value": 1,
            "ts_future": 1,
            "oversized": 1,
            "unknown_device": 1,
            "unknown_channel": 1,
            "too_late": 1,
            "unknown_topic": 1,
        }
    )
    raw = {d.reason: d for d in h.dead()}
    assert raw["not_utf8"].raw == b"\xff\xfe"
    assert raw["not_json"].source == "mqtt:sensors/lab/pump-1"
    by_tick = rev0(h.scored())
    assert sorted(by_tick) == [0, 1, 2, 3]
    assert by_tick[1].values["a"] == 1.0 and by_tick[1].imputed == ("b", "c")
    assert h.metric("gapwatch_agent_bad_input_total", reason="too_late") == 1


def test_a_crash_loses_no_tick_and_repeats_none(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    sink = FakeSink()
    first = agent_harness(tmp_path, tmp_path / "bundles", "align.lateness_ticks=2", sink=sink)
    for k in range(10):
        first.publish("pump-1", k, FULL)
        if k < 5:  # pump-2 lags: its open ticks keep older journal rows alive
            first.publish("pump-2", k, FULL)
    first.pump()
    for _ in range(3):
        first.forwarder.step()
    spooled_before = len(sink.records)
    assert 0 < spooled_before < 15
    # SIGKILL: no shutdown. Five seconds later a new process opens the same spool and gets the
    # rest from the broker.
    first.clock.advance(5000)
    second = agent_harness(
        tmp_path,
        tmp_path / "bundles",
        "align.lateness_ticks=2",
        sink=sink,
        clock=first.clock,
        spool=Spool(first.config.spool_path),
    )
    assert second.agent.recover() > 2 * 2  # more than the open ticks' rows
    second.agent.step(0)  # the loop runs before the broker redelivers anything
    for k in range(5, 15):
        if k >= 10:
            second.publish("pump-1", k, FULL)
        second.publish("pump-2", k, FULL)
    second.pump()
    second.agent.shutdown()
    second.deliver()
    for device in ("pump-1", "pump-2"):
        ticks = [t for t in second.scored() if t.device == device]
        assert sorted(rev0(ticks)) == list(range(15)), device
        assert all(t.imputed == () for t in ticks)  # every reading found its tick
    assert second.dead() == []


def test_shutdown_finishes_the_open_ticks(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles", "align.lateness_ticks=5")
    for k in range(3):
        h.publish("pump-1", k, FULL)
    h.pump()
    assert h.spool.stats().records == 0  # all three still open
    h.agent.shutdown()
    assert h.source.stopped
    assert h.spool.stats().records == 3
    assert h.spool.recovery().rows == []


def test_a_full_spool_pauses_intake(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    spool = Spool(tmp_path / "small.sqlite", max_records=3, when_full="pause")
    h = agent_harness(tmp_path, tmp_path / "bundles", "inference.batch_max_ticks=1", spool=spool)
    for k in range(6):
        h.publish("pump-1", k, FULL)
    h.agent.step(0)
    assert spool.full
    h.publish("pump-1", 6, FULL)
    h.agent.step(0)
    assert h.source.pending == 1  # not taken while paused: the broker keeps it
    assert h.metric("gapwatch_agent_intake_paused") == 1
    h.deliver()
    h.agent.step(0)
    assert h.source.pending == 0
    assert h.metric("gapwatch_agent_intake_paused") == 0


def test_a_silent_device_goes_offline_once_and_is_not_imputed(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory(max_gap_ticks=2)
    h = agent_harness(tmp_path, tmp_path / "bundles")
    h.publish("pump-1", 0, FULL)
    h.pump()
    h.clock.advance(30_000)
    h.pump()
    h.clock.advance(30_000)
    h.pump()
    h.publish("pump-1", 65, FULL)
    h.publish("pump-1", 66, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    assert sorted(rev0(h.scored())) == [0, 1, 2, 65, 66]
    assert h.metric("gapwatch_agent_device_transitions_total", kind="offline") == 1
    assert h.metric("gapwatch_agent_device_transitions_total", kind="online") == 1


def test_warmup_ticks_are_flagged(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(
        tmp_path, tmp_path / "bundles", 'devices=[{match="lab/*", bundle="tiny", warmup_ticks=3}]'
    )
    for k in range(6):
        h.publish("pump-1", k, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    ticks = rev0(h.scored())
    assert [ticks[k].warmup for k in range(6)] == [True, True, True, False, False, False]


def test_health_reports_models_and_loop(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    ok, detail = h.agent.health()
    assert ok and detail["models"] == {"tiny": "1"}
    h.clock.advance(60_000)  # the loop has not stepped for a minute
    ok, _ = h.agent.health()
    assert not ok
    h.agent.step(0)
    assert h.agent.health()[0]
    assert math.isclose(h.metric("gapwatch_agent_model_info", model="tiny", version="1"), 1.0)


def test_a_dead_forwarder_stops_the_agent(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    h.forwarder.error = RuntimeError("boom")
    assert not h.agent.health()[0]
    with pytest.raises(TransportError, match="forwarder stopped"):
        h.agent.step(0)


def test_the_watchdog_stops_the_agent_when_mqtt_stays_away(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:

    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles", "mqtt.watchdog_s=5.0")
    h.source.is_connected = False
    original_poll = h.source.poll

    def slow_poll(max_messages: int, timeout_s: float) -> list[Any]:
        h.clock.advance(1000)  # every loop turn takes a second of the fake clock
        return original_poll(max_messages, timeout_s)

    h.source.poll = slow_poll  # type: ignore[method-assign]
    with pytest.raises(TransportError, match=r"mqtt\.watchdog_s"):
        h.agent.run(threading.Event())
    assert h.source.stopped  # it still shut down cleanly


def test_shared_subscriptions_prefix_sensor_filters_only() -> None:
    source = MqttSource(
        MqttConfig(shared_group="agents"),
        "cid",
        ["sensors/+/+"],
        FakeClock(),
        extra_filters=["gapwatch/models/+"],
    )
    assert source._filters == ["$share/agents/sensors/+/+", "gapwatch/models/+"]


def test_a_trickle_of_messages_is_gathered_into_one_journal_transaction(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    original_poll = h.source.poll
    polls: list[int] = []

    def trickle(max_messages: int, timeout_s: float) -> list[Any]:
        got = original_poll(max_messages, timeout_s)
        polls.append(len(got))
        if len(polls) == 1:  # more arrive while the agent gathers
            for k in range(1, 4):
                h.publish("pump-1", k, FULL)
        return got

    h.source.poll = trickle  # type: ignore[method-assign]
    journaled: list[int] = []
    original_journal = h.spool.journal

    def journal(messages: Any) -> list[int]:
        journaled.append(len(messages))
        return original_journal(messages)

    h.spool.journal = journal  # type: ignore[method-assign]
    h.publish("pump-1", 0, FULL)
    assert h.agent.step(0) == 4
    assert polls == [1, 3] and journaled == [4]  # one transaction, one ack for all four
    assert len(h.source.acked) == 4


def test_an_oversized_payload_is_a_short_dead_letter_and_delivery_goes_on(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    # issue 16: the `oversized` dead letter kept the whole 1.5 MB payload; Kafka (here: the
    # producer's 1 MiB max_request_size) refused it and the forwarder retried it forever.
    import hashlib
    import json

    agent_bundle_factory()
    sink = FakeSink(FakeClock(T0 + 500), max_record_bytes=1 << 20)
    h = agent_harness(tmp_path, tmp_path / "bundles", clock=sink.clock, sink=sink)
    body = {"ts": 1_700_000_000, "values": FULL, "pad": "é" * 750_000}
    huge = json.dumps(body, ensure_ascii=False).encode()  # 1.5 MB, 2-byte characters
    h.publish("pump-1", 0, FULL)
    h.raw("sensors/lab/pump-1", huge)
    for k in range(1, 4):
        h.publish("pump-1", k, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    [letter] = h.dead()
    assert letter.reason == "oversized"
    assert letter.raw_truncated and huge.startswith(letter.raw)
    assert 16 * 1024 - 3 <= len(letter.raw) <= 16 * 1024
    letter.raw.decode("utf-8")  # cut between characters, so it stays text
    assert (letter.raw_len, letter.raw_sha256) == (len(huge), hashlib.sha256(huge).hexdigest())
    assert sorted(rev0(h.scored())) == [0, 1, 2, 3]
    assert h.metric("gapwatch_agent_bad_input_total", reason="oversized") == 1
    assert h.forwarder.stats.quarantined == 0 and h.agent.health()[0]


def test_a_record_kafka_refuses_is_quarantined_counted_and_never_blocks_the_ticks(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    sink = FakeSink(FakeClock(T0 + 500), max_record_bytes=100_000)
    h = agent_harness(
        tmp_path,
        tmp_path / "bundles",
        "kafka.deadletter_raw_max_bytes=131072",  # letters big enough for this broker to refuse
        clock=sink.clock,
        sink=sink,
    )
    h.publish("pump-1", 0, FULL)
    h.raw("sensors/lab/pump-1", b"x" * 300_000)
    for k in range(1, 4):
        h.publish("pump-1", k, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    assert sorted(rev0(h.scored())) == [0, 1, 2, 3]
    assert h.dead() == []
    [q] = h.spool.quarantined()
    assert q.topic == h.config.kafka.deadletter_topic and q.reason == "too_large"
    assert h.metric("gapwatch_agent_kafka_quarantined_total", reason="too_large") == 1
    ok, detail = h.agent.health()
    assert ok and detail["kafka_quarantined"] == 1 and not detail["delivery_stuck"]


def test_health_turns_unhealthy_while_delivery_is_stuck(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    sink = FakeSink(FakeClock(T0 + 500), down=True)
    h = agent_harness(
        tmp_path, tmp_path / "bundles", "kafka.stuck_after_s=60", clock=sink.clock, sink=sink
    )
    for k in range(3):
        h.publish("pump-1", k, FULL)
    for _ in range(30):  # five seconds a round: the loop stays alive, Kafka stays away
        h.pump(1)
        h.forwarder.step()
        h.clock.advance(5000)
    ok, detail = h.agent.health()
    assert not ok and detail["delivery_stuck"] and detail["kafka_stuck_s"] > 60
    assert detail["loop_alive"]
    sink.down = False
    h.deliver()
    ok, detail = h.agent.health()
    assert ok and not detail["delivery_stuck"]


def test_names_that_are_not_utf8_are_dead_lettered_as_bad_name_not_a_crash(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    # A device from the topic with a lone surrogate reached `key.encode()` and raised
    # UnicodeEncodeError out of the agent loop. (Mosquitto refuses such topics; the check
    # does not rely on it.)
    agent_bundle_factory()
    h = agent_harness(tmp_path, tmp_path / "bundles")
    h.publish("pump-1", 0, FULL)
    h.raw("sensors/lab/pump-\ud800", '{"ts": 1700000001, "values": {"a": 1}}')
    h.raw("sensors/lab/pump-1", '{"ts": 1700000001, "values": {"a": 1, "b\\ud800": 2}}')
    h.publish("pump-1", 2, FULL)
    h.pump()
    h.agent.shutdown()
    h.deliver()
    letters = h.dead()
    assert [d.reason for d in letters] == ["bad_name", "bad_name"]
    assert letters[1].detail == "b\\ud800: bad_name"  # escaped: the detail is writable text
    assert letters[0].source == "mqtt:sensors/lab/pump-\ud800"  # as it came (JSON-escaped)
    by_tick = rev0(h.scored())
    assert sorted(by_tick) == [0, 1, 2]
    assert by_tick[1].values["a"] == 1.0  # the good channel of that payload was used
    assert {t.device for t in h.scored()} == {"pump-1"}
    assert h.metric("gapwatch_agent_bad_input_total", reason="bad_name") == 2


def test_a_line_protocol_batch_feeds_each_device_and_dead_letters_per_reading(
    tmp_path: Path, agent_bundle_factory: BundleFactory, agent_harness: AgentFactory
) -> None:
    agent_bundle_factory()
    h = agent_harness(
        tmp_path,
        tmp_path / "bundles",
        'mqtt.inputs=[{topic = "lp/{site}", format = "influx_line", device_key = "host"}]',
    )
    for k in range(3):
        ns = (T0 + k * 1000) * 1_000_000
        lines = [f"m,host=pump-1 a=11,b=12,c=13 {ns}", f"m,host=pump-2 a=1,b=2,c=3 {ns}"]
        if k == 1:
            lines.append(f"m,host=pump-3 a=1,zzz=2 {ns}")  # 'a' used, 'zzz' dead-lettered
        h.raw("lp/lab", "\n".join(lines))
    h.raw("lp/lab", "m,host=pump-1 a=1\nnot line protocol")  # refused whole
    h.pump()
    h.agent.shutdown()
    h.deliver()
    for device in ("pump-1", "pump-2"):
        ticks = rev0([t for t in h.scored() if t.device == device])
        assert sorted(ticks) == [0, 1, 2] and all(t.imputed == () for t in ticks.values())
    assert rev0([t for t in h.scored() if t.device == "pump-2"])[1].values["a"] == 1.0
    assert [t.values["a"] for t in h.scored() if t.device == "pump-3" and t.revision == 0] == [1.0]
    assert Counter(d.reason for d in h.dead()) == Counter({"unknown_channel": 1, "bad_line": 1})
    assert h.metric("gapwatch_agent_readings_total") == 2 * 3 * 3 + 1
