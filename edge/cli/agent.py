"""``gapwatch agent``: run the edge agent (MQTT in, impute and score, Kafka out).

Builds the config, logging, metrics, spool, adapters and the agent, replays the journal left by
a crash, then runs until SIGTERM/SIGINT: stop reading MQTT, finish the open ticks, spool them,
and give Kafka up to ``shutdown_timeout_s`` to take the spool (what is left stays on disk for the
next start). SIGHUP re-reads the config and restarts in place (:mod:`edge.service`); under
systemd ``Type=notify`` it reports READY and pings the watchdog (:mod:`edge.sdnotify`).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import ENV_PREFIX, AgentConfig, load_config
from edge.errors import BundleError, ConfigError, EdgeError, TransportError
from edge.logs import LOG_FORMATS, configure_logging

if TYPE_CHECKING:
    from edge.agent import Agent
    from edge.forward import Forwarder
    from edge.kafka_out import KafkaSink
    from edge.metrics import AgentMetrics
    from edge.mqtt_source import MqttSource
    from edge.ports import Clock
    from edge.reload import BundleWatcher
    from edge.service import ServiceControl
    from edge.spool import Spool
    from edge.webhook import WebhookNotifier

__all__ = ["build_parser", "main", "setup_logging"]

log = logging.getLogger("edge.cli.agent")

HELP_EPILOG = f"""\
configuration:
  Every key of the TOML file can be overridden by an environment variable
  {ENV_PREFIX}<SECTION>__<KEY> (e.g. {ENV_PREFIX}MQTT__HOST=broker.lan,
  {ENV_PREFIX}KAFKA__BOOTSTRAP=k1:9092,k2:9092) or by --set section.key=value.
  Values are read as TOML when they parse (1884, true, ["a","b"]) and as text otherwise.
  A commented example: `gapwatch agent --sample-config` (deploy/edge/agent.toml).

signals:
  SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the config and restarts in place (a bad new
  config is refused and the old one keeps running); SIGUSR1 dumps every thread's stack.
  Under systemd Type=notify the agent sends READY=1 and WATCHDOG=1 (WatchdogSec=).

examples:
  gapwatch agent --config /etc/gapwatch/agent.toml --check   # validate config and bundles
  gapwatch agent --config agent.toml --set mqtt.port=1884 --log-format json

