"""The agent path of the agent benchmark: ``python -m gapwatch agent`` on the same stream.

:func:`run_agent` starts the agent pinned to the plan's core with fresh topics (its config in
``GAPWATCH_AGENT__*`` variables, :func:`agent_env`), waits until it has subscribed (its
``/healthz``), publishes the burst and then the paced stream, reads each causal record's Kafka
append time back, and turns them into figures: throughput, latency, CPU share and memory.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import TransportError
from gapwatch.bench.agent_stream import Message, Plan, with_prefix
from gapwatch.bench.harness import KafkaTopics, Publisher, free_port, spawn, tail, wait_for
from gapwatch.bench.measure import cpu, percentiles, read_proc, runqueue_wait

__all__ = ["Sampler", "agent_env", "run_agent"]

AppendTimes = dict[tuple[str, int, int], int]  # (key, ts_ms, revision) -> Kafka append time, ms


def agent_env(plan: Plan, prefix: str, metrics_port: int) -> dict[str, str]:
    """This process's environment with the agent's config for one run (``--set`` applied last)."""
    base = {
        "state_dir": f'"{plan.work / "agent-state"}"',
        "mqtt__host": f'"{plan.host}"',
        "mqtt__port": str(plan.port),
        "mqtt__client_id": f'"{prefix}"',
        "mqtt__session_expiry_s": "60",
        "mqtt__topics": f'["{prefix}/{{site}}/{{device}}"]',
        "kafka__bootstrap": f'"{plan.bootstrap}"',
        "kafka__scored_topic": f'"{prefix}.scored"',
        "kafka__deadletter_topic": f'"{prefix}.deadletter"',
        "bundles__root": f'"{plan.bundles_root}"',
        "devices": f'[{{match = "*", bundle = "{plan.manifest.name}"}}]',
        "align__lateness_ticks": str(plan.lateness),
        "metrics__port": str(metrics_port),
    }
    for item in plan.agent_sets:
        key, _, value = item.partition("=")
        base[key.strip().replace(".", "__")] = value.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_AGENT__")}
    env.update({f"GAPWATCH_AGENT__{k.upper()}": v for k, v in base.items()})
    return env


def _subscribed(port: int) -> bool:
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while not healthy yet: the body still says why
        body = json.loads(exc.read() or b"{}")
    except OSError:
        return False
    return bool(body.get("mqtt_subscribed"))


_WATCHED = {
    "gapwatch_agent_messages_total": "mqtt_in",
    'gapwatch_agent_ticks_total{revision="0"}': "ticks_out",
    "gapwatch_agent_kafka_acked_total": "kafka_acked",
    "gapwatch_agent_spool_records": "spool",
}


class Sampler(threading.Thread):
    """Samples the agent's /metrics every ``every_s``: where a backlog builds up."""

    def __init__(self, port: int, every_s: float = 0.5) -> None:
        super().__init__(name="gwbench-sampler", daemon=True)
        self._url = f"http://127.0.0.1:{port}/metrics"
        self._every = every_s
        self.stop = threading.Event()
        self.samples: list[dict[str, float]] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(self._every):
            try:
                with urllib.request.urlopen(self._url, timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            row = {"t_s": round(time.monotonic() - t0, 2)}
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name in _WATCHED:
                    row[_WATCHED[name]] = float(value)
            self.samples.append(row)


@dataclass(frozen=True)
class _Observed:
    """What one agent run saw: phase clocks, publish times, completion, memory."""

    code: int
    thr_done: bool
    lat_done: bool
    t: tuple[float, float, float, float]  # burst first/last publish, end of burst, end of paced
    cpu: tuple[float, float, float]  # agent CPU seconds: before, after burst, after paced
    wait: tuple[float, float, float]  # agent run-queue wait seconds, at the same moments
    pub_times: list[float]  # wall-clock publish time of each paced message
    samples: list[dict[str, float]]
    idle_mem: dict[str, float]
    end_mem: dict[str, float]
    torch: bool


def _drive(
    plan: Plan,
    proc: subprocess.Popen[bytes],
    pub: Publisher,
    *,
    topics: KafkaTopics,
    msgs: tuple[list[Message], list[Message]],
    port: int,
    timeout_s: float,
) -> _Observed:
    """Publish the burst, then the paced stream, reading the agent's records back after each."""
    thr, lat = msgs
    idle_mem, _ = read_proc(proc.pid)
    sampler = Sampler(port)
    sampler.start()
    cpu0, wait0 = cpu(proc.pid), runqueue_wait(proc.pid)
    t0, t1 = pub.burst(thr)
    want_thr = {(m.key, m.ts_ms, 0) for m in thr}
    thr_done = topics.read_until(lambda: want_thr <= topics.appended.keys(), timeout_s)
    cpu1, wait1, t2 = cpu(proc.pid), runqueue_wait(proc.pid), time.time()
    sampler.stop.set()
    pub_times = pub.paced(lat, plan.rate)
    want_lat = {(m.key, m.ts_ms, 0) for m in lat}
    lat_done = topics.read_until(lambda: want_lat <= topics.appended.keys(), timeout_s)
    cpu2, wait2, t3 = cpu(proc.pid), runqueue_wait(proc.pid), time.time()
    end_mem, torch = read_proc(proc.pid)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    topics.drain()
    return _Observed(
        code=code,
        thr_done=thr_done,
        lat_done=lat_done,
        t=(t0, t1, t2, t3),
        cpu=(cpu0, cpu1, cpu2),
        wait=(wait0, wait1, wait2),
        pub_times=pub_times,
        samples=sampler.samples,
        idle_mem=idle_mem,
        end_mem=end_mem,
        torch=torch,
    )


def _latencies(
    plan: Plan, lat: Sequence[Message], pub_times: Sequence[float], app: AppendTimes
) -> tuple[list[float], list[float]]:
    """Per tick closed by event time: publish -> append, from its own and its closing reading."""
    tick_ms = max(1, round(plan.manifest.tick_seconds * 1000))
    pub_at = {(m.key, m.ts_ms): t for m, t in zip(lat, pub_times, strict=True)}
    own, closing = [], []
    for i in plan.closed_by_event(lat):
        m = lat[i]
        if (a := app.get((m.key, m.ts_ms, 0))) is None:
            continue
        own.append(a - pub_times[i] * 1000)
        closing.append(a - pub_at[(m.key, m.ts_ms + (plan.lateness + 1) * tick_ms)] * 1000)
    return own, closing


def _figures(
    plan: Plan,
    prefix: str,
    msgs: tuple[list[Message], list[Message]],
    *,
    topics: KafkaTopics,
    seen: _Observed,
    log_path: Path,
) -> dict[str, Any]:
    thr, lat = msgs
    app = topics.appended
    idx = plan.closed_by_event(thr)
    acked = [app[k] for i in idx if (k := (thr[i].key, thr[i].ts_ms, 0)) in app]
    readings = sum(thr[i].readings for i in idx if (thr[i].key, thr[i].ts_ms, 0) in app)
    (t0, t1, t2, t3), (cpu0, cpu1, cpu2), (wait0, wait1, wait2) = seen.t, seen.cpu, seen.wait
    seconds = max(acked) / 1000 - t0 if acked else math.nan
    own, closing = _latencies(plan, lat, seen.pub_times, app)
    published = {(m.key, m.ts_ms) for m in (*thr, *lat)}
    causal = [k[:2] for k in app if k[2] == 0]
    causal_published = sum(1 for k in causal if k in published)
    return {
        "complete": seen.thr_done and seen.lat_done,
        "exit_code": seen.code,
        "published": len(thr) + len(lat),
        "causal_records": len(causal),
        "causal_records_of_published_ticks": causal_published,
        # ticks after a device's last message, closed by the agent's clock and imputed
        "causal_records_of_silent_ticks": len(causal) - causal_published,
        "backfill_records": sum(1 for k in app if k[2] > 0),
        "records": topics.records,
        "dead_letters": topics.records[f"{prefix}.deadletter"],
        "timestamps": "LogAppendTime" if topics.log_append_time else "CreateTime",
        "throughput_messages": len(acked),
        "throughput_seconds": seconds,
        "readings_per_s": readings / seconds,
        "publish_messages_per_s": len(thr) / max(t1 - t0, 1e-9),
        # CPU seconds the agent used per wall second of each phase (1.0 = its core was full)
        "cpu_share_throughput": (cpu1 - cpu0) / (t2 - t0),
        "cpu_share_latency": (cpu2 - cpu1) / (t3 - t2),
        # seconds its threads were runnable but waited for the CPU (others' load), per second
        "runqueue_wait_share_throughput": (wait1 - wait0) / (t2 - t0),
        "runqueue_wait_share_latency": (wait2 - wait1) / (t3 - t2),
        "throughput_timeline": seen.samples,
        "latency": percentiles(own),
        "latency_from_closing_reading": percentiles(closing),
        "memory_idle": seen.idle_mem,
        "memory": seen.end_mem,
        "torch_loaded": seen.torch,
        "log_tail": tail(log_path) if seen.code else "",
    }


def run_agent(plan: Plan, timeout_s: float) -> dict[str, Any]:
    prefix = f"gwbench-{uuid.uuid4().hex[:8]}-agent"
    msgs = (with_prefix(plan.thr, prefix), with_prefix(plan.lat, prefix))
    port = free_port()
    log_path = plan.work / "agent.log"
    topics = KafkaTopics(plan.bootstrap, [f"{prefix}.scored", f"{prefix}.deadletter"])
    proc = spawn(
        [sys.executable, "-m", "gapwatch", "agent", "--log-level", "WARNING"],
        plan.core,
        env=agent_env(plan, prefix, port),
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    pub = Publisher(plan.host, plan.port)
    try:
        wait_for(lambda: _subscribed(port) or proc.poll() is not None, 90, "the agent")
        if proc.poll() is not None:
            raise TransportError(f"agent exited with {proc.returncode}: {tail(log_path)}")
        seen = _drive(plan, proc, pub, topics=topics, msgs=msgs, port=port, timeout_s=timeout_s)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        topics.close()
    return _figures(plan, prefix, msgs, topics=topics, seen=seen, log_path=log_path)
