"""The services a live run needs: the stack's addresses, fresh names, configs, storage.

- :class:`Stack`: where Mosquitto, Kafka and InfluxDB listen (``deploy/local/stack``'s
  environment variables and defaults); :func:`check_stack` asks each one a real question.
- :class:`RunNames`: topic, database, consumer-group and client names unique to one run, so
  counts in InfluxDB belong to that run only; :func:`prepare_storage` creates its database and
  topics, :func:`drop_storage` removes them.
- :func:`agent_toml` / :func:`sink_toml`: the generated configs (pure text).
- :func:`link_bundle`: a bundles root holding exactly the bundle a run scores with.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.bundle import Bundle
from gapwatch.demo.errors import ServiceDown

__all__ = [
    "RunNames",
    "Stack",
    "agent_toml",
    "check_stack",
    "drop_storage",
    "influx_client",
    "link_bundle",
    "prepare_storage",
    "sink_toml",
]

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Stack:
    mqtt_host: str
    mqtt_port: int
    kafka_bootstrap: str
    influx_url: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Stack:
        """The local stack's addresses (same variables and defaults as deploy/local/stack)."""
        return cls(
            mqtt_host=env.get("GAPWATCH_DEMO_MQTT_HOST", LOOPBACK),
            mqtt_port=int(env.get("GAPWATCH_MQTT_PORT", "11883")),
            kafka_bootstrap=f"{LOOPBACK}:{int(env.get('GAPWATCH_KAFKA_PORT', '19092'))}",
            influx_url=f"http://{LOOPBACK}:{int(env.get('GAPWATCH_INFLUX_PORT', '18086'))}",
        )


def _probe_mqtt(stack: Stack) -> str | None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-probe-{uuid.uuid4().hex[:8]}")
    try:
        client.connect(stack.mqtt_host, stack.mqtt_port, keepalive=10)
        client.disconnect()
    except OSError as exc:
        return str(exc)
    return None


def _probe_kafka(stack: Stack) -> str | None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=stack.kafka_bootstrap,
            client_id="gapwatch-demo-probe",
            request_timeout_ms=5000,
            bootstrap_timeout_ms=5000,
        )
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        return repr(exc)
    return None


def _probe_influx(stack: Stack) -> str | None:
    try:
        with urllib.request.urlopen(f"{stack.influx_url}/ping", timeout=5) as resp:
            return None if resp.status == 204 else f"GET /ping returned {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)


def check_stack(stack: Stack) -> None:
    """Raise ServiceDown naming every service that does not answer, and the fix."""
    problems = []
    for name, where, probe in (
        ("Mosquitto", f"{stack.mqtt_host}:{stack.mqtt_port}", _probe_mqtt),
        ("Kafka", stack.kafka_bootstrap, _probe_kafka),
        ("InfluxDB", stack.influx_url, _probe_influx),
    ):
        reason = probe(stack)
        if reason is not None:
            problems.append(f"{name} at {where}: {reason}")
    if problems:
        raise ServiceDown(
            "the local stack is not answering:\n  - "
            + "\n  - ".join(problems)
            + "\nstart it with `deploy/local/stack up` (or run `make demo`, which does), or run "
            "`gapwatch demo --offline`, which needs no services"
        )


@dataclass(frozen=True)
class RunNames:
    """Names unique to one run (valid as Kafka topics, InfluxDB databases, MQTT levels)."""

    run_id: str
    site: str
    topic_prefix: str  # MQTT: <topic_prefix>/<site>/<device>
    scored_topic: str
    deadletter_topic: str
    database: str
    group_id: str
    agent_client_id: str

    @classmethod
    def new(cls, kind: str, now: datetime, token: str | None = None) -> RunNames:
        run = f"{now.strftime('%Y%m%dt%H%M%S')}-{token or uuid.uuid4().hex[:6]}"
        return cls(
            run_id=run,
            site=kind,
            topic_prefix=f"gapwatch-{kind}/{run}",
            scored_topic=f"gapwatch.{kind}.{run}.scored",
            deadletter_topic=f"gapwatch.{kind}.{run}.deadletter",
            database=f"gapwatch_{kind}_{run.replace('-', '_')}",
            group_id=f"gapwatch-{kind}-sink-{run}",
            agent_client_id=f"gapwatch-{kind}-agent-{run}",
        )

    @property
    def topic_template(self) -> str:
        return f"{self.topic_prefix}/{{site}}/{{device}}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _q(text: str) -> str:
    return json.dumps(text)  # a TOML basic string is a JSON string


