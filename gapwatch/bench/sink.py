"""``gapwatch bench sink``: Kafka → InfluxDB throughput of the sink against a bare writer.

Both sides run in the same process, one after the other, against the same InfluxDB and with
the same line protocol:

1. a fresh topic is filled with ``--records`` scored ticks (8 SKAB-like channels, ~2 % alarms,
   ~5 % back-fill revisions, ``--devices`` devices);
2. **baseline**: the ticks are serialised to line protocol up front and POSTed in batches of
   ``--batch`` points over one keep-alive connection into a fresh database — InfluxDB's own
   ingest rate, with no Kafka and no decoding;
3. **sink**: the real :class:`~pipeline.sink.Sink` with the Kafka adapters consumes the topic
   as a fresh consumer group into another fresh database, timed from the first record polled
   to the last commit.

Targets: sink ≥ 50,000 points/s and ≥ 0.6 × baseline. Databases and topic are deleted after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TextIO, TypeVar

from edge.ports import SystemClock
from edge.schema import ScoredTick
from pipeline.config import (
    BatchSettings,
    InfluxSettings,
    KafkaSettings,
    MetricsSettings,
    SinkConfig,
)
from pipeline.influx import Influx1Client
from pipeline.kafka_in import KafkaDeadLetters, KafkaRecordSource
from pipeline.lineproto import LineEncoder
from pipeline.sink import PartitionRecords, Sink, SinkSettings, TopicPartition
from pipeline.tuning import tune_interpreter

__all__ = ["BenchResult", "main"]

CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
T = TypeVar("T")
TARGET_POINTS_S = 50_000.0
TARGET_RATIO = 0.6


@dataclass(frozen=True)
class BenchResult:
    records: int
    points: int
    baseline_s: float
    sink_s: float

    @property
    def baseline_rate(self) -> float:
        return self.points / self.baseline_s

    @property
    def sink_rate(self) -> float:
        return self.points / self.sink_s

    @property
    def ratio(self) -> float:
        return self.sink_rate / self.baseline_rate


def make_ticks(n: int, devices: int, seed: int = 0) -> list[ScoredTick]:
    rng = random.Random(seed)
    start = 1_700_000_000_000
    out = []
    for i in range(n):
        device = i % devices
        ts = start + (i // devices) * 1000
        imputed = (CHANNELS[i % 8],) if rng.random() < 0.1 else ()
        anomaly = rng.random() < 0.02
        tick = ScoredTick(
            site="bench",
            device=f"dev-{device:04d}",
            ts_ms=ts,
            values={c: round(rng.gauss(10, 3), 6) for c in CHANNELS},
            imputed=imputed,
            sigma={c: 0.05 for c in imputed},
            score=round(rng.random() * 3, 6),
            smoothed=round(rng.random() * 3, 6),
            threshold=2.5,
            anomaly=anomaly,
            top_channels=("Pressure", "Current") if anomaly else (),
            model="skab",
            model_version="20261125T120000",
            revision=1 if rng.random() < 0.05 else 0,
        )
        out.append(tick)
    return out


def progress(items: Sequence[T], desc: str, file: TextIO) -> Iterable[T]:
    """``items`` with a progress bar on ``file`` if it is a terminal, else silently.

    (A bar redrawn into a log file or CI output is one line per update.)
    """
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="rec", file=file, disable=None, mininterval=1.0)


def _produce(bootstrap: str, topic: str, partitions: int, ticks: list[ScoredTick]) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    for tick in progress(ticks, "produce", sys.stderr):
        producer.send(topic, key=tick.key.encode(), value=tick.encode())
    producer.flush()
    producer.close()


def _baseline(client: Influx1Client, bodies: list[bytes]) -> float:
    client.create_database()
    started = time.perf_counter()
    for body in bodies:
        client.write(body)
    return time.perf_counter() - started


class _CountingSource:
    """Wraps the Kafka source: starts the clock at the first record, stops the sink after N."""

    def __init__(self, inner: KafkaRecordSource, total: int) -> None:
        self.inner = inner
        self.total = total
        self.seen = 0
        self.started: float | None = None
        self.sink: Sink | None = None

    def poll(self, timeout_s: float, max_records: int) -> list[PartitionRecords]:
        groups = self.inner.poll(timeout_s, max_records)
        if groups and self.started is None:
            self.started = time.perf_counter()
        self.seen += sum(len(g.records) for g in groups)
        if self.seen >= self.total and self.sink is not None:
            self.sink.request_stop()
        return groups

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.inner.commit(offsets)


def _run_sink(cfg: SinkConfig, total: int) -> float:
    holder: list[Sink] = []

    def revoke() -> None:
        holder[0].partitions_revoked()

    tune_interpreter()  # as `gapwatch sink` does
    inner = KafkaRecordSource(cfg, on_revoke=revoke)
    source = _CountingSource(inner, total)
    letters = KafkaDeadLetters(cfg)
    influx = Influx1Client(cfg.influx.url, cfg.influx.database, gzip=cfg.influx.gzip)
    influx.create_database()
    sink = Sink(source, influx, letters, SystemClock(), settings=SinkSettings.from_config(cfg))
    holder.append(sink)
    source.sink = sink
    try:
        stats = sink.run()
        ended = time.perf_counter()
    finally:
        inner.close()
        letters.close()
        influx.close()
    if stats.records != total or stats.deadletters:
        raise RuntimeError(f"sink consumed {stats.records}/{total}, {stats.deadletters} dead")
    assert source.started is not None
    return ended - source.started


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="gapwatch bench sink",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Numbers depend on the machine; run it on an otherwise idle one.",
    )
    p.add_argument("--bootstrap", default=env.get("GAPWATCH_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    p.add_argument("--influx", default=env.get("GAPWATCH_INFLUX_URL", "http://127.0.0.1:18086"))
    p.add_argument("--records", type=int, default=200_000, help="scored ticks [200000]")
    p.add_argument("--devices", type=int, default=200, help="devices (series) [200]")
    p.add_argument("--partitions", type=int, default=3, help="topic partitions [3]")
    p.add_argument("--batch", type=int, default=5_000, help="points per write [5000]")
    p.add_argument("--gzip", action="store_true", help="gzip request bodies (both sides)")
    p.add_argument("--rounds", type=int, default=1, help="alternate both sides N times [1]")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _bodies(lines: list[bytes], batch: int) -> list[bytes]:
    bodies, cur, n = [], [], 0
    for line in lines:
        cur.append(line)
        n += line.count(b"\n")
        if n >= batch:
            bodies.append(b"".join(cur))
            cur, n = [], 0
    if cur:
        bodies.append(b"".join(cur))
    return bodies


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sink_config(args: argparse.Namespace, topic: str, database: str, round_no: int) -> SinkConfig:
    return SinkConfig(
        kafka=replace(
            KafkaSettings(),
            bootstrap=args.bootstrap,
            topic=topic,
            group_id=f"{topic}-{round_no}",
        ),
        influx=replace(InfluxSettings(), url=args.influx, database=database, gzip=args.gzip),
        batch=replace(BatchSettings(), max_points=args.batch),
        metrics=replace(MetricsSettings(), port=0),
    )


def _rounds(
    args: argparse.Namespace, topic: str, run: str, bodies: list[bytes], points: int
) -> tuple[list[BenchResult], list[float]]:
    """``--rounds`` times: the bare writer, then the sink; their results and the sink's CPU s."""
    admin = Influx1Client(args.influx, "", gzip=args.gzip)
    results: list[BenchResult] = []
    sink_cpu: list[float] = []
    try:
        for round_no in range(args.rounds):
            db_base, db_sink = f"bench_base_{run}_{round_no}", f"bench_sink_{run}_{round_no}"
            base_client = Influx1Client(args.influx, db_base, gzip=args.gzip)
            cfg = _sink_config(args, topic, db_sink, round_no)
            try:
                baseline_s = _baseline(base_client, bodies)
                cpu = _cpu_s()
                sink_s = _run_sink(cfg, args.records)
                sink_cpu.append(_cpu_s() - cpu)
            finally:
                admin.drop_database(db_base)
                admin.drop_database(db_sink)
                base_client.close()
            results.append(BenchResult(args.records, points, baseline_s, sink_s))
    finally:
        admin.close()
        _delete_topic(args.bootstrap, topic)
    return results, sink_cpu


