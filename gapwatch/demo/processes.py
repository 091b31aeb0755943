"""Processes a run starts, recorded on disk so a later command can stop them.

:class:`Processes` starts each subprocess in its own session (it outlives the command that
started it) with its output in ``<run_dir>/logs/<name>.log`` and its pid in
``<run_dir>/processes.json``. :func:`stop_recorded` (``gapwatch demo --down``) signals a recorded
pid only while its command line still holds the run's marker (its config path), so a recycled
pid is never hit. Also: a free port, and the agent's ``/healthz`` and Prometheus counters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gapwatch.demo.errors import ServiceDown

__all__ = [
    "ProcessRecord",
    "Processes",
    "agent_connected",
    "agent_counters",
    "free_port",
    "stop_recorded",
    "wait_until",
]

log = logging.getLogger(__name__)
PROCESS_FILE = "processes.json"


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    marker: str  # a string its command line contains (its config path)
    log: str


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_ours(rec: ProcessRecord) -> bool:
    return rec.marker in _cmdline(rec.pid)


def _stop(records: Sequence[ProcessRecord], timeout_s: float) -> list[str]:
    stopped = []
    live = [r for r in records if _is_ours(r)]
    for r in live:
        try:
            os.kill(r.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped.append(r.name)
    deadline = time.monotonic() + timeout_s
    for r in live:
        while _is_ours(r) and time.monotonic() < deadline:
            _reap(r.pid)
            time.sleep(0.1)
        if _is_ours(r):
            log.warning("demo.process_killed", extra={"process": r.name, "pid": r.pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGKILL)
            _reap(r.pid)
    return stopped


def _reap(pid: int) -> None:
    """Collect a child that exited (a zombie keeps its /proc entry)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class Processes:
    """Subprocesses of one run, recorded in ``<run_dir>/processes.json``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._records: list[ProcessRecord] = []
        self._popen: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], marker: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session (it outlives this process), output to a log."""
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        self._popen[name] = proc
        self._records.append(ProcessRecord(name, proc.pid, marker, str(log_path)))
        self._save()
        return proc

    def _save(self) -> None:
        tmp = self.run_dir / f".{PROCESS_FILE}.tmp"
        tmp.write_text(json.dumps([asdict(r) for r in self._records], indent=2), "utf-8")
        tmp.replace(self.run_dir / PROCESS_FILE)

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Raise ServiceDown (with the log's tail) for a process that has exited."""
        for rec in self._records:
            if names is not None and rec.name not in names:
                continue
            proc = self._popen.get(rec.name)
            if proc is not None and proc.poll() is not None:
                tail = _tail(Path(rec.log))
                raise ServiceDown(
                    f"{rec.name} exited with status {proc.returncode}; last lines of "
                    f"{rec.log}:\n{tail}"
                )

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def stop(self, names: Sequence[str], timeout_s: float = 20.0) -> list[str]:
        chosen = [r for r in self._records if r.name in names]
        return _stop(chosen, timeout_s)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def stop_recorded(run_dir: Path, timeout_s: float = 20.0) -> list[str]:
    """Stop the processes a run recorded (only those still running its command)."""
    try:
        raw = json.loads((run_dir / PROCESS_FILE).read_text(encoding="utf-8"))
        records = [ProcessRecord(**r) for r in raw]
    except (OSError, ValueError, TypeError):
        return []
    return _stop(records, timeout_s)


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    check: Callable[[], None] = lambda: None,
    interval_s: float = 0.2,
) -> None:
    """Poll ``ready`` until true; ``check`` may raise (a process died); ServiceDown on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        check()
        if ready():
            return
        if time.monotonic() >= deadline:
            raise ServiceDown(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)


def free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise ServiceDown("no free TCP port on 127.0.0.1")


def agent_connected(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while unhealthy still carries the details
        body = json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return bool(body.get("mqtt_connected"))


def agent_counters(port: int) -> dict[str, float]:
    """The agent's Prometheus counters (``gapwatch_agent_*_total``), {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(gapwatch_agent_\w+_total)(\{[^}]*\})? (\S+)", line)
        if match:
            out[match.group(1)] = out.get(match.group(1), 0.0) + float(match.group(3))
    return out
