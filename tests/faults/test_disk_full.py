"""The spool's disk fills up during a Kafka outage: reported, intake paused, no crash loop.

The spool lives on a 6 MiB tmpfs mounted by the test (``faults_tiny_disk``: needs root;
skipped otherwise, a failure under ``GAPWATCH_REQUIRE_SERVICES=1``), far
below ``spool.max_bytes``, so the disk fills before the spool's own cap; ``spool.min_free_bytes``
(4.5 MiB here: more than SQLite's write-ahead log grows to between checkpoints, ~4 MiB) is the
headroom kept for the forwarder's bookkeeping. The agent must say so (log
event ``spool.disk_full``, ``/healthz`` and the intake-paused metric), stay up, and, once Kafka
is back and the spool drains, take the held messages again: every tick arrives exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 1100  # per device, three devices: ~3.5 MB of journal and records


def test_disk_full_under_the_spool_pauses_intake_and_recovers(
    faults_harness: Any,
    faults_mosquitto: Any,
    faults_kafka_factory: Any,
    faults_agent: Any,
    faults_skab_files: list[Path],
    faults_tiny_disk: Path,
) -> None:
    h = faults_harness
    kafka = faults_kafka_factory(start=False)
    bootstrap = f"127.0.0.1:{kafka.port}"
    agent = faults_agent(
        faults_mosquitto.port,
        bootstrap,
        spool__path=f'"{faults_tiny_disk / "spool.sqlite"}"',
        spool__min_free_bytes=str(9 * 512 * 1024),
        kafka__max_block_ms="500",
    )
    agent.start()
    agent.wait_subscribed()
    replay = h.Replay(faults_skab_files, faults_mosquitto.port, agent.prefix, ROWS, 0)
    assert replay.wait(120) == [0, 0, 0]

    def reported() -> bool:
        assert agent.alive(), f"the agent died on a full disk:\n{agent.log_text()}"
        return any(e.get("event") == "spool.disk_full" for e in agent.events())

    h.wait_until("the full disk to be reported", reported, 60)
    h.wait_until("intake to pause", lambda: agent.metric("gapwatch_agent_intake_paused") == 1, 30)
    health = agent.health() or {}
    assert health.get("spool_disk_full") is True, f"/healthz hides the full disk: {health}"
    assert health.get("intake_paused") is True, f"/healthz hides the paused intake: {health}"
    assert agent.alive()

    kafka.start()
    want = {f"{dev}@{ts}" for dev, times in replay.expected().items() for ts in times}
    stable, seen = [0], {}
    names = ("messages_total", "spool_records", "intake_paused", "kafka_acked_total")

    def drained() -> bool:
        seen.update({n: agent.metric(f"gapwatch_agent_{n}") for n in names})
        done = (
            seen["messages_total"] >= replay.messages
            and seen["spool_records"] == 0
            and seen["intake_paused"] == 0
        )
        stable[0] = stable[0] + 1 if done else 0
        return stable[0] >= 15  # 3 s: the last ticks closed and went out

    try:
        h.wait_until("every held message taken and the spool drained", drained, 180)
    except AssertionError as exc:
        # The agent's own log says which side is stuck (forwarder retries, disk checks).
        raise AssertionError(
            f"{exc}; agent counters: {seen}\nagent log (tail):\n{agent.log_text(12000)}"
        ) from None
    health = agent.health() or {}
    assert health.get("spool_disk_full") is False, f"/healthz still reports a full disk: {health}"
    assert health.get("intake_paused") is False, f"/healthz still reports paused intake: {health}"
    scored = h.read_topic(bootstrap, f"{agent.prefix}.scored", lambda v: False, 10)
    letters = h.read_topic(bootstrap, f"{agent.prefix}.deadletter", lambda v: False, 5)
    assert agent.stop() == 0, agent.log_text()
    counts, _ = h.tick_index(scored)
    assert [k for k, n in counts.items() if n > 1] == [], "a (device, tick, revision) twice"
    lost, stats = h.unaccounted(scored, letters, want)
    print(f"\ndisk full: {stats}")
    assert lost == [], f"{len(lost)} messages vanished after the disk filled, e.g. {lost[:5]}"
