"""The two paths ``gapwatch bench e2e`` measures, and how one step of load runs through them.

:func:`synthetic_stream` (pure) makes one step's messages; :class:`BenchPath` starts a path
(agent + sink, or the bare relay) with fresh names on the local stack, and tears it down;
:func:`bench_path` runs the latency phase and the rate ladder on it (see :mod:`gapwatch.bench.e2e`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Bundle, Manifest
from gapwatch.demo.processes import (
    Processes,
    agent_connected,
    agent_counters,
    free_port,
    wait_until,
)
from gapwatch.demo.publish import (
    PahoPublisher,
    Scheduled,
    VisibilityPoller,
    publish,
    tick_latencies,
    tick_publish_times,
)
from gapwatch.demo.services import (
    RunNames,
    Stack,
    agent_toml,
    drop_storage,
    influx_client,
    link_bundle,
    prepare_storage,
    sink_toml,
)

__all__ = ["BASE_MS", "DAY_MS", "BenchPath", "PathResult", "bench_path", "synthetic_stream"]

DAY_MS = 86_400_000
BASE_MS = 1_700_000_000_000 - (1_700_000_000_000 % DAY_MS)  # a day boundary in 2023
GROWTH = 1.6
LATENESS = 2


@dataclass
class PathResult:
    name: str
    database: str = ""
    latency_p50_s: float = math.nan
    latency_p99_s: float = math.nan
    latency_ticks: int = 0
    sustained_ticks_s: float = 0.0
    capped: bool = False  # the ladder ended at --max-rate without falling behind
    steps: list[dict[str, Any]] = field(default_factory=list)


def synthetic_stream(
    manifest: Manifest,
    *,
    devices: int,
    rate: float,
    seconds: float,
    step: int,
    topic: Callable[[str], str],
    seed: int = 0,
) -> tuple[list[Scheduled], dict[str, int]]:
    """Messages of one step (pure): ``(schedule, last tick per device)``.

    Device ``s<step>-d<k>`` sends one tick every ``devices / rate`` seconds, offsets staggered
    so the total rate is even; event times start on their own day so steps never overlap.
    """
    rng = np.random.default_rng(seed + step)
    tick_ms = max(1, round(manifest.tick_seconds * 1000))
    per_device = max(LATENESS + 2, int(rate * seconds / devices))
    gap = devices / rate
    names = [f"s{step}-d{k}" for k in range(devices)]
    base = BASE_MS + step * DAY_MS
    z = rng.normal(0.0, 0.5, size=(per_device, devices, len(manifest.channels)))
    vals = manifest.center + manifest.scale * z
    missing = rng.random(vals.shape) < 0.02
    items = []
    for j in range(per_device):
        ts = base + j * tick_ms
        for k, name in enumerate(names):
            values = {
                c: (None if missing[j, k, i] else round(float(vals[j, k, i]), 5))
                for i, c in enumerate(manifest.channel_names)
            }
            body = json.dumps({"ts": ts, "values": values}, separators=(",", ":")).encode()
            items.append(Scheduled(j * gap + k * gap / devices, k, ts, topic(name), body))
    last = {name: base + (per_device - 1) * tick_ms for name in names}
    return items, last


class BenchPath:
    """One path's processes, database and probes."""

    def __init__(
        self, name: str, stack: Stack, bundle: Bundle, run_root: Path, poll_s: float
    ) -> None:
        self.name = name
        self.stack = stack
        self.names = RunNames.new(f"bench{name[:4]}", datetime.now(UTC))
        self.run_dir = run_root / name
        shutil.rmtree(self.run_dir, ignore_errors=True)  # the previous run's configs and logs
        self.run_dir.mkdir(parents=True)
        self.procs = Processes(self.run_dir)
        self.bundle = bundle
        self.metrics_port = 0
        self.client = influx_client(stack, self.names.database)
        self._poll_client = influx_client(stack, self.names.database)  # one per thread
        self.poller = VisibilityPoller(
            self._poll_client,
            measurement="readings",
            field_name="threshold" if name == "pipeline" else "n",
            clock=time.monotonic,
            interval_s=poll_s,
        )

    def start(self) -> None:
        gw = [sys.executable, "-m", "gapwatch"]
        prepare_storage(self.stack, self.names)
        marker = str(self.run_dir.resolve())
        if self.name == "baseline":
            self.procs.start(
                "relay",
                [
                    sys.executable,
                    "-m",
                    "gapwatch.bench.relay",
                    "--mqtt",
                    f"{self.stack.mqtt_host}:{self.stack.mqtt_port}",
                    "--prefix",
                    self.names.topic_prefix,
                    "--influx",
                    self.stack.influx_url,
                    "--db",
                    self.names.database,
                    "--client-id",
                    self.names.agent_client_id,
                ],
                self.names.agent_client_id,
            )
            wait_until(
                lambda: "relay.subscribed" in self.procs.log_path("relay").read_text(),
                30.0,
                "bench relay",
                check=self.procs.check_alive,
            )
            return
        root = link_bundle(self.run_dir, self.bundle)
        self.metrics_port = free_port()
        (self.run_dir / "agent.toml").write_text(
            agent_toml(
                self.names,
                self.stack,
                state_dir=self.run_dir.resolve() / "agent",
                bundles_root=root.resolve(),
                model=self.bundle.manifest.name,
                metrics_port=self.metrics_port,
                lateness_ticks=LATENESS,
            )
        )
        (self.run_dir / "sink.toml").write_text(sink_toml(self.names, self.stack))
        for proc in ("sink", "agent"):
            cfg = str((self.run_dir / f"{proc}.toml").resolve())
            self.procs.start(proc, [*gw, proc, "--config", cfg], marker)
        wait_until(
            lambda: agent_connected(self.metrics_port),
            60.0,
            "gapwatch agent",
            check=self.procs.check_alive,
        )
        time.sleep(1.0)

    def received(self) -> float | None:
        """Messages the agent took so far (its counter); None for the relay."""
        if self.name != "pipeline":
            return None
        return agent_counters(self.metrics_port).get("gapwatch_agent_messages_total", 0.0)

    def stored_in_step(self, step: int) -> int:
        """Points stored with the event times of one step (they fill their own day)."""
        lo = BASE_MS + step * DAY_MS
        rows = self.client.query(
            f'SELECT count("{self.poller.field_name}") FROM "readings" '
            f"WHERE time >= {lo}ms AND time < {lo + DAY_MS}ms"
        )
        return int(rows[0].values[0][1]) if rows and rows[0].values else 0

    def topic(self, device: str) -> str:
        return self.names.topic_template.format(site=self.names.site, device=device)

    def stop(self) -> None:
        self.poller.stop()
        self.procs.stop(["agent", "sink", "relay"])
        self.client.close()
        self._poll_client.close()
        drop_storage(self.stack, self.names.to_dict())


