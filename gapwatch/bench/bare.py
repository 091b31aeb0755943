"""The agent benchmark's baseline: a bare paho-mqtt subscriber fed the same stream.

:func:`run_bare` drives it from the benchmark process: it starts ``python -m gapwatch.bench.agent
_bare-subscriber <host> <port> <filter> <dir>`` pinned to the agent's core, publishes the burst
and the paced stream, and turns the arrival stamps into the same figures as the agent's.
:func:`bare_subscriber` is that subprocess: QoS 1, clean session, it only stamps each message's
arrival; ``<filter>/_ctl/mark`` and ``<filter>/_ctl/end`` steer it through files in ``<dir>``.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from edge.errors import TransportError
from gapwatch.bench.agent_stream import Plan, with_prefix
from gapwatch.bench.harness import Publisher, spawn, wait_for
from gapwatch.bench.measure import percentiles, proc_memory, read_proc

__all__ = ["BARE_ROLE", "bare_subscriber", "run_bare"]

BARE_ROLE = "_bare-subscriber"  # first argument of `python -m gapwatch.bench.agent` for it


def run_bare(plan: Plan) -> dict[str, Any]:
    prefix = f"gwbench-{uuid.uuid4().hex[:8]}-bare"
    d = plan.work / "bare"
    d.mkdir()
    thr = with_prefix(plan.thr, prefix)
    lat = with_prefix(plan.lat, prefix)
    cmd = [sys.executable, "-m", "gapwatch.bench.agent", BARE_ROLE, plan.host, str(plan.port)]
    proc = spawn([*cmd, f"{prefix}/#", str(d)], plan.core)
    pub = Publisher(plan.host, plan.port)
    try:
        wait_for(lambda: (d / "ready").exists() or proc.poll() is not None, 30, "subscriber")
        if proc.poll() is not None:
            raise TransportError(f"the bare subscriber exited with {proc.returncode}")
        t0, t1 = pub.burst(thr)
        pub.send(f"{prefix}/_ctl/mark")
        wait_for((d / "mark").exists, 300, "the bare subscriber to drain the burst")
        mem, _ = read_proc(proc.pid)
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
