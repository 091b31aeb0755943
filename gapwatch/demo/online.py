"""``gapwatch demo``: the main job end to end, on the local stack, with real processes.

1. check Mosquitto, Kafka and InfluxDB answer; stop the previous run's processes and drop its
   topics and database (only the newest run's data is kept);
2. fresh names for this run (:class:`~gapwatch.demo.services.RunNames`): Kafka topics, an
   InfluxDB database, an MQTT topic prefix, so every count belongs to this run;
3. start ``gapwatch sink`` and ``gapwatch agent`` as subprocesses with generated configs under
   ``<state>/run/`` and wait until the agent is connected to MQTT;
4. replay the files over MQTT (:mod:`gapwatch.demo.publish`) while polling InfluxDB for each
   device's newest stored tick; wait until every device's last tick is stored;
5. count ticks, imputed entries and anomalies with InfluxQL, read the stored series back, and
   score them against the withheld truth and the labels (:mod:`gapwatch.demo.summary`);
6. start ``gapwatch dashboard`` in the background on the run's database.

The agent, the sink and the dashboard keep running afterwards; :func:`down` (``gapwatch demo
--down``, ``make demo-down``) stops them.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.bundle import Bundle
from gapwatch.demo.errors import DemoError, DemoTimeout
from gapwatch.demo.influx import StoredCounts, fetch_trace, stored_counts
from gapwatch.demo.inputs import Replay
from gapwatch.demo.processes import (
    Processes,
    agent_connected,
    agent_counters,
    free_port,
    stop_recorded,
    wait_until,
)
from gapwatch.demo.publish import (
    PahoPublisher,
    VisibilityPoller,
    device_speeds,
    publish,
    rebase,
    schedule,
    tick_latencies,
    tick_publish_times,
)
from gapwatch.demo.services import (
    RunNames,
    Stack,
    agent_toml,
    check_stack,
    drop_storage,
    influx_client,
    link_bundle,
    prepare_storage,
    sink_toml,
)
from gapwatch.demo.summary import DemoSummary, Outcome, detection, imputation_rows, latency

__all__ = ["OnlineResult", "OnlineSettings", "Progress", "down", "run_online"]

RUN_FILE = "run.json"


class Progress(Protocol):
    def stage(self, text: str) -> None: ...

    def bar(self, total: int, desc: str, unit: str) -> Callable[[int], None]:
        """Start a bar; the returned function advances it (a negative step closes it)."""


@dataclass(frozen=True)
class OnlineSettings:
    speed: float = 100.0
    warmup: int = 400
    rescale: bool = False
    lateness_ticks: int = 2
    poll_s: float = 0.2
    settle_timeout_s: float = 180.0
    dashboard: bool = True
    dashboard_port: int = 8050
    sink_max_wait_s: float = 1.0
    duration_s: float | None = None  # fit every file into this many seconds (else speed)
    stall_s: float = 15.0  # nothing new stored this long after the replay: stop waiting
    rebase: bool = True  # move the files' stamps to the present (else keep the originals)


@dataclass(frozen=True)
class OnlineResult:
    summary: DemoSummary
    outcomes: tuple[Outcome, ...]
    names: RunNames
    counts: StoredCounts
    dashboard_url: str | None
    run_dir: Path
    replays: tuple[Replay, ...] = ()  # as published (re-based stamps)


def _drop_previous(state: Path, stack: Stack) -> None:
    """Stop the last run's processes; drop its database and topics."""
    run_dir = state / "run"
    stop_recorded(run_dir)
    try:
        previous = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))["names"]
    except (OSError, ValueError, KeyError):
        return
    drop_storage(stack, previous)


def _start_dashboard(procs: Processes, stack: Stack, names: RunNames, port: int) -> str:
    procs.start(
        "dashboard",
        [
            sys.executable,
            "-m",
            "gapwatch",
            "dashboard",
            "--influx",
            stack.influx_url,
            "--db",
            names.database,
            "--port",
            str(free_port(port)),
        ],
        marker=names.database,
    )
    found: list[str] = []

    def serving() -> bool:
        text = procs.log_path("dashboard").read_text(encoding="utf-8", errors="replace")
        match = re.search(r"serving (http://\S+)", text)
        if match:
            found.append(match.group(1))
        return bool(found)

    wait_until(serving, 30.0, "gapwatch dashboard", check=lambda: procs.check_alive(["dashboard"]))
    return found[0]