def _run_step(
    path: BenchPath,
    publisher: PahoPublisher,
    items: Sequence[Scheduled],
    last: dict[str, int],
    *,
    step: int,
    lag_s: float,
) -> dict[str, Any]:
    before = path.received()
    t0 = time.monotonic()
    sent = publish(items, publisher, clock=time.monotonic, sleep=time.sleep)
    t_end = time.monotonic()
    deadline = t_end + lag_s
    while time.monotonic() < deadline:
        newest = path.poller.newest()
        if all(newest.get(d, -1) >= t for d, t in last.items()):
            break
        path.procs.check_alive()
        time.sleep(path.poller.interval_s)
    newest = path.poller.newest()
    complete = all(newest.get(d, -1) >= t for d, t in last.items())
    after = path.received()
    if before is None or after is None:  # the relay: one point per message it received
        lost = len(items) - path.stored_in_step(step)
    else:
        lost = len(items) - int(after - before)
    return {
        "offered_ticks_s": len(items) / max(t_end - t0, 1e-9),
        "messages": len(items),
        "publish_seconds": t_end - t0,
        "complete_within_lag": complete,
        "lost": lost,
        "passed": complete and lost <= 0,
        "sent": sent,
    }


def _latency(
    path: BenchPath, items: Sequence[Scheduled], sent: np.ndarray, tick_ms: int
) -> np.ndarray:
    """Per-tick latencies of a step; each device's last LATENESS + 1 ticks left out."""
    by_device: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        by_device.setdefault(it.device, []).append(i)
    out = []
    for idx in by_device.values():
        ts = np.array([items[i].ts_ms for i in idx], dtype=np.int64)
        tick_ts, t_sent = tick_publish_times(ts, sent[idx], tick_ms)
        name = items[idx[0]].topic.rsplit("/", 1)[-1]
        seen_at, seen_newest = path.poller.history(name)
        out.append(tick_latencies(tick_ts, t_sent, seen_at, seen_newest)[: -(LATENESS + 1)])
    return np.concatenate(out) if out else np.array([])


def bench_path(path: BenchPath, args: argparse.Namespace, say: Callable[[str], None]) -> PathResult:
    m = path.bundle.manifest
    tick_ms = max(1, round(m.tick_seconds * 1000))
    result = PathResult(path.name, database=path.names.database)
    publisher: PahoPublisher | None = None
    try:
        path.start()
        path.poller.start()
        publisher = PahoPublisher(
            path.stack.mqtt_host, path.stack.mqtt_port, f"{path.names.agent_client_id}-pub"
        )
        items, last = synthetic_stream(
            m,
            devices=args.devices,
            rate=args.latency_rate,
            seconds=args.latency_seconds,
            step=0,
            topic=path.topic,
        )
        say(f"{path.name}: latency at {args.latency_rate:g} ticks/s for {args.latency_seconds:g} s")
        step = _run_step(path, publisher, items, last, step=0, lag_s=args.lag + 10.0)
        lat = _latency(path, items, step.pop("sent"), tick_ms)
        lat = lat[np.isfinite(lat)]
        if lat.size:
            result.latency_p50_s, result.latency_p99_s = (
                float(v) for v in np.quantile(lat, [0.5, 0.99])
            )
        result.latency_ticks = int(lat.size)
        rate, k = args.start_rate, 1
        while rate <= args.max_rate:
            items, last = synthetic_stream(
                m,
                devices=args.devices,
                rate=rate,
                seconds=args.step_seconds,
                step=k,
                topic=path.topic,
            )
            step = _run_step(path, publisher, items, last, step=k, lag_s=args.lag)
            step.pop("sent")
            step["rate"] = rate
            result.steps.append(step)
            verdict = (
                "kept up"
                if step["passed"]
                else (f"fell behind (lost {step['lost']}, complete {step['complete_within_lag']})")
            )
            say(
                f"{path.name}: {rate:,.0f} ticks/s offered ({step['offered_ticks_s']:,.0f} "
                f"sent): {verdict}"
            )
            if not step["passed"]:
                break
            result.sustained_ticks_s = rate
            rate, k = rate * GROWTH, k + 1
        else:
            result.capped = bool(result.steps)
    finally:
        if publisher is not None:
            publisher.close()
        path.stop()
    return result
