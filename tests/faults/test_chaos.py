"""kill -9 of Mosquitto, Kafka, the agent, the sink and InfluxDB, one at a time, mid-replay.

Three SKAB devices are replayed (``gapwatch simulate``, QoS 1) through a private Mosquitto that
persists every change and a private Kafka into a real ``gapwatch agent``, and a real
``gapwatch sink`` writes the scored ticks into a private InfluxDB. At random moments
(seeded: ``GAPWATCH_FAULTS_SEED`` reproduces a run; the seed is printed) each component is
SIGKILLed, left down for a random while, and restarted. Afterwards:

* every replayed tick is in Kafka exactly once as revision 0, and no ``(device, tick,
  revision)`` twice;
* every published message is accounted for: its values are observed (not imputed) in its
  tick, or the message is a dead letter with a reason (e.g. ``too_late`` after an outage the
  wall clock closed the tick over) — nothing vanishes silently;
* InfluxDB holds one point per ``(device, tick)`` in Kafka, carrying its latest revision.

Recovery times (restart -> MQTT messages flowing again for Mosquitto, -> next record
acknowledged by Kafka for Kafka and the agent, -> more points in InfluxDB for the sink and
InfluxDB) are printed and written to
``.gapwatch/faults/recovery.json``; they are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 360  # per device
SPEED = 4.0  # 90 s of replay
ACKED = "gapwatch_agent_kafka_acked_total"
MESSAGES = "gapwatch_agent_messages_total"
ARTIFACT = Path(__file__).resolve().parents[2] / ".gapwatch" / "faults" / "recovery.json"


def _count(agent: Any, sample: str) -> float:
    value = agent.metric(sample)
    return -1.0 if value != value else value  # NaN (agent down) -> -1


def test_kill9_each_component_during_a_multi_device_replay(
    faults_harness: Any,
    faults_mosquitto: Any,
    faults_kafka_factory: Any,
    faults_influx: Any,
    faults_agent: Any,
    faults_skab_files: list[Path],
    tmp_path: Path,
) -> None:
    h = faults_harness
    seed = int(os.environ.get("GAPWATCH_FAULTS_SEED", str(random.randrange(1 << 30))))
    print(f"\nfault-injection seed {seed} (GAPWATCH_FAULTS_SEED={seed} reproduces the order)")
    rng = random.Random(seed)
    mosquitto, influx = faults_mosquitto, faults_influx
    kafka = faults_kafka_factory()
    bootstrap = f"127.0.0.1:{kafka.port}"
    agent = faults_agent(mosquitto.port, bootstrap, align__lateness_ticks="2")
    agent.start()
    agent.wait_subscribed()
    influx_url = f"http://127.0.0.1:{influx.port}"
    database = agent.prefix.replace("-", "_")
    sink = h.Sink(
        h.sink_env(
            kafka_bootstrap=bootstrap,
            topic=f"{agent.prefix}.scored",
            influx_url=influx_url,
            database=database,
        ),
        tmp_path,
    )
    sink.start()

    def points() -> float:
        found = h.influx_revisions(influx_url, database)
        return -1.0 if found is None else float(len(found))

    def restart_agent() -> None:
        agent.start()
        agent.wait_subscribed()

    # name -> (kill, restart, progress signal: a count that rises again once it has recovered)
    components: dict[str, tuple[Any, Any, Any]] = {
        "mosquitto": (mosquitto.kill, mosquitto.start, lambda: _count(agent, MESSAGES)),
        "kafka": (kafka.kill, kafka.start, lambda: _count(agent, ACKED)),
        "agent": (agent.kill, restart_agent, lambda: _count(agent, ACKED)),
        "sink": (sink.kill, sink.start, points),
        "influxdb": (influx.kill, influx.start, points),
    }
    replay = h.Replay(faults_skab_files, mosquitto.port, agent.prefix, ROWS, SPEED)
    t0 = time.monotonic()
    order = rng.sample(sorted(components), len(components))
    slots = [(4.0 + 16.0 * k, 12.0 + 16.0 * k) for k in range(len(order))]  # into the replay
    recoveries: list[dict[str, Any]] = []
    for (lo, hi), target in zip(slots, order, strict=True):
        kill, restart, progress = components[target]
        time.sleep(max(0.0, t0 + rng.uniform(lo, hi) - time.monotonic()))
        down = rng.uniform(0.5, 3.0)
        killed_at = time.monotonic()
        kill()
        time.sleep(down)
        restarted_at = time.monotonic()
        restart()
        ready_s = time.monotonic() - restarted_at
        before = 0.0 if target == "agent" else progress()  # a new agent's counters start at 0
        signal = {"kind": "progress"}

        def back(p: Any = progress, b: float = before, sig: dict[str, str] = signal) -> bool:
            # Progress means the count rises again. A kill that lands after the replay has
            # published everything can see no new input: then being reachable is recovery, and
            # the checks below (every tick in Kafka and InfluxDB) still prove nothing was lost.
            value = p()
            if value > b:
                return True
            if not replay.running() and value >= 0:
                sig["kind"] = "reachable (replay over)"
                return True
            return False

        recovered = h.wait_until(f"progress after restarting {target}", back, timeout_s=120)
        recoveries.append(
            {
                "component": target,
                "killed_at_s": round(killed_at - t0, 2),
                "down_s": round(down, 2),
                "ready_after_restart_s": round(ready_s, 2),
                "recovered_after_restart_s": round(ready_s + recovered, 2),
                "recovered_after_kill_s": round(time.monotonic() - killed_at, 2),
                "signal": signal["kind"],
            }
        )
    codes = replay.wait(240)
    assert codes == [0] * len(codes), f"a simulator failed: {codes}"

    expected = replay.expected()
    want = {f"{dev}@{ts}" for dev, times in expected.items() for ts in times}

    def complete(values: list[bytes]) -> bool:
        return want <= set(h.tick_index(values)[1])

    scored = h.read_topic(bootstrap, f"{agent.prefix}.scored", complete, timeout_s=120)
    assert agent.stop() == 0, agent.log_text()
    latest: dict[str, int] = {}
    for key, ts, revision in h.tick_index(scored)[0]:
        latest[f"{key}@{ts}"] = max(revision, latest.get(f"{key}@{ts}", -1))

    def stored() -> bool:
        return h.influx_revisions(influx_url, database) == latest

    try:
        h.wait_until("InfluxDB to hold every tick at its latest revision", stored, 120)
    finally:
        sink_code = sink.stop()
    assert sink_code == 0, sink.log_text()
    counts, first = h.tick_index(scored)
    letters = h.read_topic(bootstrap, f"{agent.prefix}.deadletter", lambda v: False, timeout_s=5)

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "seed": seed,
        "rows_per_device": ROWS,
        "speed": SPEED,
        "points_in_influxdb": len(latest),
        "recoveries": recoveries,
    }
    ARTIFACT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    assert [k for k, n in counts.items() if n > 1] == [], "a (device, tick, revision) twice"
    missing = sorted(want - set(first))
    assert missing == [], f"{len(missing)} ticks never reached Kafka, e.g. {missing[:5]}"

    lost, stats = h.unaccounted(scored, letters, want)
    print(f"accounting: {stats}")
    assert lost == [], (
        f"{len(lost)} published messages vanished (neither observed in their tick nor named by "
        f"a dead letter), e.g. {lost[:5]}"
    )
