"""``gapwatch bench soak``: run the agent for a long time and look for slow leaks and drift.

Replays SKAB files as several devices (``gapwatch simulate``, one pass after another, each
pass shifted forward in time so its ticks are new) into a real ``gapwatch agent`` on the local
stack, and samples the agent every ``--sample-s``: resident memory, open file descriptors, CPU
seconds, records acknowledged by Kafka, spool backlog. The baseline is the run's own first
window: the table compares the last window with it (memory growth per hour, throughput ratio,
fd count). At the end the scored topic is read back and checked for duplicates per
``(device, tick, revision)``.

Not run in CI (it takes ``--minutes``); numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gapwatch.bench.cli import MACHINE_NOTE, bench_env, bench_parser, data_dir, fmt, write_json

__all__ = ["Sample", "main"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the agent started
    rss_mb: float
    fds: int
    cpu_s: float
    acked: float  # records acknowledged by Kafka so far
    spool_records: float
    sim_passes: int


def _parser() -> argparse.ArgumentParser:
    p = bench_parser("soak", "Long run of the agent on the local stack: leaks, drift, duplicates.")
    p.add_argument(
        "--minutes",
        type=float,
        default=float(bench_env("minutes", "30") or 30),
        help="how long to run (default %(default)s; leaks show only over tens of minutes)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=int(bench_env("devices", "4") or 4),
        help="SKAB valve1 files replayed as devices, all ticking together (default %(default)s)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=float(bench_env("speed", "10") or 10),
        help="replay speed of each device (10 = ten ticks per second)",
    )
    p.add_argument(
        "--sample-s",
        type=float,
        default=float(bench_env("sample_s", "10") or 10),
        help="seconds between samples of memory, fds, CPU and throughput (default %(default)s)",
    )
    p.add_argument(
        "--mqtt",
        default=bench_env("mqtt", f"127.0.0.1:{os.environ.get('GAPWATCH_MQTT_PORT', '11883')}"),
        help="HOST:PORT of Mosquitto (default: the local stack's, %(default)s)",
    )
    p.add_argument(
        "--kafka",
        default=bench_env("kafka", f"127.0.0.1:{os.environ.get('GAPWATCH_KAFKA_PORT', '19092')}"),
        help="Kafka bootstrap servers (default: the local stack's, %(default)s)",
    )
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _proc_stats(pid: int) -> tuple[float, int, float]:
    """(RSS MiB, open fds, CPU seconds) of a live process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.split(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_subscribed(agent: subprocess.Popen[bytes], port: int, timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and agent.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if json.loads(resp.read()).get("mqtt_subscribed"):
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _bundle_root(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """(root, model name) of ``--bundle`` (a version dir), or of a small model trained now."""
    if args.bundle:
        version_dir = Path(args.bundle).resolve()
        return version_dir.parent.parent, version_dir.parent.name
    from training.data import load_series
    from training.train import TrainConfig
    from training.train_bundle import BundleConfig, train_bundle

    series = load_series([data_dir() / "skab" / "anomaly-free" / "anomaly-free.csv"])[0]
    config = BundleConfig(
        train=TrainConfig(window=16, hidden=64, latent=8, epochs=2 if args.quick else 20),
        name="soak",
        version="1",
        progress=not args.no_progress,
    )
    path = train_bundle([series.slice(0, 3000)], tmp / "bundles", config)
    return path.parent.parent, "soak"


def _agent(
    args: argparse.Namespace,
    *,
    root: Path,
    model: str,
    state: Path,
    prefix: str,
    port: int,
    log: Path,
) -> subprocess.Popen[bytes]:
    host, mqtt_port = args.mqtt.rsplit(":", 1)
    settings = {
        "state_dir": json.dumps(str(state)),
        "mqtt__host": json.dumps(host),
        "mqtt__port": mqtt_port,
        "mqtt__client_id": json.dumps(prefix),
        "mqtt__topics": json.dumps([prefix + "/{site}/{device}"]),
        "kafka__bootstrap": json.dumps(args.kafka),
        "kafka__scored_topic": json.dumps(f"{prefix}.scored"),
        "kafka__deadletter_topic": json.dumps(f"{prefix}.deadletter"),
        "bundles__root": json.dumps(str(root)),
        "devices": f'[{{match = "*", bundle = "{model}"}}]',
        "metrics__port": str(port),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_AGENT__")}
    env.update({f"GAPWATCH_AGENT__{k.upper()}": v for k, v in settings.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "gapwatch", "agent", "--log-format", "json"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


class _Replay:
    """One ``gapwatch simulate`` per device, all devices aligned to start together; each pass
    is shifted forward by the longest file's span, so its ticks are new to the agent."""

    def __init__(self, args: argparse.Namespace, prefix: str, files: list[Path]) -> None:
        from edge.simulate import read_series

        self.args, self.prefix, self.files = args, prefix, files
        spans = [read_series(f).ts_ms for f in files]
        self.starts_h = [(float(ts[0]) - float(spans[0][0])) / 3.6e6 for ts in spans]
        self.span_h = (max(float(ts[-1] - ts[0]) for ts in spans) + 60_000) / 3.6e6
        self.passes = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self._start()

    def _start(self) -> None:
        shift = self.passes * self.span_h
        if max(abs(s - shift) for s in self.starts_h) >= 24:
            raise RuntimeError("replay passes exhausted (24 h of shifts): shorten --minutes")
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gapwatch",
                    "simulate",
                    str(f),
                    "--mqtt",
                    self.args.mqtt,
                    "--topic",
                    self.prefix + "/{site}/{device}",
                    "--site",
                    "soak",
                    "--speed",
                    str(self.args.speed),
                    "--utc-offset",
                    f"{start - shift:.6f}",
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for f, start in zip(self.files, self.starts_h, strict=True)
        ]

    def step(self) -> None:
        """Start the next pass once every device finished the current one."""
        if all(p.poll() is not None for p in self.procs):
            self.passes += 1
            self._start()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(30)


def _read_topic(bootstrap: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=15_000,
    )
    try:
        return [bytes(m.value) for m in consumer]
    finally:
        consumer.close()


def _summary(samples: list[Sample], duplicates: int, records: int, errors: int) -> dict[str, Any]:
    n = max(2, len(samples) // 10)  # first and last tenth of the run
    first, last = samples[:n], samples[-n:]

    def rate(window: list[Sample]) -> float:
        span = window[-1].t_s - window[0].t_s
        return (window[-1].acked - window[0].acked) / span if span > 0 else float("nan")

    hours = max(1e-9, (last[-1].t_s - first[0].t_s) / 3600)
    return {
        "rss_mb_first": first[0].rss_mb,
        "rss_mb_last": last[-1].rss_mb,
        "rss_growth_mb_per_hour": (last[-1].rss_mb - first[0].rss_mb) / hours,
        "fds_first": first[0].fds,
        "fds_last": last[-1].fds,
        "records_per_s_first": rate(first) if len(first) > 1 else float("nan"),
        "records_per_s_last": rate(last) if len(last) > 1 else float("nan"),
        "cpu_s": last[-1].cpu_s,
        "spool_records_last": last[-1].spool_records,
        "records_in_kafka": records,
        "duplicates": duplicates,
        "error_log_lines": errors,
    }


def _say(line: str) -> None:
    """CLI output (the table) on stdout."""
    sys.stdout.write(line + "\n")


def _watch(
    args: argparse.Namespace,
    agent: subprocess.Popen[bytes],
    *,
    port: int,
    log: Path,
    prefix: str,
    files: list[Path],
) -> list[Sample] | None:
    """Replay and sample the agent every ``--sample-s`` for ``--minutes``; None if it exited."""
    from tqdm import tqdm

    t0, samples = time.monotonic(), []
    replay = _Replay(args, prefix, files)
    total = int(args.minutes * 60 / args.sample_s)
    try:
        for _ in tqdm(range(total), desc="soak", unit="sample", disable=args.no_progress):
            time.sleep(args.sample_s)
            if agent.poll() is not None:
                sys.stderr.write(f"agent exited ({agent.returncode}); see {log}\n")
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
                return None
            replay.step()
            rss, fds, cpu = _proc_stats(agent.pid)
            samples.append(
                Sample(
                    time.monotonic() - t0,
                    rss,
                    fds,
                    cpu,
                    _metric(port, "gapwatch_agent_kafka_acked_total"),
                    _metric(port, "gapwatch_agent_spool_records"),
                    replay.passes,
                )
            )
    finally:
        replay.stop()
        agent.send_signal(signal.SIGTERM)
        agent.wait(120)
    return samples


def _check(bootstrap: str, prefix: str, log: Path) -> tuple[int, int, int]:
    """``(records in the scored topic, duplicates per (key, ts, revision), error log lines)``."""
    from edge.schema import ScoredTick

    values = _read_topic(bootstrap, f"{prefix}.scored")
    keys = Counter((t.key, t.ts_ms, t.revision) for t in map(ScoredTick.decode, values))
    duplicates = sum(n - 1 for n in keys.values() if n > 1)
    errors = sum(
        '"level": "error"' in line or "level=error" in line
        for line in log.read_text(errors="replace").splitlines()
    )
    return len(values), duplicates, errors


def _soak(args: argparse.Namespace, files: list[Path]) -> tuple[list[Sample], int, int, int] | int:
    """``(samples, records, duplicates, error log lines)`` of one run, or its exit code."""
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="gapwatch-soak-") as tmp_name:
        tmp = Path(tmp_name)
        root, model = _bundle_root(args, tmp)
        port, log = _free_port(), tmp / "agent.log"
        agent = _agent(
            args, root=root, model=model, state=tmp / "state", prefix=prefix, port=port, log=log
        )
        if not _wait_subscribed(agent, port):
            sys.stderr.write(f"agent did not subscribe; see {log}\n")
            agent.kill()
            return 1
        samples = _watch(args, agent, port=port, log=log, prefix=prefix, files=files)
        if samples is None:
            return 1
        return (samples, *_check(args.kafka, prefix, log))


def _print_table(args: argparse.Namespace, summary: dict[str, Any], passes: int) -> None:
    _say(
        f"soak: {args.minutes:g} min, {args.devices} devices at x{args.speed:g}, "
        f"{passes + 1} replay passes  ({MACHINE_NOTE})"
    )
    rows = [
        ("resident memory MiB", summary["rss_mb_first"], summary["rss_mb_last"]),
        ("open fds", summary["fds_first"], summary["fds_last"]),
        ("records/s to Kafka", summary["records_per_s_first"], summary["records_per_s_last"]),
    ]
    _say(f"{'':22} {'first window':>14} {'last window':>14} {'ratio':>8}")
    for name, a, b in rows:
        _say(f"{name:22} {fmt(a, 1):>14} {fmt(b, 1):>14} {fmt(b / a if a else float('nan')):>8}")
    _say(
        f"memory growth {fmt(summary['rss_growth_mb_per_hour'], 1)} MiB/h; "
        f"{summary['records_in_kafka']} records, {summary['duplicates']} duplicates; "
        f"{summary['error_log_lines']} error log lines; "
        f"spool backlog at the end {summary['spool_records_last']:g}"
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    files = sorted((data_dir() / "skab" / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    files = files[: args.devices]
    if len(files) < args.devices:
        sys.stderr.write(f"need {args.devices} files under {data_dir()}/skab/valve1\n")
        return 2
    soaked = _soak(args, files)
    if isinstance(soaked, int):
        return soaked
    samples, records, duplicates, errors = soaked
    if len(samples) < 2:
        sys.stderr.write("too short to compare windows: raise --minutes\n")
        return 2
    summary = _summary(samples, duplicates, records, errors)
    _print_table(args, summary, samples[-1].sim_passes)
    write_json(
        Path(args.json),
        {
            "summary": summary,
            "samples": [asdict(s) for s in samples],
            "machine_note": MACHINE_NOTE,
            "args": vars(args),
        },
    )
    return 1 if duplicates else 0
