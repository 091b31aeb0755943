"""The fault-injection harness: a real agent subprocess, replayed devices, a Kafka reader.

Loaded by ``tests/faults/conftest.py`` with ``importlib`` (tests are not a package). The model
is a tiny hand-built ONNX graph with SKAB's channels (mean = x * mask, logvar = 0): these
tests are about delivery, not model quality, and need no torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("GAPWATCH_DATA_DIR", REPO / ".." / "shared" / "data"))
SKAB_CHANNELS = (
    "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure",
    "Temperature", "Thermocouple", "Voltage", "Volume Flow RateRMS",
)  # fmt: skip


def write_tiny_bundle(root: Path, name: str = "skab", version: str = "1", window: int = 8) -> Path:
    """``<root>/<name>/<version>/`` with SKAB's channels and an identity-like ONNX graph."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edge.bundle import (
        FORMAT_VERSION,
        INPUT_NAMES,
        OUTPUT_NAMES,
        Channel,
        Manifest,
        ThresholdSpec,
        write_bundle,
    )

    shape = ["batch", window, len(SKAB_CHANNELS)]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "mask"], ["mean"]),
            helper.make_node("Sub", ["x", "x"], ["logvar"]),
        ],
        "tiny",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in OUTPUT_NAMES],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        created_at="2026-11-25T00:00:00Z",
        channels=tuple(Channel(c, "", 0.0, 1.0) for c in SKAB_CHANNELS),
        tick_seconds=1.0,
        window=window,
        max_gap_ticks=60,
        backfill_delay=2,
        inputs=INPUT_NAMES,
        outputs=OUTPUT_NAMES,
        opset=18,
        score="test model: delivery tests only",
        threshold=ThresholdSpec(1e9, 1e9, 1.0, 0.01),
        training={},
        evaluation={},
        model_sha256="0" * 64,
        producer={"numpy": np.__version__, "onnx": onnx.__version__},
    )
    return write_bundle(root, manifest, bytes(model.SerializeToString()))


@dataclass
class Agent:
    """``gapwatch agent`` as a subprocess configured through GAPWATCH_AGENT__* variables."""

    env: dict[str, str]
    workdir: Path
    metrics_port: int
    prefix: str
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log = self.workdir / f"agent.{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gapwatch", "agent", "--log-format", "json"],
                cwd=REPO,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as exc:  # 503 still carries the details
            try:
                detail: dict[str, Any] = json.loads(exc.read())
                return detail
            except ValueError:
                return None
        except OSError:
            return None

    def metric(self, sample: str) -> float:
        """One sample by exact name and labels; NaN when the endpoint does not answer."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            return float("nan")
        for line in text.splitlines():
            if line.rsplit(" ", 1)[0] == sample:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_subscribed(self, timeout_s: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if not self.alive():
                raise AssertionError(f"agent exited ({self.returncode}):\n{self.log_text()}")
            h = self.health()
            if h and h.get("mqtt_subscribed"):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise AssertionError(f"agent not subscribed after {timeout_s}s:\n{self.log_text()}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for path in self.logs:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        return out

    def log_text(self, tail: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in self.logs if p.exists())


def agent_env(
    *,
    prefix: str,
    state: Path,
    mqtt_port: int,
    kafka_bootstrap: str,
    bundles: Path,
    metrics_port: int,
    **settings: str,
) -> dict[str, str]:
    base = {
        "state_dir": json.dumps(str(state)),
        "mqtt__host": '"127.0.0.1"',
        "mqtt__port": str(mqtt_port),
        "mqtt__client_id": json.dumps(prefix),
        "mqtt__topics": json.dumps([prefix + "/{site}/{device}"]),
        "mqtt__reconnect_max_s": "2",
        "kafka__bootstrap": json.dumps(kafka_bootstrap),
        "kafka__scored_topic": json.dumps(f"{prefix}.scored"),
        "kafka__deadletter_topic": json.dumps(f"{prefix}.deadletter"),
        "kafka__linger_ms": "5",
        "kafka__request_timeout_ms": "3000",
        "kafka__delivery_timeout_ms": "6000",
        "bundles__root": json.dumps(str(bundles)),
        "bundles__poll_s": "0.5",
        "devices": '[{match = "*", bundle = "skab"}]',
        "metrics__port": str(metrics_port),
        "shutdown_timeout_s": "10.0",
        **settings,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_AGENT__")}
    env.update({f"GAPWATCH_AGENT__{k.upper()}": v for k, v in base.items()})
    return env


class Replay:
    """One ``gapwatch simulate`` per device, shifted so that all devices tick together."""

    def __init__(
        self, files: list[Path], mqtt_port: int, prefix: str, rows: int, speed: float
    ) -> None:
        from edge.simulate import read_series

        self.series = [read_series(f, max_rows=rows) for f in files]
        first = float(self.series[0].ts_ms[0])
        self.offsets_h = [(float(s.ts_ms[0]) - first) / 3.6e6 for s in self.series]
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gapwatch",
                    "simulate",
                    str(f),
                    "--mqtt",
                    f"127.0.0.1:{mqtt_port}",
                    "--site",
                    "lab",
                    "--topic",
                    prefix + "/{site}/{device}",
                    "--rows",
                    str(rows),
                    "--speed",
                    str(speed),
                    "--utc-offset",
                    f"{off:.9f}",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for f, off in zip(files, self.offsets_h, strict=True)
        ]

    @property
    def messages(self) -> int:
        """How many messages the replay publishes (files may be shorter than ``rows``)."""
        return sum(len(s.ts_ms) for s in self.series)

    def expected(self) -> dict[str, set[int]]:
        """``site/device -> tick times (ms)`` the replay publishes (shifted like the topics)."""
        out = {}
        for s, off in zip(self.series, self.offsets_h, strict=True):
            shift = round(off * 3.6e6)
            out[f"lab/{s.device}"] = {int(t) - shift for t in s.ts_ms}
        return out

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def wait(self, timeout_s: float) -> list[int | None]:
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def read_topic(
    bootstrap: str, topic: str, until: Callable[[list[bytes]], bool], timeout_s: float
) -> list[bytes]:
    """Every value of ``topic`` from the start, read until ``until(values)`` or the timeout."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(bytes(r.value) for r in records)
            if until(values):
                break
    finally:
        consumer.close()
    return values