def _met(result: BenchResult) -> bool:
    return result.sink_rate >= TARGET_POINTS_S and result.ratio >= TARGET_RATIO


def _report(
    result: BenchResult, results: list[BenchResult], cpu_us: float, ok: bool
) -> dict[str, object]:
    return {
        "records": result.records,
        "points": result.points,
        "rounds": len(results),
        "baseline_points_s": round(result.baseline_rate),
        "sink_points_s": round(result.sink_rate),
        "ratio": round(result.ratio, 3),
        "sink_cpu_us_per_point": round(cpu_us, 2),
        "all_rounds": [
            {"baseline_points_s": round(r.baseline_rate), "sink_points_s": round(r.sink_rate)}
            for r in results
        ],
        "target_points_s": TARGET_POINTS_S,
        "target_ratio": TARGET_RATIO,
        "met": ok,
    }


def _write_text(
    out: TextIO, batch: int, result: BenchResult, results: list[BenchResult], cpu_us: float
) -> None:
    ok = _met(result)
    out.write(
        f"records {result.records}, points {result.points} (batches of {batch}), "
        f"median of {len(results)} round(s)\n"
    )
    out.write(f"bare writer (pre-serialised) : {result.baseline_rate:>10,.0f} points/s\n")
    out.write(f"sink (Kafka -> InfluxDB)     : {result.sink_rate:>10,.0f} points/s\n")
    out.write(f"sink process CPU             : {cpu_us:>10.1f} us/point\n")
    for i, r in enumerate(results):
        out.write(
            f"  round {i + 1}: bare {r.baseline_rate:,.0f}/s, sink {r.sink_rate:,.0f}/s, "
            f"ratio {r.ratio:.2f}\n"
        )
    out.write(
        f"ratio {result.ratio:.2f} (target >= {TARGET_RATIO}); "
        f"target {TARGET_POINTS_S:,.0f} points/s: {'met' if ok else 'NOT met'}\n"
    )


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    run = uuid.uuid4().hex[:8]
    topic = f"bench-sink-{run}"
    ticks = make_ticks(args.records, args.devices)
    encoder = LineEncoder()
    lines = [encoder.encode(t) for t in ticks]
    points = sum(line.count(b"\n") for line in lines)
    bodies = _bodies(lines, args.batch)
    _produce(args.bootstrap, topic, args.partitions, ticks)
    results, sink_cpu = _rounds(args, topic, run, bodies, points)
    result = sorted(results, key=lambda r: r.ratio)[len(results) // 2]  # the median round
    cpu_us = 1e6 * sorted(sink_cpu)[len(sink_cpu) // 2] / points
    ok = _met(result)
    if args.json:
        sys.stdout.write(json.dumps(_report(result, results, cpu_us, ok)) + "\n")
    else:
        _write_text(sys.stdout, args.batch, result, results, cpu_us)
    return 0 if ok else 1


def _delete_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        with contextlib.suppress(KafkaError):
            admin.delete_topics([topic])
    finally:
        admin.close()
