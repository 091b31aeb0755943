"""The baseline of ``gapwatch bench e2e``: a bare MQTT -> InfluxDB relay, no imputation or scoring.

It subscribes (QoS 1) to ``<prefix>/+/+``, turns each JSON message
``{"ts": <epoch ms>, "values": {...}}`` on ``<prefix>/<site>/<device>`` into one line of
protocol ``readings,site=<site>,device=<device> <ch>=<v>,...,n=<count>i <ts>`` (null values left
out; ``n`` counts the values, so every point has a field to poll), and POSTs the lines to
InfluxDB 1.x ``/write`` in batches cut the way the sink cuts them (``max_points`` lines, or
``max_wait_s`` after the batch's first line). No alignment, no model, no Kafka, no spool.

Run by the benchmark as ``python -m gapwatch.bench.relay --mqtt HOST:PORT --prefix P --influx
URL --db NAME``; stops on SIGTERM after writing what it holds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any
from urllib.parse import urlencode, urlsplit

__all__ = ["encode_line", "main"]

log = logging.getLogger(__name__)


def _key(text: str) -> str:
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def encode_line(topic: str, payload: bytes) -> str | None:
    """One line of protocol for one message, or None when it cannot be used."""
    parts = topic.split("/")
    try:
        body = json.loads(payload)
        ts = int(body["ts"])
        values = body["values"]
    except (ValueError, KeyError, TypeError):
        return None
    if len(parts) < 2 or not isinstance(values, dict):
        return None
    site, device = parts[-2], parts[-1]
    fields = [
        f"{_key(str(c))}={float(v)!r}"
        for c, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    fields.append(f"n={len(fields)}i")
    return f"readings,site={_key(site)},device={_key(device)} {','.join(fields)} {ts}"


class _Writer:
    """Batches lines and POSTs them to InfluxDB 1.x over one keep-alive connection."""

    def __init__(self, url: str, database: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 8086
        self._path = "/write?" + urlencode({"db": database, "precision": "ms"})
        self._conn: http.client.HTTPConnection | None = None

    def write(self, lines: Sequence[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        for attempt in range(3):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
            try:
                self._conn.request("POST", self._path, body)
                resp = self._conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
                log.warning("relay.write_retry", extra={"error": str(exc)})
                continue
            if resp.status != 204:
                log.error("relay.write_refused", extra={"status": resp.status, "body": data[:200]})
            return


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m gapwatch.bench.relay", description=__doc__)
    p.add_argument("--mqtt", required=True, help="HOST:PORT")
    p.add_argument("--prefix", required=True, help="topic prefix; subscribes to PREFIX/+/+")
    p.add_argument("--influx", required=True, help="InfluxDB 1.x URL")
    p.add_argument("--db", required=True)
    p.add_argument("--client-id", default="gapwatch-bench-relay")
    p.add_argument("--max-points", type=int, default=5000)
    p.add_argument("--max-wait", type=float, default=1.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pending: list[str] = []
    first_at: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    received = [0]

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        line = encode_line(msg.topic, msg.payload)
        with lock:
            received[0] += 1
            if line is not None:
                if not pending:
                    first_at[:] = [time.monotonic()]
                pending.append(line)

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(f"{args.prefix}/+/+", qos=1)
        log.info("relay.subscribed")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, _, port = args.mqtt.rpartition(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.on_message = on_message
    client.on_connect = on_connect
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    writer = _Writer(args.influx, args.db)
    try:
        while not stop.is_set():
            with lock:
                due = bool(pending) and (
                    len(pending) >= args.max_points
                    or time.monotonic() - first_at[0] >= args.max_wait
                )
                batch = pending[: args.max_points] if due else []
                if due:
                    del pending[: args.max_points]
                    if pending:
                        first_at[:] = [time.monotonic()]
            if batch:
                writer.write(batch)
            else:
                stop.wait(0.005)
    finally:
        client.disconnect()
        client.loop_stop()
        with lock:
            rest = list(pending)
        if rest:
            writer.write(rest)
        log.info("relay.stopped received=%d", received[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
