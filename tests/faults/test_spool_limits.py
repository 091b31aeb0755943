"""A long Kafka outage: the agent's spool fills to its cap and follows ``spool.when_full``.

Kafka is configured but not started until the spool is full (the outage), then started on
the same port (the recovery). With ``drop_oldest`` the oldest records are deleted, and the
count reported by the metric equals exactly what never reached Kafka; with ``pause`` the agent
stops taking MQTT messages (the broker holds them for the persistent session) and, once Kafka is
back, everything arrives, nothing dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1100
CAP = 1000  # spool.max_records (its minimum)


def _settled(agent: Any, h: Any, rows: int) -> dict[str, float]:
    """Wait until the agent took every message and closed every tick; return its counters."""
    names = {
        "messages": "gapwatch_agent_messages_total",
        "rev0": 'gapwatch_agent_ticks_total{revision="0"}',
        "rev1": 'gapwatch_agent_ticks_total{revision="1"}',
        "letters": "gapwatch_agent_dead_letters_total",
        "dropped": "gapwatch_agent_spool_dropped_total",
        "spooled": "gapwatch_agent_spool_records",
        "paused": "gapwatch_agent_intake_paused",
        "acked": "gapwatch_agent_kafka_acked_total",
    }
    last: dict[str, float] = {}
    stable = 0

    def settled() -> bool:
        nonlocal last, stable
        now = {k: agent.metric(v) for k, v in names.items()}
        same = now == last
        last = now
        stable = stable + 1 if same else 0
        return now["messages"] >= rows and stable >= 10  # 2 s without change

    h.wait_until("the agent to take every message", settled, timeout_s=120)
    return last


def test_drop_oldest_reports_exactly_what_it_dropped(
    faults_harness: Any,
    faults_mosquitto: Any,
    faults_kafka_factory: Any,
    faults_agent: Any,
    faults_skab_files: list[Path],
) -> None:
    h = faults_harness
    kafka = faults_kafka_factory(start=False)  # the outage: nothing listens yet
    bootstrap = f"127.0.0.1:{kafka.port}"
    agent = faults_agent(
        faults_mosquitto.port,
        bootstrap,
        spool__max_records=str(CAP),
        spool__when_full='"drop_oldest"',
        kafka__max_block_ms="500",
    )
    agent.start()
    agent.wait_subscribed()
    replay = h.Replay(faults_skab_files[:1], faults_mosquitto.port, agent.prefix, ROWS, 0)
    assert replay.wait(120) == [0]
    before = _settled(agent, h, ROWS)
    produced = before["rev0"] + before["rev1"] + before["letters"]
    assert before["dropped"] > 0, f"the outage never filled the spool: {before}"
    assert before["spooled"] == CAP
    assert produced - before["dropped"] == CAP

    kafka.start()  # recovery
    h.wait_until(
        "the spool to drain", lambda: agent.metric("gapwatch_agent_spool_records") == 0, 180
    )
    delivered = produced - before["dropped"]
    scored = h.read_topic(bootstrap, f"{agent.prefix}.scored", lambda v: False, timeout_s=8)
    letters = h.read_topic(bootstrap, f"{agent.prefix}.deadletter", lambda v: False, timeout_s=3)
    assert agent.stop() == 0, agent.log_text()
    assert len(scored) + len(letters) == delivered, "dropped + delivered != produced"

    counts, first = h.tick_index(scored)
    assert [k for k, n in counts.items() if n > 1] == []
    expected = next(iter(replay.expected().values()))
    kept = sorted(int(k.rsplit("@", 1)[1]) for k in first)
    lost = sorted(expected - set(kept))
    assert lost, "drop_oldest dropped records but every revision-0 tick arrived"
    assert max(lost) < min(kept), "a newer record was dropped while an older one was kept"
    logged = sum(
        int(e.get("records", 0)) for e in agent.events() if e.get("event") == "spool.dropped_oldest"
    )
    assert logged == before["dropped"], "the log and the metric disagree on what was dropped"


def test_pause_holds_intake_and_loses_nothing(
    faults_harness: Any,
    faults_mosquitto: Any,
    faults_kafka_factory: Any,
    faults_agent: Any,
    faults_skab_files: list[Path],
) -> None:
    h = faults_harness
    kafka = faults_kafka_factory(start=False)
    bootstrap = f"127.0.0.1:{kafka.port}"
    agent = faults_agent(
        faults_mosquitto.port,
        bootstrap,
        spool__max_records=str(CAP),
        spool__when_full='"pause"',
        kafka__max_block_ms="500",
    )
    agent.start()
    agent.wait_subscribed()
    replay = h.Replay(faults_skab_files[:1], faults_mosquitto.port, agent.prefix, ROWS, 0)
    assert replay.wait(120) == [0]
    h.wait_until(
        "intake to pause with a full spool",
        lambda: (
            agent.metric("gapwatch_agent_intake_paused") == 1
            and agent.metric("gapwatch_agent_spool_records") >= CAP
        ),
        60,
    )
    held = ROWS - agent.metric("gapwatch_agent_messages_total")
    assert held > 0, "every message was taken although the spool is full"

    kafka.start()
    expected = next(iter(replay.expected().values()))
    device = next(iter(replay.expected()))
    want = {f"{device}@{ts}" for ts in expected}
    scored = h.read_topic(
        bootstrap,
        f"{agent.prefix}.scored",
        lambda v: want <= set(h.tick_index(v)[1]),
        timeout_s=180,
    )
    counts, first = h.tick_index(scored)
    assert want <= set(first), f"{len(want - set(first))} ticks lost under the pause policy"
    assert [k for k, n in counts.items() if n > 1] == []
    assert agent.metric("gapwatch_agent_spool_dropped_total") == 0
    h.wait_until("intake to resume", lambda: agent.metric("gapwatch_agent_intake_paused") == 0, 60)
    assert agent.stop() == 0, agent.log_text()
    print(f"\npause policy: {held:.0f} of {ROWS} messages held at the broker during the outage")