def tick_index(values: list[bytes]) -> tuple[Counter[tuple[str, int, int]], dict[str, Any]]:
    """Count of each ``(site/device, ts_ms, revision)`` and the revision-0 tick by key."""
    from edge.schema import ScoredTick

    counts: Counter[tuple[str, int, int]] = Counter()
    first: dict[str, Any] = {}
    for raw in values:
        tick = ScoredTick.decode(raw)
        counts[(tick.key, tick.ts_ms, tick.revision)] += 1
        if tick.revision == 0:
            first[f"{tick.key}@{tick.ts_ms}"] = tick
    return counts, first


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if check():
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def unaccounted(
    scored: list[bytes], letters: list[bytes], want: set[str]
) -> tuple[list[str], dict[str, int]]:
    """Keys ``site/device@ts_ms`` of ``want`` that are neither observed in their revision-0
    tick (values not imputed) nor named by a dead letter: messages that vanished silently."""
    from edge.decode import parse_ts
    from edge.schema import DeadLetter

    _, first = tick_index(scored)
    observed = {k for k, t in first.items() if not t.imputed}
    lettered: set[str] = set()
    reasons: Counter[str] = Counter()
    for raw in letters:
        letter = DeadLetter.decode(raw)
        reasons[letter.reason] += 1
        try:
            body = json.loads(letter.raw)
            site, device = letter.source.split("/")[-2:]
            lettered.add(f"{site}/{device}@{parse_ts(body['ts'])}")
        except (ValueError, KeyError, TypeError):
            continue
    stats = {
        "expected": len(want),
        "observed": len(want & observed),
        "imputed": len(want & (set(first) - observed)),
        "absent": len(want - set(first)),
        **{f"dead_letters_{r}": n for r, n in sorted(reasons.items())},
    }
    return sorted(want - observed - lettered), stats


@dataclass
class Sink:
    """``gapwatch sink`` as a subprocess (Kafka -> InfluxDB), configured by environment."""

    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log = self.workdir / f"sink.{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gapwatch", "sink"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_text(self, tail: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in self.logs if p.exists())


def sink_env(*, kafka_bootstrap: str, topic: str, influx_url: str, database: str) -> dict[str, str]:
    settings = {
        "KAFKA__BOOTSTRAP": kafka_bootstrap,
        "KAFKA__TOPIC": topic,
        "KAFKA__GROUP_ID": f"{database}-sink",
        "KAFKA__DEADLETTER_TOPIC": f"{topic}.sink-deadletter",
        "INFLUX__URL": influx_url,
        "INFLUX__DATABASE": database,
        "INFLUX__CREATE_DATABASE": "true",
        "BATCH__MAX_WAIT_S": "0.2",
        "RETRY__MAX_BACKOFF_S": "2",
        "METRICS__PORT": "0",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPWATCH_SINK__")}
    env.update({f"GAPWATCH_SINK__{k}": v for k, v in settings.items()})
    return env


def influx_revisions(url: str, database: str) -> dict[str, int] | None:
    """``site/device@ts_ms -> revision`` of every point in ``readings``; None if unreachable."""
    from pipeline.errors import PipelineError
    from pipeline.influx import Influx1Client

    client = Influx1Client(url, database, timeout_s=10)
    try:
        series = client.query('SELECT "revision" FROM "readings" GROUP BY "site", "device"')
    except PipelineError:
        return None
    finally:
        client.close()
    out: dict[str, int] = {}
    for s in series:
        key = f"{s.tags.get('site')}/{s.tags.get('device')}"
        for row in s.values:
            out[f"{key}@{int(row[0])}"] = int(row[1])
    return out
