"""Private Mosquitto, InfluxDB and Kafka instances started by a test, on free loopback ports.

Each runs from a generated config in the test's own directory, so a test can turn on TLS,
passwords or SASL, or kill -9 a broker, without disturbing the shared stack of
``deploy/local/stack``. Kafka uses the same jars as the stack (``~/.cache/gapwatch/kafka-<v>/lib``
or ``GAPWATCH_CACHE_DIR``) and the same start sequence: StorageTool format, then kafka.Kafka.

Loaded by the security and fault-injection conftests with ``importlib`` (tests are not a package).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SHIPPED_MOSQUITTO_DIR",
    "KafkaUser",
    "Service",
    "free_port",
    "kafka_lib",
    "mosquitto_binary",
    "start_influxdb",
    "start_kafka",
    "start_mosquitto",
]

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
# The broker settings gapwatch ships (persistence, queue bounds): deploy/mosquitto/*.conf
SHIPPED_MOSQUITTO_DIR = REPO / "deploy" / "mosquitto"


class ServiceError(RuntimeError):
    """A private service did not start (the message carries the tail of its log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def kafka_lib() -> Path | None:
    """The Kafka jars directory deploy/local/stack resolved, or None."""
    pom = (REPO / "deploy" / "kafka" / "pom.xml").read_text(encoding="utf-8")
    m = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    version = os.environ.get("GAPWATCH_KAFKA_VERSION") or (m.group(1) if m else "")
    cache = Path(os.environ.get("GAPWATCH_CACHE_DIR", Path.home() / ".cache" / "gapwatch"))
    lib = cache / f"kafka-{version}" / "lib"
    return lib if (lib / ".complete").exists() and shutil.which("java") else None


@dataclass
class Service:
    """One private server process; ``kill`` is SIGKILL, ``start`` reuses the same config."""

    name: str
    command: list[str]
    log: Path
    ready: Callable[[], bool]
    port: int
    timeout_s: float = 90.0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> float:
        """Start and wait until ready; return the seconds it took."""
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            out.write(f"==== start {self.starts} of {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        self.starts += 1
        deadline = t0 + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if self.ready():
                return time.monotonic() - t0
            time.sleep(0.2)
        self.kill()
        raise ServiceError(f"{self.name} not ready after {self.timeout_s}s:\n{self.tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group (a crash, not a shutdown) and reap it."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ----------------------------------------------------------------------------- Mosquitto


def start_mosquitto(
    workdir: Path,
    *,
    plain_port: int | None = None,
    tls_port: int | None = None,
    mtls_port: int | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    users: dict[str, str] | None = None,
    allow_anonymous: bool = False,
    autosave_on_changes: int = 0,
    max_queued_messages: int = 1000,
    include_dir: Path | None = None,
    password_file: Path | None = None,
    acl_file: Path | None = None,
) -> Service:
    """Mosquitto with any of: a plain listener, a TLS listener with passwords, a TLS listener
    that requires a client certificate (its CN becomes the user name).

    ``users`` go through ``mosquitto_passwd`` (hashed, never in the config).
    ``autosave_on_changes=N`` writes the persistence file after every N changes, so a
    SIGKILL loses at most N-1 acknowledged messages (the default saves only on shutdown).
    ``max_queued_messages`` is Mosquitto's per-client queue beyond the messages in flight
    (default 1000): past it, QoS 1 messages for a paused or absent agent are dropped.
    ``include_dir`` loads every ``*.conf`` there after these lines (the shipped
    ``SHIPPED_MOSQUITTO_DIR``: then leave ``autosave_on_changes`` and ``max_queued_messages``
    alone, the shipped file sets them). ``password_file`` and ``acl_file`` apply to the plain
    listener (a given password file replaces the one made from ``users``).
    """
    binary = mosquitto_binary()
    if binary is None:
        raise ServiceError("mosquitto is not installed (deploy/local/stack install)")
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.write_text("")
    passwd.chmod(0o600)
    plain_passwd = password_file or (passwd if users else None)
    for user, password in (users or {}).items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    try:
        import pwd

        me = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        me = "root"
    lines = [
        "per_listener_settings true",
        "persistence true",
        f"persistence_location {workdir}/",
        f"user {me}",
        f"log_dest file {workdir}/broker.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
    ]
    if include_dir is None:
        lines.append(f"max_queued_messages {max_queued_messages}")
    if autosave_on_changes:
        lines += ["autosave_on_changes true", f"autosave_interval {autosave_on_changes}"]
    anon = "true" if allow_anonymous else "false"
    if plain_port:
        lines += [f"listener {plain_port} {LOOPBACK}", f"allow_anonymous {anon}"]
        if plain_passwd is not None:
            lines.append(f"password_file {plain_passwd}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
    tls = [f"cafile {ca_file}", f"certfile {cert_file}", f"keyfile {key_file}"]
    if tls_port:
        lines += [f"listener {tls_port} {LOOPBACK}", *tls, f"allow_anonymous {anon}"]
        lines += ["require_certificate false", f"password_file {passwd}"]
    if mtls_port:
        lines += [f"listener {mtls_port} {LOOPBACK}", *tls, "allow_anonymous false"]
        lines += ["require_certificate true", "use_identity_as_username true"]
    if include_dir is not None:
        lines.append(f"include_dir {include_dir}")  # last, as Mosquitto's manual advises
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    ports = [p for p in (plain_port, tls_port, mtls_port) if p]
    service = Service(
        name="mosquitto",
        command=[binary, "-c", str(conf)],
        log=workdir / "mosquitto.log",
        ready=lambda: all(port_open(p) for p in ports),
        port=ports[0],
        timeout_s=30,
    )
    service.start()
    return service


# ----------------------------------------------------------------------------- InfluxDB


def start_influxdb(workdir: Path, *, auth: bool, http_port: int | None = None) -> Service:
    """influxd 1.x with its own data directories; ``auth`` turns on ``auth-enabled``."""
    if shutil.which("influxd") is None:
        raise ServiceError("influxd is not installed (deploy/local/stack install)")
    http_port = http_port or free_port()
    rpc_port = free_port()
    for sub in ("meta", "data", "wal"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "{LOOPBACK}:{rpc_port}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "{LOOPBACK}:{http_port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
"""
    )

    def ping() -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/ping", timeout=1) as r:
                return bool(r.status == 204)
        except (urllib.error.URLError, OSError):
            return False

    service = Service(
        name="influxdb",
        command=["influxd", "-config", str(conf)],
        log=workdir / "influxdb.log",
        ready=ping,
        port=http_port,
        timeout_s=60,
    )
    service.start()
    return service


# ----------------------------------------------------------------------------- Kafka


@dataclass(frozen=True)
class KafkaUser:
    name: str
    password: str


def _java_prop(value: str) -> str:
    """Escape a value for a Java .properties file (PEM text on one line)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def start_kafka(
    workdir: Path,
    *,
    plain_port: int | None = None,
    sasl_port: int | None = None,
    server_key: Path | None = None,
    server_cert_chain: Path | None = None,
    ca_file: Path | None = None,
    plain_users: tuple[KafkaUser, ...] = (),
    scram_users: tuple[KafkaUser, ...] = (),
    heap: str = "-Xms96m -Xmx384m",
    start: bool = True,
) -> Service:
    """A single-node KRaft broker+controller.

    Listeners: ``INTERNAL`` (PLAINTEXT, inter-broker; also the ``plain_port`` when given) and,
    when ``sasl_port`` is given, ``SASL_SSL`` with PLAIN (``plain_users``) and SCRAM-SHA-256
    (``scram_users``, created at format time with ``--add-scram``).
    """
    lib = kafka_lib()
    if lib is None:
        raise ServiceError("Kafka jars or java missing: run deploy/local/stack install")
    workdir.mkdir(parents=True, exist_ok=True)
    internal = plain_port or free_port()
    controller = free_port()
    listeners = [f"INTERNAL://{LOOPBACK}:{internal}"]
    protocols = ["INTERNAL:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    extra: list[str] = []
    if sasl_port:
        assert server_key and server_cert_chain and ca_file, "SASL_SSL needs the server PKI"
        listeners.append(f"SASL_SSL://{LOOPBACK}:{sasl_port}")
        protocols.append("SASL_SSL:SASL_SSL")
        plain_jaas = " ".join(f'user_{u.name}="{u.password}"' for u in plain_users)
        extra += [
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_ssl.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_jaas};",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.ssl.keystore.type=PEM",
            "listener.name.sasl_ssl.ssl.keystore.key="
            + _java_prop(server_key.read_text(encoding="ascii")),
            "listener.name.sasl_ssl.ssl.keystore.certificate.chain="
            + _java_prop(server_cert_chain.read_text(encoding="ascii")),
            "listener.name.sasl_ssl.ssl.truststore.type=PEM",
            f"listener.name.sasl_ssl.ssl.truststore.location={ca_file}",
            "listener.name.sasl_ssl.ssl.client.auth=none",
        ]
    listeners.append(f"CONTROLLER://{LOOPBACK}:{controller}")
    advertised = [x for x in listeners if not x.startswith("CONTROLLER")]
    props = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{LOOPBACK}:{controller}",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(advertised)}",
        f"listener.security.protocol.map={','.join(protocols)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=INTERNAL",
        f"log.dirs={workdir}/data",
        "num.partitions=3",
        "auto.create.topics.enable=true",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=3",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "num.network.threads=2",
        "num.io.threads=2",
        *extra,
    ]
    conf = workdir / "server.properties"
    conf.write_text("\n".join(props) + "\n")
    conf.chmod(0o600)  # holds the server's private key
    log4j = workdir / "log4j2.properties"
    log4j.write_text(
        "status = warn\nappender.out.type = Console\nappender.out.name = OUT\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = WARN\nrootLogger.appenderRef.out.ref = OUT\n"
        "logger.server.name = kafka.server.KafkaRaftServer\nlogger.server.level = INFO\n"
    )
    log = workdir / "kafka.log"
    classpath = f"{lib}/*"
    jvm_log = f"-Dlog4j2.configurationFile={log4j}"
    fmt = [
        "java", "-cp", classpath, jvm_log, "kafka.tools.StorageTool", "format",
        "-t", uuid.uuid4().hex[:22], "-c", str(conf),
    ]  # fmt: skip
    for user in scram_users:
        fmt += ["--add-scram", f"SCRAM-SHA-256=[name={user.name},password={user.password}]"]
    with log.open("ab") as out:
        result = subprocess.run(fmt, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise ServiceError(f"kafka StorageTool format failed:\n{log.read_text()[-3000:]}")

    def started() -> bool:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return False
        marker = text.rfind("==== start")
        return "Kafka Server started" in text[marker:] and port_open(internal)

    service = Service(
        name="kafka",
        command=[
            "java",
            *heap.split(),
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dlog4j2.shutdownHookEnabled=false",
            jvm_log,
            "-cp",
            classpath,
            "kafka.Kafka",
            str(conf),
        ],
        log=log,
        ready=started,
        port=sasl_port or internal,
        timeout_s=120,
    )
    if start:
        service.start()
    return service


def tls_client_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca_file`` and checks the host name."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = True
    return ctx
