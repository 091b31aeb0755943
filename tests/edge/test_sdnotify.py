"""sd_notify against a real unix datagram socket, and the watchdog pinger's liveness gate."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, WatchdogPinger, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield str(path), sock
    finally:
        sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_and_stopping_reach_the_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("mqtt broker:1883")
    assert _recv(sock) == ["READY=1", "STATUS=mqtt broker:1883"]
    assert n.reloading()
    fields = _recv(sock)
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert int(fields[1].split("=")[1]) > 0
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_namespace_socket() -> None:
    name = f"gapwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
        n.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert not n.ready()  # ENOENT: logged once, the agent goes on


def test_watchdog_interval_honours_usec_and_pid() -> None:
    me = str(os.getpid())
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_pinger_pings_only_while_the_loop_is_alive(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    alive = threading.Event()
    alive.set()
    pinger = WatchdogPinger(Notifier({"NOTIFY_SOCKET": path}), 0.2, alive.is_set)
    pinger.start()
    try:
        got = [sock.recv(100) for _ in range(3)]  # every 0.1 s while alive
        assert got == [b"WATCHDOG=1"] * 3
        alive.clear()  # a wedged loop: the pings stop, so systemd would kill and restart us
        deadline = time.monotonic() + 5
        while pinger.skipped < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pinger.skipped >= 3
        sock.settimeout(0.05)
        while True:  # drain pings sent before the flag was seen
            try:
                sock.recv(100)
            except TimeoutError:
                break
        sent = pinger.sent
        time.sleep(0.5)
        assert pinger.sent == sent
    finally:
        pinger.stop()
