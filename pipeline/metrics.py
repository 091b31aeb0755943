"""Prometheus metrics of the sink, registered on a registry the caller creates (never global).

Names (stable; dashboards and alerts depend on them):

- ``gapwatch_sink_records_total{outcome}``: records consumed, by ``written`` / ``deadletter`` /
  ``stale`` (an older revision of a tick already written, skipped);
- ``gapwatch_sink_points_written_total``: points InfluxDB accepted (readings + anomalies);
- ``gapwatch_sink_batches_total``: batches written and committed;
- ``gapwatch_sink_write_seconds``: duration of one successful batch write (histogram);
- ``gapwatch_sink_write_failures_total{kind}``: ``unavailable`` (retried) or ``rejected`` (400);
- ``gapwatch_sink_deadletters_total{reason}``;
- ``gapwatch_sink_commit_failures_total``: offset commits refused (rebalance); records are
  re-read by the new owner and overwrite the same points;
- ``gapwatch_sink_pending_records``: records consumed but not yet committed;
- ``gapwatch_sink_last_commit_timestamp_seconds``: wall-clock time of the last commit;
- ``gapwatch_sink_consumer_lag{topic,partition}``: records in Kafka not yet read by this sink
  (end offset - position), per assigned partition, refreshed every ``metrics.lag_interval_s``
  (add ``gapwatch_sink_pending_records`` for what is read but not yet committed);
- ``gapwatch_sink_build_info{version,...}``: 1, labelled with the build's versions;
- ``process_*``, ``python_info``, ``python_gc_*``: prometheus-client's runtime collectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge.metrics import build_versions, register_runtime_collectors

__all__ = ["SinkMetrics"]


@dataclass(frozen=True)
class SinkMetrics:
    records: Any
    points_written: Any
    batches: Any
    write_seconds: Any
    write_failures: Any
    deadletters: Any
    commit_failures: Any
    pending_records: Any
    last_commit: Any
    consumer_lag: Any
    build_info: Any

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SinkMetrics:
        register_runtime_collectors(registry)
        build = build_versions()
        build_info = Gauge(
            "gapwatch_sink_build_info",
            "gapwatch version, the schema it reads and library versions (value 1).",
            list(build),
            registry=registry,
        )
        build_info.labels(**build).set(1)
        return cls(
            build_info=build_info,
            consumer_lag=Gauge(
                "gapwatch_sink_consumer_lag",
                "Records in Kafka not yet read by this sink (end offset - position).",
                ["topic", "partition"],
                registry=registry,
            ),
            records=Counter(
                "gapwatch_sink_records",
                "Scored-tick records consumed, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            points_written=Counter(
                "gapwatch_sink_points_written", "Points InfluxDB accepted.", registry=registry
            ),
            batches=Counter(
                "gapwatch_sink_batches", "Batches written and committed.", registry=registry
            ),
            write_seconds=Histogram(
                "gapwatch_sink_write_seconds",
                "Seconds to write one batch to InfluxDB (successful writes).",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            write_failures=Counter(
                "gapwatch_sink_write_failures",
                "Failed InfluxDB writes: unavailable (retried) or rejected (400).",
                ["kind"],
                registry=registry,
            ),
            deadletters=Counter(
                "gapwatch_sink_deadletters",
                "Records sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=registry,
            ),
            commit_failures=Counter(
                "gapwatch_sink_commit_failures",
                "Offset commits Kafka refused (the group rebalanced).",
                registry=registry,
            ),
            pending_records=Gauge(
                "gapwatch_sink_pending_records",
                "Records consumed but not yet committed.",
                registry=registry,
            ),
            last_commit=Gauge(
                "gapwatch_sink_last_commit_timestamp_seconds",
                "Unix time of the last successful offset commit.",
                registry=registry,
            ),
        )
