"""The agent benchmark's harness: the MQTT publisher, pinned subprocesses, sockets and Kafka topics.

Thin adapters around paho-mqtt, :mod:`subprocess` and kafka-python, shared by both paths
(:mod:`gapwatch.bench.bare` and :mod:`gapwatch.bench.agent_run`). paho and kafka-python are
imported only when used, so the bare subscriber's memory baseline stays what it was.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.errors import TransportError
from gapwatch.bench.agent_stream import Message

__all__ = ["REPO_ROOT", "KafkaTopics", "Publisher", "free_port", "spawn", "tail", "wait_for"]

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def spawn(cmd: list[str], core: int, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and pin it to ``core`` before its interpreter has started any thread."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, **kw)
    os.sched_setaffinity(proc.pid, {core})
    return proc


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TransportError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


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
