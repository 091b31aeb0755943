"""``gapwatch bench agent``: the edge agent's throughput, latency and memory on the local stack.

Two consumers get the same MQTT stream from the same publisher, one after the other:

- **agent**: ``gapwatch agent`` (decode, align, impute/score with the bundle, spool, Kafka) as a
  subprocess pinned to one core (``os.sched_setaffinity``), topics fresh for this run;
- **baseline**: a bare paho-mqtt subscriber (QoS 1, clean session) pinned to the same core, which
  only stamps each message's arrival.

The publisher (this process) runs on another core and sends QoS 1 JSON messages
``sensors``-style (``<prefix>/bench/<device>``, ``{"ts": ms, "values": {8 channels}}``), one
message = one tick of one device, event time 1 tick apart per device. Per path:

1. **throughput**: ``--devices`` × ``--ticks`` messages as fast as the publisher can; channel
   readings/s = readings of the ticks closed by event time / (last one acknowledged - first
   publish). Agent: acknowledged = appended by Kafka (the scored topic is created with
   ``message.timestamp.type=LogAppendTime``, so each record carries the broker's append time);
   baseline: received by the subscriber. Each device's last ``lateness + 1`` ticks, which the
   agent closes by its wall clock, are left out of both.
2. **latency**: ``--rate`` messages/s for ``--seconds`` over ``--latency-devices`` devices; per
   tick, publish -> Kafka append of its causal record (revision 0). This includes the agent's
   alignment wait (a tick closes when a reading ``lateness + 1`` ticks newer arrives); the
   latency from the reading that closed the tick is reported beside it.
3. **memory**: the agent's VmRSS (idle with the bundle loaded, and at the end) and VmHWM from
   ``/proc/<pid>/status``, and whether ``/proc/<pid>/maps`` holds libtorch.

Prints a table (figure, baseline, ratio, target) and writes JSON (``--json``). Numbers depend on
the machine and its load (the broker, Kafka and the publisher share it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.bundle import Manifest, latest_version_dir, read_manifest, set_current_version
from edge.errors import EdgeError, TransportError
from gapwatch.bench.cli import MACHINE_NOTE, bench_env, fmt, write_json

__all__ = [
    "Message",
    "cpu_seconds",
    "main",
    "make_messages",
    "percentiles",
    "proc_memory",
    "report",
    "torch_loaded",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE = "bench"
BARE_ROLE = "_bare-subscriber"
PREFIX = "{prefix}"  # replaced by each path's own topic prefix


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    key: str  # "site/device", as in the scored record
    ts_ms: int
    seq: int  # index of the tick within its device
    readings: int  # channel values present (not null)


# -- pure core ------------------------------------------------------------------------------


def make_messages(
    manifest: Manifest,
    *,
    prefix: str,
    group: str,
    devices: int,
    ticks: int,
    base_ms: int,
    seed: int,
    missing: float = 0.0,
) -> list[Message]:
    """``devices`` × ``ticks`` messages, interleaved tick by tick, values around the scaling.

    Each value is null with probability ``missing`` (a gap for the agent to fill).
    """
    rng = np.random.default_rng(seed)
    tick_ms = max(1, round(manifest.tick_seconds * 1000))
    names = manifest.channel_names
    z = rng.normal(0.0, 0.5, size=(ticks, devices, len(names)))
    vals = np.round(manifest.center + manifest.scale * z, 5)
    gone = rng.random(vals.shape) < missing
    out = []
    for j in range(ticks):
        ts = base_ms + j * tick_ms
        for k in range(devices):
            dev = f"{group}{k:03d}"
            row = [None if g else v for v, g in zip(vals[j, k].tolist(), gone[j, k], strict=True)]
            body = {"ts": ts, "values": dict(zip(names, row, strict=True))}
            payload = json.dumps(body, separators=(",", ":")).encode()
            n = len(names) - int(gone[j, k].sum())
            out.append(Message(f"{prefix}/{SITE}/{dev}", payload, f"{SITE}/{dev}", ts, j, n))
    return out


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not len(values_ms):
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "n": 0}
    a = np.asarray(values_ms, dtype=float)
    p50, p99 = np.percentile(a, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(a.max()), "n": len(a)}


def proc_memory(status_text: str) -> dict[str, float]:
    """VmRSS and VmHWM in MB (10^6 bytes) from the text of ``/proc/<pid>/status``."""
    out: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key.lower() + "_mb"] = int(rest.split()[0]) * 1024 / 1e6
    return out


def torch_loaded(maps_text: str) -> bool:
    return any("libtorch" in line or "/torch/lib/" in line for line in maps_text.splitlines())


def _ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


# -- adapters: publisher, processes, Kafka --------------------------------------------------


class Publisher:
    """paho-mqtt QoS 1 publisher on a background network thread."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"gwbench-pub-{uuid.uuid4().hex[:8]}"
        )
        self._client.max_inflight_messages_set(1000)
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise TransportError(f"MQTT broker {host}:{port} unreachable: {exc}") from exc
        self._client.loop_start()

    def burst(self, msgs: Sequence[Message]) -> tuple[float, float]:
        """Publish all as fast as possible; return wall-clock (first, last) publish times."""
        t0 = time.time()
        for m in msgs:
            self._client.publish(m.topic, m.payload, qos=1)
        return t0, time.time()

    def paced(self, msgs: Sequence[Message], rate: float) -> list[float]:
        """Publish at ``rate`` messages/s; return each message's wall-clock publish time."""
        times = []
        start = time.perf_counter()
        for i, m in enumerate(msgs):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            times.append(time.time())
            self._client.publish(m.topic, m.payload, qos=1)
        return times

    def send(self, topic: str) -> None:
        self._client.publish(topic, b"", qos=1).wait_for_publish(30)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _with_prefix(msgs: Sequence[Message], prefix: str) -> list[Message]:
    return [replace(m, topic=m.topic.replace(PREFIX, prefix, 1)) for m in msgs]