def _settle(
    poller: VisibilityPoller,
    expected: dict[str, int],
    procs: Processes,
    *,
    timeout_s: float,
    stall_s: float,
    advance: Callable[[int], None],
) -> list[str]:
    """Wait until every device's last published tick is stored; return the devices that never
    got there because nothing moved for ``stall_s`` (messages lost on the way)."""
    deadline = time.monotonic() + timeout_s
    done: set[str] = set()
    last: dict[str, int] = {}
    moved_at = time.monotonic()
    while True:
        procs.check_alive(["agent", "sink"])
        newest = poller.newest()
        if newest != last:
            last, moved_at = newest, time.monotonic()
        now_done = {d for d, t in expected.items() if newest.get(d, -1) >= t}
        advance(len(now_done - done))
        done = now_done
        if len(done) == len(expected):
            return []
        if time.monotonic() - moved_at > stall_s:
            return sorted(set(expected) - done)
        if time.monotonic() > deadline:
            late = sorted(set(expected) - done)
            raise DemoTimeout(
                f"after {timeout_s:.0f} s, {len(late)} devices' last ticks are not in InfluxDB "
                f"({', '.join(late[:5])}...); see {procs.log_path('agent')} and "
                f"{procs.log_path('sink')}"
            )
        time.sleep(poller.interval_s)


def run_online(
    replays: Sequence[Replay],
    bundle: Bundle,
    state: Path,
    stack: Stack,
    settings: OnlineSettings,
    *,
    progress: Progress,
    now: Callable[[], datetime],
    clock: Callable[[], float] = time.monotonic,
) -> OnlineResult:
    """Run the live demo (see the module docstring)."""
    m = bundle.manifest
    tick_ms = max(1, round(m.tick_seconds * 1000))
    progress.stage(
        f"checking the local stack ({stack.mqtt_host}:{stack.mqtt_port}, "
        f"{stack.kafka_bootstrap}, {stack.influx_url})"
    )
    check_stack(stack)
    _drop_previous(state, stack)
    names = RunNames.new("demo", now())
    run_dir, metrics_port, record = _prepare_run(state, stack, names, bundle, settings)
    procs = _start_services(run_dir, names, metrics_port, progress)

    speeds = device_speeds(replays, settings.speed, settings.duration_s)
    if settings.rebase:
        replays = rebase(replays, speeds, round(now().timestamp() * 1000), tick_ms)
    topics = [names.topic_template.format(site=names.site, device=r.device) for r in replays]
    items = schedule(replays, topics, settings.speed, settings.duration_s)
    expected = _expected_last_ticks(replays, items, tick_ms, m.max_gap_ticks)
    t_start, sent, incomplete, poller = _replay_and_settle(
        stack,
        names,
        items=items,
        replays=replays,
        speeds=speeds,
        expected=expected,
        procs=procs,
        settings=settings,
        progress=progress,
        clock=clock,
        max_gap_ticks=m.max_gap_ticks,
    )

    progress.stage(f"reading the results back from InfluxDB database {names.database}")
    summary, outcomes, counts = _read_back(
        stack,
        names,
        replays,
        bundle=bundle,
        items=items,
        sent=sent,
        poller=poller,
        settings=settings,
        timing=(t_start, clock),
        metrics_port=metrics_port,
        incomplete=incomplete,
    )
    url = None
    if settings.dashboard:
        progress.stage("starting the dashboard")
        url = _start_dashboard(procs, stack, names, settings.dashboard_port)
    record["dashboard"] = url
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return OnlineResult(summary, outcomes, names, counts, url, run_dir, tuple(replays))


def _replay_and_settle(
    stack: Stack,
    names: RunNames,
    *,
    items: Sequence[Any],
    replays: Sequence[Replay],
    speeds: Sequence[float],
    expected: dict[str, int],
    procs: Processes,
    settings: OnlineSettings,
    progress: Progress,
    clock: Callable[[], float],
    max_gap_ticks: int,
) -> tuple[float, np.ndarray, list[str], VisibilityPoller]:
    """Publish everything while polling InfluxDB; wait until every device's last tick is in."""
    poll_client = influx_client(stack, names.database)
    poller = VisibilityPoller(
        poll_client,
        measurement="readings",
        field_name="threshold",
        clock=clock,
        interval_s=settings.poll_s,
    )
    poller.start()
    try:
        t_start, sent = _publish_all(
            stack,
            names,
            items=items,
            replays=replays,
            speeds=speeds,
            settings=settings,
            progress=progress,
            clock=clock,
        )
        progress.stage(
            "waiting for every device's last tick to be stored in InfluxDB (a device that stops "
            f"is imputed for {max_gap_ticks} ticks, then declared offline)"
        )
        settle_bar = progress.bar(len(expected), "devices complete", "dev")
        incomplete = _settle(
            poller,
            expected,
            procs,
            timeout_s=settings.settle_timeout_s,
            stall_s=settings.stall_s,
            advance=settle_bar,
        )
        settle_bar(-1)
        time.sleep(2 * settings.poll_s)
    finally:
        poller.stop()
        poll_client.close()
    return t_start, sent, incomplete, poller