exit status: 0 stopped cleanly, 1 runtime failure (e.g. MQTT watchdog), 2 bad config or bundle.
"""


def setup_logging(fmt: str, level: str) -> None:
    configure_logging(level, fmt, limit_repeats=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapwatch agent",
        description="Run the edge agent: read sensor messages from MQTT, align them to the model's "
        "tick grid, impute gaps and score anomalies with the ONNX bundle, and publish scored ticks "
        "to Kafka through a crash-safe disk spool.",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=os.environ.get("GAPWATCH_AGENT_CONFIG"),
        help="TOML config file [env GAPWATCH_AGENT_CONFIG]",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set kafka.bootstrap=host:9092",
    )
    p.add_argument("--check", action="store_true", help="validate config and bundles, then exit")
    p.add_argument(
        "--sample-config",
        action="store_true",
        help="print the commented example config (every key, its default and meaning) and exit",
    )
    p.add_argument("--log-format", choices=[*LOG_FORMATS, "kv"], help="override log_format")
    p.add_argument("--log-level", help="override log_level (DEBUG, INFO, WARNING, ERROR)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.sample_config:
        from importlib.resources import files

        sys.stdout.write(files("edge").joinpath("agent.sample.toml").read_text(encoding="utf-8"))
        return 0
    sets = list(args.set)
    if args.log_format:
        sets.append(f'log_format="{args.log_format}"')
    if args.log_level:
        sets.append(f'log_level="{args.log_level}"')
    try:
        config = load_config(args.config, os.environ, sets)
    except ConfigError as exc:
        print(f"gapwatch agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, config.log_level)
    if args.check:
        return _check(config)
    from edge.service import ServiceControl

    def on_config(new: AgentConfig) -> None:
        setup_logging(new.log_format, new.log_level)

    control = ServiceControl(
        lambda: load_config(args.config, os.environ, sets), on_config=on_config
    )
    try:
        return control.serve(config, _run)
    except (BundleError, ConfigError) as exc:
        log.error("agent.cannot_start", extra={"error": str(exc)})
        return 2
    except EdgeError as exc:
        log.error("agent.failed", extra={"error": str(exc)})
        return 1


def _check(config: AgentConfig) -> int:
    from edge.formats import build_inputs
    from edge.reload import BundleWatcher, bundle_loader, rollback_guard
    from edge.rollback import STATE_FILE

    try:
        inputs = build_inputs(config.mqtt)
    except ValueError as exc:
        print(f"gapwatch agent --check: mqtt.topics/inputs: {exc}", file=sys.stderr)
        return 2
    try:
        loader = bundle_loader(config.bundles.trusted_keys)
        state = Path(config.state_dir) / STATE_FILE
        guard = rollback_guard(config.bundles.trusted_keys, state, write_state=False)
        watcher = BundleWatcher(
            config.bundles.root, [r.bundle for r in config.devices], loader=loader, guard=guard
        )
        bundles = watcher.load_initial()
    except BundleError as exc:
        print(f"gapwatch agent --check: {exc}", file=sys.stderr)
        return 2
    print(
        f"config ok: mqtt {config.mqtt.host}:{config.mqtt.port} -> kafka {config.kafka.bootstrap}"
    )
    for name, b in bundles.items():
        m = b.manifest
        print(
            f"bundle ok: {name} version {m.version} ({len(m.channels)} channels, "
            f"tick {m.tick_seconds}s, window {m.window}) at {b.path}"
        )
        if name in watcher.fallbacks:
            print(f"  FALLBACK: the chosen version was refused: {watcher.fallbacks[name]}")
    if config.bundles.trusted_keys:
        print(f"signatures: required, trusted keys from {config.bundles.trusted_keys}")
    for inp in inputs:
        print(f"input: {inp.config.topic} ({inp.config.format})")
    print(f"spool: {config.spool_path} (when full: {config.spool.when_full})")
    if config.alerts.url:
        from edge.webhook import describe

        a = config.alerts
        auth = f", auth from ${a.auth_env}" if a.auth_env else ""
        print(f"alerts: webhook {describe(a)['url']} (retries {a.retries}{auth})")
        if a.auth_env and not os.environ.get(a.auth_env):
            print(f"alerts: warning: ${a.auth_env} is not set", file=sys.stderr)
    return 0


def _open_spool(config: AgentConfig) -> Spool:
    from edge.spool import Spool

    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    return Spool(
        config.spool_path,
        max_records=config.spool.max_records,
        max_bytes=config.spool.max_bytes,
        when_full=config.spool.when_full,
        synchronous=config.spool.synchronous,
        min_free_bytes=config.spool.min_free_bytes,
    )


def _open_bundles(config: AgentConfig) -> BundleWatcher:
    from edge.reload import BundleWatcher, bundle_loader, rollback_guard
    from edge.rollback import STATE_FILE

    watcher = BundleWatcher(
        config.bundles.root,
        [r.bundle for r in config.devices],
        loader=bundle_loader(config.bundles.trusted_keys, config.inference.intra_op_threads),
        guard=rollback_guard(config.bundles.trusted_keys, Path(config.state_dir) / STATE_FILE),
    )
    watcher.load_initial()  # falls back to the newest usable version; raises only if none
    return watcher


def _forwarder(
    config: AgentConfig, spool: Spool, sink: KafkaSink, clock: Clock, metrics: AgentMetrics
) -> Forwarder:
    from edge.forward import Forwarder

    def acked(count: int, newest_created_ms: int) -> None:
        metrics.kafka_acked.inc(count)
        metrics.delivery_lag.observe(max(0, clock.now_ms() - newest_created_ms) / 1000.0)

    k = config.kafka
    return Forwarder(
        spool,
        sink,
        clock,
        max_in_flight=k.max_in_flight_records,
        rate=k.drain_rate,
        stall_timeout_s=(k.delivery_timeout_ms + k.request_timeout_ms) / 1000 + 10.0,
        on_acked=acked,
        on_error=lambda kind: metrics.kafka_errors.labels(kind).inc(),
        on_quarantined=lambda reason, n: metrics.kafka_quarantined.labels(reason).inc(n),
    )


def _mqtt_source(config: AgentConfig, clock: Clock, metrics: AgentMetrics) -> MqttSource:
    from edge.formats import build_inputs
    from edge.mqtt_source import MqttSource

    filters = list(dict.fromkeys(i.template.filter for i in build_inputs(config.mqtt)))
    extra = [config.mqtt.announce_topic] if config.mqtt.announce_topic else []
    return MqttSource(
        config.mqtt,
        config.client_id,
        filters,
        clock,
        extra_filters=extra,
        on_reconnect=metrics.mqtt_reconnects.inc,
    )


def _notifier(config: AgentConfig, metrics: AgentMetrics) -> WebhookNotifier | None:
    if not config.alerts.url:
        return None
    from edge.webhook import WebhookNotifier, describe

    notifier = WebhookNotifier(
        config.alerts,
        env=os.environ,
        on_outcome=lambda outcome, n: metrics.alerts.labels(outcome).inc(n),
    )
    notifier.start()
    log.info("webhook.enabled", extra=describe(config.alerts))
    return notifier


def _run(config: AgentConfig, control: ServiceControl) -> int:
    """Build the adapters and the agent, run until stopped, close everything in order."""
    from prometheus_client import CollectorRegistry

    from edge.agent import Agent
    from edge.kafka_out import KafkaSink
    from edge.metrics import AgentMetrics, MetricsServer
    from edge.ports import SystemClock

    clock = SystemClock()
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    watcher = _open_bundles(config)
    spool = _open_spool(config)
    sink = KafkaSink(config.kafka, config.client_id)
    forwarder = _forwarder(config, spool, sink, clock, metrics)
    source = _mqtt_source(config, clock, metrics)
    notifier = _notifier(config, metrics)
    agent = Agent(
        config,
        source=source,
        spool=spool,
        forwarder=forwarder,
        watcher=watcher,
        clock=clock,
        metrics=metrics,
        alarms=None if notifier is None else notifier.on_tick,
    )
    server = None
    if config.metrics.port:
        server = MetricsServer(registry, config.metrics.host, config.metrics.port, agent.health)
        server.start()
    forward_stop = threading.Event()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: dump every stack
    thread = threading.Thread(
        target=forwarder.run,
        args=(forward_stop, config.shutdown_timeout_s),
        name="gapwatch-forwarder",
        daemon=True,
    )
    thread.start()
    try:
        return _serve(config, control, agent=agent, source=source, watcher=watcher, clock=clock)
    finally:
        control.stopping()
        forward_stop.set()
        thread.join(config.shutdown_timeout_s + 5.0)
        sink.close()
        spool.close()
        if notifier is not None:
            notifier.stop(config.alerts.timeout_s)
        if server is not None:
            server.stop()


def _serve(
    config: AgentConfig,
    control: ServiceControl,
    *,
    agent: Agent,
    source: MqttSource,
    watcher: BundleWatcher,
    clock: Clock,
) -> int:
    """Recover the journal, connect, tell the supervisor, run the loop; 1 if MQTT gave up."""
    log.info(
        "agent.starting",
        extra={
            "client_id": config.client_id,
            "spool": str(config.spool_path),
            "models": ",".join(f"{n}/{b.manifest.version}" for n, b in watcher.current.items()),
        },
    )
    try:
        agent.recover()
        source.start()
        alive_s = 30.0

        def alive() -> bool:
            return clock.monotonic() - agent.heartbeat < alive_s

        control.started(alive, status=f"mqtt {config.mqtt.host}:{config.mqtt.port}")
        agent.run(control.stop)
    except TransportError as exc:
        log.error("agent.transport_failed", extra={"error": str(exc)})
        return 1
    return 0