def agent_toml(
    names: RunNames,
    stack: Stack,
    *,
    state_dir: Path,
    bundles_root: Path,
    model: str,
    metrics_port: int,
    warmup_ticks: int = 0,
    rescale: bool = False,
    lateness_ticks: int = 2,
) -> str:
    """The agent's config for one run (keys as in deploy/edge/agent.toml)."""
    return f"""# generated by gapwatch ({names.site} run {names.run_id}); edits are overwritten
site = {_q(names.site)}
state_dir = {_q(str(state_dir))}
log_format = "text"
log_level = "INFO"
shutdown_timeout_s = 10.0

[mqtt]
host = {_q(stack.mqtt_host)}
port = {stack.mqtt_port}
client_id = {_q(names.agent_client_id)}
session_expiry_s = 300
topics = [{_q(names.topic_template)}]
watchdog_s = 120.0

[kafka]
bootstrap = {_q(stack.kafka_bootstrap)}
scored_topic = {_q(names.scored_topic)}
deadletter_topic = {_q(names.deadletter_topic)}

[align]
lateness_ticks = {lateness_ticks}

[bundles]
root = {_q(str(bundles_root))}
poll_s = 5.0

[metrics]
host = "127.0.0.1"
port = {metrics_port}

[[devices]]
match = "*"
bundle = {_q(model)}
warmup_ticks = {warmup_ticks}
rescale = {"true" if rescale else "false"}
"""


def sink_toml(names: RunNames, stack: Stack, *, max_wait_s: float = 1.0) -> str:
    """The sink's config for one run (keys as in deploy/pipeline/sink.toml)."""
    return f"""# generated by gapwatch ({names.site} run {names.run_id}); edits are overwritten
[kafka]
bootstrap = {_q(stack.kafka_bootstrap)}
topic = {_q(names.scored_topic)}
group_id = {_q(names.group_id)}
deadletter_topic = {_q(names.deadletter_topic)}
client_id = {_q(names.group_id)}
auto_offset_reset = "earliest"

[influx]
kind = "v1"
url = {_q(stack.influx_url)}
database = {_q(names.database)}

[batch]
max_wait_s = {max_wait_s}

[metrics]
port = 0
"""


def influx_client(stack: Stack, database: str) -> Any:
    from pipeline.influx import Influx1Client

    return Influx1Client(stack.influx_url, database)


def prepare_storage(stack: Stack, names: RunNames) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from pipeline.errors import StorageError

    client = influx_client(stack, names.database)
    try:
        client.create_database()
    except StorageError as exc:
        raise ServiceDown(f"cannot create InfluxDB database {names.database}: {exc}") from exc
    finally:
        client.close()
    try:
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, client_id="gw-demo")
        try:
            admin.create_topics(
                [
                    NewTopic(names.scored_topic, 3, 1),
                    NewTopic(names.deadletter_topic, 1, 1),
                ]
            )
        finally:
            admin.close()
    except KafkaError as exc:
        raise ServiceDown(f"cannot create the run's Kafka topics: {exc}") from exc


def drop_storage(stack: Stack, names: Mapping[str, str]) -> None:
    """Drop a run's database and delete its topics (what is already gone is skipped)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from pipeline.errors import StorageError

    client = influx_client(stack, "")
    try:
        client.drop_database(names["database"])
    except StorageError:
        log.info("demo.database_gone", extra={"database": names["database"]})
    finally:
        client.close()
    try:
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, client_id="gw-demo")
        try:
            admin.delete_topics([names["scored_topic"], names["deadletter_topic"]])
        finally:
            admin.close()
    except KafkaError:
        log.info("demo.topics_gone", extra={"topic": names["scored_topic"]})


def link_bundle(run_dir: Path, bundle: Bundle) -> Path:
    """``<run>/bundles/<name>/<version>`` -> the bundle, so the agent runs exactly this one."""
    m = bundle.manifest
    root = run_dir / "bundles"
    link = root / m.name / m.version
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(bundle.path.resolve(), target_is_directory=True)
    return root