def _read_back(
    stack: Stack,
    names: RunNames,
    replays: Sequence[Replay],
    *,
    bundle: Bundle,
    items: Sequence[Any],
    sent: np.ndarray,
    poller: VisibilityPoller,
    settings: OnlineSettings,
    timing: tuple[float, Callable[[], float]],
    metrics_port: int,
    incomplete: Sequence[str],
) -> tuple[DemoSummary, tuple[Outcome, ...], StoredCounts]:
    """What InfluxDB holds, scored against the truth: the summary, per-device outcomes, counts."""
    m = bundle.manifest
    tick_ms = max(1, round(m.tick_seconds * 1000))
    t_start, clock = timing
    taken = agent_counters(metrics_port)
    client = influx_client(stack, names.database)
    try:
        counts = stored_counts(client, m.channel_names)
        outcomes, lat_samples, visible = _outcomes(
            client,
            replays,
            items=items,
            sent=sent,
            poller=poller,
            bundle=bundle,
            tick_ms=tick_ms,
        )
    finally:
        client.close()
    t_end = float(np.nanmax(visible)) if visible.size and np.isfinite(visible).any() else clock()
    seconds = max(t_end - t_start, 1e-9)
    received = taken.get("gapwatch_agent_messages_total")
    summary = DemoSummary(
        mode="online",
        model=f"{m.name}/{m.version}",
        devices=len(replays),
        messages=len(items),
        readings=sum(r.readings for r in replays),
        ticks=counts.ticks,
        scored_ticks=counts.scored_ticks,
        imputed_entries=counts.imputed_entries,
        anomaly_ticks=counts.anomaly_ticks,
        imputation=imputation_rows(outcomes),
        detection=detection([o.trace for o in outcomes]),
        latency=latency(lat_samples, settings.poll_s),
        throughput_ticks_s=counts.ticks / seconds,
        seconds=seconds,
        counts_from=f"InfluxQL on database {names.database}",
        notes=tuple(_notes(settings, m.max_gap_ticks, received, len(items), incomplete)),
        received=None if received is None else int(received),
    )
    return summary, outcomes, counts


def _prepare_run(
    state: Path, stack: Stack, names: RunNames, bundle: Bundle, settings: OnlineSettings
) -> tuple[Path, int, dict[str, Any]]:
    """A fresh run folder with the agent's and the sink's configs; storage made ready."""
    run_dir = (state / "run").resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    prepare_storage(stack, names)
    bundles_root = link_bundle(run_dir, bundle)
    metrics_port = free_port()
    (run_dir / "agent.toml").write_text(
        agent_toml(
            names,
            stack,
            state_dir=run_dir / "agent",
            bundles_root=bundles_root,
            model=bundle.manifest.name,
            metrics_port=metrics_port,
            warmup_ticks=settings.warmup,
            rescale=settings.rescale,
            lateness_ticks=settings.lateness_ticks,
        ),
        encoding="utf-8",
    )
    (run_dir / "sink.toml").write_text(
        sink_toml(names, stack, max_wait_s=settings.sink_max_wait_s), encoding="utf-8"
    )
    record: dict[str, Any] = {
        "names": names.to_dict(),
        "stack": stack.__dict__,
        "run_dir": str(run_dir),
    }
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return run_dir, metrics_port, record


def _start_services(
    run_dir: Path, names: RunNames, metrics_port: int, progress: Progress
) -> Processes:
    procs = Processes(run_dir)
    gw = [sys.executable, "-m", "gapwatch"]
    progress.stage(f"starting sink and agent (run {names.run_id}, logs in {run_dir / 'logs'})")
    procs.start("sink", [*gw, "sink", "--config", str(run_dir / "sink.toml")], str(run_dir))
    procs.start("agent", [*gw, "agent", "--config", str(run_dir / "agent.toml")], str(run_dir))
    wait_until(
        lambda: agent_connected(metrics_port),
        60.0,
        "gapwatch agent (MQTT connection)",
        check=lambda: procs.check_alive(["agent", "sink"]),
    )
    time.sleep(1.0)  # the subscription is sent on connect; give the broker a moment to take it
    return procs


