#!/usr/bin/env python3
"""Health probes for the local stack, standard library only (runs before any venv exists).

Each probe speaks the service's own protocol, so "healthy" means "answers a client", not
merely "the port is open":

    mqtt   HOST PORT   MQTT 3.1.1 CONNECT, expects CONNACK with return code 0
    kafka  HOST PORT   ApiVersions, then a Metadata request that must list a broker and a controller
    influx HOST PORT   HTTP GET /ping, expects 204

Exit status 0 when healthy, 1 otherwise (the reason goes to stderr).
"""

from __future__ import annotations

import http.client
import socket
import struct
import sys
import uuid

TIMEOUT_S = 3.0


class ProbeError(Exception):
    """The service did not give a healthy answer."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProbeError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def probe_mqtt(host: str, port: int) -> str:
    client_id = f"gapwatch-probe-{uuid.uuid4().hex[:8]}".encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack(">H", 10)  # v3.1.1, clean session
    payload = struct.pack(">H", len(client_id)) + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body  # body is < 128 bytes: one-byte remaining length
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(packet)
        connack = _recv_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ProbeError(f"unexpected CONNACK {connack.hex()}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return "CONNACK accepted"


def _kafka_call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client = b"gapwatch-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    request = header + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    (got_corr,) = struct.unpack(">i", response[:4])
    if got_corr != corr:
        raise ProbeError(f"correlation id {got_corr} != {corr}")
    return response[4:]


def probe_kafka(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        # ApiVersions v0: error_code, [api_key, min_version, max_version]
        resp = _kafka_call(sock, 18, 0, 1, b"")
        error, count = struct.unpack(">hi", resp[:6])
        if error != 0:
            raise ProbeError(f"ApiVersions error code {error}")
        ranges = {}
        for i in range(count):
            key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i : 12 + 6 * i])
            ranges[key] = (lo, hi)
        lo, hi = ranges.get(3, (0, -1))
        version = max(lo, 4)
        if version > min(hi, 8):  # v9+ are "flexible" encodings this probe does not speak
            raise ProbeError(f"no Metadata version in 4..8 (broker offers {lo}..{hi})")
        # Metadata v4..v8 request: topics (null = all), allow_auto_topic_creation[, 2 x bool]
        body = struct.pack(">i?", -1, False) + (b"\x00\x00" if version >= 8 else b"")
        resp = _kafka_call(sock, 3, version, 2, body)
        # response: throttle_time_ms, brokers [node_id, host, port, rack], cluster_id, controller_id
        (n_brokers,) = struct.unpack(">i", resp[4:8])
        if n_brokers < 1:
            raise ProbeError("metadata lists no broker")
        pos = 8
        for _ in range(n_brokers):
            pos += 4
            (hlen,) = struct.unpack(">h", resp[pos : pos + 2])
            pos += 2 + hlen + 4
            (rlen,) = struct.unpack(">h", resp[pos : pos + 2])
            pos += 2 + max(rlen, 0)
        (clen,) = struct.unpack(">h", resp[pos : pos + 2])
        pos += 2 + max(clen, 0)
        (controller,) = struct.unpack(">i", resp[pos : pos + 4])
        if controller < 0:
            raise ProbeError("metadata names no active controller")
    return f"{n_brokers} broker(s), controller {controller}"


def probe_influx(host: str, port: int) -> str:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        version = resp.getheader("X-Influxdb-Version", "?")
        if resp.status != 204:
            raise ProbeError(f"GET /ping returned {resp.status}")
    finally:
        conn.close()
    return f"ping 204, version {version}"


PROBES = {"mqtt": probe_mqtt, "kafka": probe_kafka, "influx": probe_influx}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in PROBES:
        sys.stderr.write(f"usage: probe.py {{{'|'.join(PROBES)}}} HOST PORT\n")
        return 2
    kind, host, port = argv[0], argv[1], int(argv[2])
    try:
        detail = PROBES[kind](host, port)
    except (OSError, ProbeError, struct.error, http.client.HTTPException) as exc:
        sys.stderr.write(f"{kind} {host}:{port} unhealthy: {exc}\n")
        return 1
    sys.stdout.write(f"{kind} {host}:{port} healthy: {detail}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