def _spawn(cmd: list[str], core: int, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and pin it to ``core`` before its interpreter has started any thread."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, **kw)
    os.sched_setaffinity(proc.pid, {core})
    return proc


def cpu_seconds(stat_text: str) -> float:
    """utime + stime of ``/proc/<pid>/stat``, in seconds."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def _runqueue_wait(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that just ended
    return total / 1e9


def _read_proc(pid: int) -> tuple[dict[str, float], bool]:
    status = Path(f"/proc/{pid}/status").read_text()
    maps = Path(f"/proc/{pid}/maps").read_text()
    return proc_memory(status), torch_loaded(maps)


def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TransportError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class KafkaTopics:
    """Creates the run's topics (LogAppendTime), reads the scored one back, deletes them."""

    def __init__(self, bootstrap: str, names: list[str]) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError

        self.names = names
        try:
            self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="gwbench")
            config = {"message.timestamp.type": "LogAppendTime"}
            self._admin.create_topics([NewTopic(n, 1, 1, topic_configs=config) for n in names])
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
            )
        except (KafkaError, OSError) as exc:
            raise TransportError(f"Kafka at {bootstrap}: {exc!r}") from exc
        self._tps = [TopicPartition(n, 0) for n in names]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        # (key, ts_ms, revision) -> broker append time (ms), from the first topic (scored)
        self.appended: dict[tuple[str, int, int], int] = {}
        self.records = {n: 0 for n in names}
        self.log_append_time = True

    def _read(self) -> int:
        from edge.schema import ScoredTick

        got = 0
        for tp, batch in self._consumer.poll(timeout_ms=200, max_records=20000).items():
            self.records[tp.topic] += len(batch)
            got += len(batch)
            if tp.topic != self.names[0]:
                continue
            for r in batch:
                t = ScoredTick.decode(r.value)
                self.log_append_time &= r.timestamp_type == 1
                self.appended.setdefault((t.key, t.ts_ms, t.revision), int(r.timestamp))
        return got

    def read_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            self._read()
        return True

    def drain(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
        """Read until nothing new came for ``quiet_s`` (the agent's last back-fills)."""
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            if self._read():
                last = time.monotonic()

    def close(self) -> None:
        from kafka.errors import KafkaError

        self._consumer.close()
        try:
            self._admin.delete_topics(self.names)
        except KafkaError as exc:
            sys.stderr.write(f"could not delete topics {self.names}: {exc!r}\n")
        self._admin.close()


# -- the two paths --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    host: str
    port: int
    bootstrap: str
    manifest: Manifest
    bundles_root: Path
    lateness: int
    core: int
    agent_sets: tuple[str, ...]  # "section.key=value" overrides of the agent's config
    thr: list[Message]
    lat: list[Message]
    rate: float
    work: Path

    def closed_by_event(self, msgs: Sequence[Message]) -> list[int]:
        """Indexes of messages whose tick the agent closes by event time (not its clock)."""
        last = max(m.seq for m in msgs)
        return [i for i, m in enumerate(msgs) if m.seq <= last - self.lateness - 1]


def run_bare(plan: Plan) -> dict[str, Any]:
    prefix = f"gwbench-{uuid.uuid4().hex[:8]}-bare"
    d = plan.work / "bare"
    d.mkdir()
    thr = _with_prefix(plan.thr, prefix)
    lat = _with_prefix(plan.lat, prefix)
    cmd = [sys.executable, "-m", "gapwatch.bench.agent", BARE_ROLE, plan.host, str(plan.port)]
    proc = _spawn([*cmd, f"{prefix}/#", str(d)], plan.core)
    pub = Publisher(plan.host, plan.port)
    try:
        _wait_for(lambda: (d / "ready").exists() or proc.poll() is not None, 30, "subscriber")
        if proc.poll() is not None:
            raise TransportError(f"the bare subscriber exited with {proc.returncode}")
        t0, t1 = pub.burst(thr)
        pub.send(f"{prefix}/_ctl/mark")
        _wait_for((d / "mark").exists, 300, "the bare subscriber to drain the burst")
        mem, _ = _read_proc(proc.pid)
        pub_times = pub.paced(lat, plan.rate)
        pub.send(f"{prefix}/_ctl/end")
        proc.wait(120)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = json.loads((d / "result.json").read_text())
    recv: list[float] = got["times"]
    n_thr, n_lat = len(thr), len(lat)
    complete = len(recv) == n_thr + n_lat
    idx = plan.closed_by_event(thr)
    last_recv = max(recv[i] for i in idx) if complete else math.nan
    lat_idx = plan.closed_by_event(lat) if complete else []
    lat_ms = [(recv[n_thr + i] - pub_times[i]) * 1000 for i in lat_idx]
    return {
        "received": len(recv),
        "published": n_thr + n_lat,
        "throughput_messages": len(idx),
        "throughput_seconds": last_recv - t0,
        "readings_per_s": sum(thr[i].readings for i in idx) / (last_recv - t0),
        "publish_messages_per_s": n_thr / max(t1 - t0, 1e-9),
        "latency": percentiles(lat_ms),
        "memory": {**mem, **got["memory"]},
    }


def _agent_env(plan: Plan, prefix: str, metrics_port: int) -> dict[str, str]:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_agent(plan: Plan, timeout_s: float) -> dict[str, Any]:
    prefix = f"gwbench-{uuid.uuid4().hex[:8]}-agent"
    thr = _with_prefix(plan.thr, prefix)
    lat = _with_prefix(plan.lat, prefix)
    port = _free_port()
    log_path = plan.work / "agent.log"
    topics = KafkaTopics(plan.bootstrap, [f"{prefix}.scored", f"{prefix}.deadletter"])
    proc = _spawn(
        [sys.executable, "-m", "gapwatch", "agent", "--log-level", "WARNING"],
        plan.core,
        env=_agent_env(plan, prefix, port),
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    pub = Publisher(plan.host, plan.port)
    try:
        _wait_for(lambda: _subscribed(port) or proc.poll() is not None, 90, "the agent")
        if proc.poll() is not None:
            raise TransportError(f"agent exited with {proc.returncode}: {_tail(log_path)}")
        idle_mem, _ = _read_proc(proc.pid)
        sampler = Sampler(port)
        sampler.start()
        cpu0, wait0 = _cpu(proc.pid), _runqueue_wait(proc.pid)
        t0, t1 = pub.burst(thr)
        want_thr = {(m.key, m.ts_ms, 0) for m in thr}
        thr_done = topics.read_until(lambda: want_thr <= topics.appended.keys(), timeout_s)
        cpu1, wait1, t2 = _cpu(proc.pid), _runqueue_wait(proc.pid), time.time()
        sampler.stop.set()
        pub_times = pub.paced(lat, plan.rate)
        want_lat = {(m.key, m.ts_ms, 0) for m in lat}
        lat_done = topics.read_until(lambda: want_lat <= topics.appended.keys(), timeout_s)
        cpu2, wait2, t3 = _cpu(proc.pid), _runqueue_wait(proc.pid), time.time()
        end_mem, torch = _read_proc(proc.pid)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        topics.drain()
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        topics.close()
    app = topics.appended
    idx = plan.closed_by_event(thr)
    acked = [app[k] for i in idx if (k := (thr[i].key, thr[i].ts_ms, 0)) in app]
    readings = sum(thr[i].readings for i in idx if (thr[i].key, thr[i].ts_ms, 0) in app)
    seconds = max(acked) / 1000 - t0 if acked else math.nan
    tick_ms = max(1, round(plan.manifest.tick_seconds * 1000))
    pub_at = {(m.key, m.ts_ms): t for m, t in zip(lat, pub_times, strict=True)}
    own, closing = [], []
    for i in plan.closed_by_event(lat):
        m = lat[i]
        if (a := app.get((m.key, m.ts_ms, 0))) is None:
            continue
        own.append(a - pub_times[i] * 1000)
        closing.append(a - pub_at[(m.key, m.ts_ms + (plan.lateness + 1) * tick_ms)] * 1000)
    published = {(m.key, m.ts_ms) for m in (*thr, *lat)}
    causal = [k[:2] for k in app if k[2] == 0]
    causal_published = sum(1 for k in causal if k in published)
    return {
        "complete": thr_done and lat_done,
        "exit_code": code,
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
        "throughput_timeline": sampler.samples,
        "latency": percentiles(own),
        "latency_from_closing_reading": percentiles(closing),
        "memory_idle": idle_mem,
        "memory": end_mem,
        "torch_loaded": torch,
        "log_tail": _tail(log_path) if code else "",
    }


def _tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def bare_subscriber(argv: list[str]) -> int:
    """The baseline: count and stamp QoS 1 messages; ``<filter>/_ctl/mark|end`` steer it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port, topic_filter, out = argv[0], int(argv[1]), argv[2], Path(argv[3])
    times: list[float] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"gwbench-bare-{uuid.uuid4().hex[:8]}"
    )

    def on_connect(c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        c.subscribe(topic_filter, qos=1)

    def on_subscribe(_c: Any, _u: Any, _m: Any, _rc: Any, _p: Any) -> None:
        (out / "ready").touch()

    def on_message(c: Any, _u: Any, msg: Any) -> None:
        if "/_ctl/" not in msg.topic:
            times.append(time.time())
        elif msg.topic.endswith("/mark"):
            (out / "mark").touch()
        else:
            status = Path("/proc/self/status").read_text()
            result = {"times": times, "memory": proc_memory(status)}
            (out / "result.json").write_text(json.dumps(result))
            c.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        sys.stderr.write(f"bare subscriber: MQTT broker {host}:{port} unreachable: {exc}\n")
        return 1
    client.loop_forever()
    return 0


# -- command line ---------------------------------------------------------------------------


def resolve_bundle(given: str | None, work: Path) -> tuple[Path, Manifest]:
    """``(bundles root holding only this bundle, its manifest)``.

    ``given``: a bundle version directory (with manifest.json) or a ``<root>/<name>`` directory
    (its CURRENT or newest version); none: the packaged SKAB demo bundle (8 channels).
    """
    if given:
        path = Path(given)
        version = path if (path / "manifest.json").exists() else None
        if version is None:
            from edge.bundle import current_version_dir

            version = current_version_dir(path)
    else:
        version = latest_version_dir(REPO_ROOT / "gapwatch" / "demo" / "model" / "skab")
    if version is None or not (version / "manifest.json").exists():
        raise EdgeError(
            f"--bundle {given!r}: no bundle there; give <root>/<name>/<version> (the directory "
            "with manifest.json and model.onnx) or <root>/<name>"
        )
    manifest = read_manifest(version)
    root = work / "bundles"
    link = root / manifest.name / manifest.version
    link.parent.mkdir(parents=True)
    link.symlink_to(version.resolve(), target_is_directory=True)
    set_current_version(root / manifest.name, manifest.version)
    return root, manifest


# (option, type, default, help): each also read from GAPWATCH_BENCH_<OPTION>
_OPTIONS: list[tuple[str, type, str, str]] = [
    ("mqtt", str, "127.0.0.1:11883", "Mosquitto host:port"),
    ("kafka", str, "127.0.0.1:19092", "Kafka bootstrap servers"),
    ("devices", int, "50", "throughput: devices in the burst"),
    ("ticks", int, "400", "throughput: messages (ticks) per device in the burst"),
    ("rate", float, "2000", "latency: messages (ticks) per second, all devices together"),
    ("seconds", float, "20", "latency: how long that rate is kept up"),
    ("latency_devices", int, "20", "latency: devices sharing --rate"),
    ("missing", float, "0.02", "fraction of values sent as null (gaps the agent fills)"),
    ("lateness", int, "2", "the agent's align.lateness_ticks (its default: 2)"),
    (
        "core",
        int,
        "1",
        "CPU core of the agent and of the bare subscriber; the publisher runs on the other cores",
    ),
    ("timeout", float, "180", "seconds to wait for the agent's records, per phase"),
    ("json", Path, ".gapwatch/bench/agent.json", "where to write the JSON result"),
]

EXAMPLES = """\
examples:
  deploy/local/stack up && gapwatch bench agent            # defaults: about 1-2 minutes
  gapwatch bench agent --quick                             # smoke run, about 15 s
  gapwatch bench agent --set kafka.linger_ms=5 --set inference.batch_max_ms=5
  gapwatch bench agent --bundle /var/lib/gapwatch/bundles/skab   # its CURRENT version

Every option can also be set as GAPWATCH_BENCH_<OPTION> (e.g. GAPWATCH_BENCH_RATE=1000).
What each figure means: docs/edge.md, "Agent benchmark". Exit status: 0 when every record came
back (targets missed or not), 1 when the run failed or records are missing, 2 bad options.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch bench agent",
        description="Measure the edge agent on the local stack (MQTT in, Kafka out): channel "
        "readings/s, publish-to-Kafka latency, and memory, each beside a bare paho-mqtt "
        "subscriber measured in the same run. " + MACHINE_NOTE.capitalize() + ".",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, kind, default, text in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        value = bench_env(name, default) or default
        p.add_argument(flag, type=kind, default=kind(value), help=f"{text} (%(default)s)")
    p.add_argument(
        "--bundle",
        default=bench_env("bundle"),
        help="a bundle version directory, or <root>/<name> for its CURRENT version "
        "(default: the packaged 8-channel SKAB bundle, gapwatch/demo/model)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one agent config value (repeatable; the agent's --set value), e.g. "
        "--set kafka.linger_ms=5 (default: the agent's own defaults)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        default=bool(bench_env("quick")),
        help="smoke run: 10 devices × 60 ticks, then 500 msg/s for 3 s",
    )
    return p


def _table(rows: list[list[str]]) -> str:
    head = ["figure", "agent", "bare subscriber", "ratio", "target", "status"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(result: dict[str, Any]) -> tuple[str, dict[str, bool]]:
    a, b = result["agent"], result["bare"]
    rate = a["readings_per_s"]
    ratio = _ratio(rate, b["readings_per_s"])
    p99 = a["latency"]["p99_ms"]
    hwm = a["memory"].get("vmhwm_mb", math.nan)
    met = {
        "throughput_20k": rate >= 20_000,
        "throughput_vs_bare_0_7": ratio >= 0.7,
        "latency_p99_100ms": p99 <= 100,
        "rss_150mb": hwm <= 150 and not a["torch_loaded"],
    }
    ok = {True: "met", False: "MISSED"}
    al, bl = a["latency"], b["latency"]
    rows = [
        [
            f"readings/s ({result['setup']['channels']}-ch msgs)",
            fmt(rate, 0),
            fmt(b["readings_per_s"], 0),
            fmt(ratio, 2),
            ">=20000, >=0.7x",
            ok[met["throughput_20k"] and met["throughput_vs_bare_0_7"]],
        ],
        [
            "latency p50 ms",
            fmt(al["p50_ms"], 1),
            fmt(bl["p50_ms"], 1),
            fmt(_ratio(al["p50_ms"], bl["p50_ms"]), 1),
            "",
            "",
        ],
        [
            "latency p99 ms",
            fmt(p99, 1),
            fmt(bl["p99_ms"], 1),
            fmt(_ratio(p99, bl["p99_ms"]), 1),
            "<=100",
            ok[met["latency_p99_100ms"]],
        ],
        [
            "  p99 from closing reading",
            fmt(a["latency_from_closing_reading"]["p99_ms"], 1),
            "",
            "",
            "",
            "",
        ],
        [
            "VmHWM MB (torch: " + ("yes" if a["torch_loaded"] else "no") + ")",
            fmt(hwm, 1),
            fmt(b["memory"].get("vmhwm_mb", math.nan), 1),
            fmt(_ratio(hwm, b["memory"].get("vmhwm_mb", math.nan)), 1),
            "<=150, no torch",
            ok[met["rss_150mb"]],
        ],
        [
            "VmRSS MB idle / end",
            f"{fmt(a['memory_idle'].get('vmrss_mb', math.nan), 1)} / "
            f"{fmt(a['memory'].get('vmrss_mb', math.nan), 1)}",
            fmt(b["memory"].get("vmrss_mb", math.nan), 1),
            "",
            "",
            "",
        ],
    ]
    return _table(rows), met


def main(argv: list[str]) -> int:
    if argv[:1] == [BARE_ROLE]:
        return bare_subscriber(argv[1:])
    args = _parser().parse_args(argv)
    if args.quick:
        args.devices, args.ticks, args.rate, args.seconds = 10, 60, 500.0, 3.0
        args.latency_devices = 10
    host, _, port = args.mqtt.rpartition(":")
    cores = os.sched_getaffinity(0)
    if args.core not in cores or len(cores) < 2:
        sys.stderr.write(
            f"gapwatch bench agent: --core {args.core} must be one of {sorted(cores)} "
            "and leave another core for the publisher\n"
        )
        return 2
    saved = set(cores)
    with tempfile.TemporaryDirectory(prefix="gwbench-agent-") as tmp:
        work = Path(tmp)
        try:
            bundles_root, manifest = resolve_bundle(args.bundle, work)
        except EdgeError as exc:
            sys.stderr.write(f"gapwatch bench agent: {exc}\n")
            return 2
        tick_ms = max(1, round(manifest.tick_seconds * 1000))
        now_ms = int(time.time() * 1000)
        base = now_ms - now_ms % tick_ms - 43_200_000  # 12 h ago: replay-like, event-time driven
        fewest = args.lateness + 3  # every device needs ticks that close by event time
        lat_ticks = max(fewest, round(args.rate * args.seconds / args.latency_devices))
        thr_ticks = max(fewest, args.ticks)
        plan = Plan(
            host=host,
            port=int(port),
            bootstrap=args.kafka,
            manifest=manifest,
            bundles_root=bundles_root,
            lateness=args.lateness,
            agent_sets=tuple(args.set),
            core=args.core,
            thr=make_messages(
                manifest,
                prefix=PREFIX,
                group="t",
                devices=args.devices,
                ticks=thr_ticks,
                base_ms=base,
                seed=0,
                missing=args.missing,
            ),
            lat=make_messages(
                manifest,
                prefix=PREFIX,
                group="l",
                devices=args.latency_devices,
                ticks=lat_ticks,
                base_ms=base,
                seed=1,
                missing=args.missing,
            ),
            rate=args.rate,
            work=work,
        )
        os.sched_setaffinity(0, cores - {args.core})
        try:
            sys.stderr.write(f"bare subscriber: {len(plan.thr)} + {len(plan.lat)} messages\n")
            bare = run_bare(plan)
            sys.stderr.write("agent: same stream\n")
            agent = run_agent(plan, args.timeout)
        except (EdgeError, OSError, subprocess.TimeoutExpired) as exc:
            sys.stderr.write(f"gapwatch bench agent: {exc}\n")
            return 1
        finally:
            os.sched_setaffinity(0, saved)
    result: dict[str, Any] = {
        "benchmark": "agent",
        "machine_note": MACHINE_NOTE,
        "setup": {
            "agent": f"subprocess `python -m gapwatch agent`, pinned to core {args.core} "
            "(os.sched_setaffinity); bare subscriber pinned to the same core; publisher (paho, "
            f"QoS 1) on cores {sorted(cores - {args.core})}; Mosquitto and Kafka unpinned",
            "ack": "Kafka LogAppendTime of each causal (revision 0) record",
            "bundle": f"{manifest.name}/{manifest.version}",
            "channels": len(manifest.channels),
            "lateness_ticks": args.lateness,
            "missing": args.missing,
            "agent_overrides": list(args.set),
            "devices": args.devices,
            "ticks": thr_ticks,
            "rate": args.rate,
            "seconds": args.seconds,
            "latency_devices": args.latency_devices,
            "cpu_count": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
        "bare": bare,
        "agent": agent,
    }
    text, met = report(result)
    result["targets_met"] = met
    sys.stdout.write(f"{text}\n{MACHINE_NOTE}\n")
    write_json(args.json, result)
    return 0 if agent["complete"] and agent["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