def _expected_last_ticks(
    replays: Sequence[Replay], items: Sequence[Any], tick_ms: int, max_gap_ticks: int
) -> dict[str, int]:
    """Per device, the last tick that must reach InfluxDB."""
    expected: dict[str, int] = {}
    for it in items:
        tick = (it.ts_ms + tick_ms // 2) // tick_ms * tick_ms
        dev = replays[it.device].device
        expected[dev] = max(expected.get(dev, tick), tick)
    # After its last message a device falls silent: the agent imputes its next max_gap_ticks
    # ticks (wall clock) and then declares it offline. Those ticks are the last to be stored.
    trailing = max_gap_ticks * tick_ms
    return {dev: last + trailing for dev, last in expected.items()}


def _publish_all(
    stack: Stack,
    names: RunNames,
    *,
    items: Sequence[Any],
    replays: Sequence[Replay],
    speeds: Sequence[float],
    settings: OnlineSettings,
    progress: Progress,
    clock: Callable[[], float],
) -> tuple[float, np.ndarray]:
    """Publish every scheduled message; (start time, per-message send times)."""
    publisher = PahoPublisher(stack.mqtt_host, stack.mqtt_port, f"gapwatch-demo-pub-{names.run_id}")
    if settings.duration_s:
        pace = (
            f"in {settings.duration_s:g} s each ({min(speeds):.0f}x to {max(speeds):.0f}x "
            "real time)"
        )
    else:
        pace = "as fast as possible" if settings.speed <= 0 else f"at {settings.speed:g}x"
    progress.stage(f"replaying {len(replays)} files ({len(items):,} messages) over MQTT {pace}")
    bar = progress.bar(len(items), "published", "msg")
    try:
        t_start = clock()
        sent = publish(items, publisher, clock=clock, sleep=time.sleep, on_sent=bar)
        bar(-1)
    finally:
        publisher.close()
    return t_start, sent


def _notes(
    settings: OnlineSettings,
    max_gap_ticks: int,
    received: float | None,
    published: int,
    incomplete: Sequence[str],
) -> list[str]:
    notes = [
        f"when a file ends its device falls silent: its next {max_gap_ticks} ticks are "
        "imputed (no truth there), then it is declared offline",
        "latency is an upper bound: a tick counts as stored when a poll first sees it",
        f"sink batches wait up to {settings.sink_max_wait_s:g} s (batch.max_wait_s)",
    ]
    if settings.warmup:
        notes.append(f"first {settings.warmup} ticks per device are warm-up (no alarms)")
    if settings.rebase:
        notes.append(
            "stamps re-based to the present: each file's newest reading is stamped when it "
            "was sent (--keep-time keeps the files' own)"
        )
    if received is not None and int(received) != published:
        notes.append(
            f"the agent received {int(received):,} of {published:,} messages published "
            "(Mosquitto drops messages for a subscriber that falls too far behind: "
            "replay slower with --duration or --speed)"
        )
    if incomplete:
        notes.append(
            f"{len(incomplete)} devices' last ticks never reached InfluxDB: "
            + ", ".join(incomplete[:5])
        )
    return notes


def _outcomes(
    client: Any,
    replays: Sequence[Replay],
    *,
    items: Sequence[Any],
    sent: np.ndarray,
    poller: VisibilityPoller,
    bundle: Bundle,
    tick_ms: int,
) -> tuple[tuple[Outcome, ...], np.ndarray, np.ndarray]:
    m = bundle.manifest
    device_of = np.array([it.device for it in items], dtype=np.int64)
    ts_of = np.array([it.ts_ms for it in items], dtype=np.int64)
    outcomes, lats, visible = [], [], []
    for k, r in enumerate(replays):
        trace = fetch_trace(client, r.device, m.channel_names)
        if trace is None:
            raise DemoError(f"device {r.device}: nothing stored in InfluxDB")
        truth, kinds, labels = r.on_ticks(trace.ts_ms, tick_ms, m.channel_names)
        outcomes.append(Outcome(replace(trace, truth=truth, labels=labels), kinds, m.scale))
        mine = device_of == k
        tick_ts, t_sent = tick_publish_times(ts_of[mine], sent[mine], tick_ms)
        seen_at, seen_newest = poller.history(r.device)
        lat = tick_latencies(tick_ts, t_sent, seen_at, seen_newest)
        lats.append(lat)
        visible.append(lat + t_sent)
    return tuple(outcomes), np.concatenate(lats), np.concatenate(visible)


def down(state: Path) -> list[str]:
    """Stop what the last live run started (agent, sink, dashboard); keep its data."""
    return stop_recorded(state / "run")
