"""The model registry: versions of one model under ``<root>/<name>/``, which one runs, and why.

Layout (agents read it through :func:`edge.bundle.current_version_dir`)::

    <root>/<name>/<version>/{model.onnx, manifest.json}   complete, verified bundles
    <root>/<name>/CURRENT                                 the version agents run
    <root>/<name>/registry.json                           append-only log of promotions/rollbacks
    <root>/<name>/.rejected/<version>/                    challengers that lost (hidden from agents)

Rules:

- every write is atomic (temporary file or directory, then rename) and done under an exclusive
  lock on ``<root>/<name>/.lock``, so two commands never interleave;
- a version is verified with :func:`edge.bundle.load_bundle` before it is published, promoted
  or rolled back to;
- the promotion log is a stack: ``promote`` pushes a version, ``rollback`` pops the current
  one, so the version before it runs again (repeat to go further back);
- signing: with a ``signing_key``, ``promote`` and ``rollback`` sign the version they make
  current (``signature.json``, :mod:`edge.signing`) unless that key already signed it, and
  write the signed pointer ``CURRENT.sig.json`` (:mod:`edge.pointer`, epoch = length of the
  change log) before ``CURRENT``, so a signed agent accepts a rollback. Without a signing key,
  a *signed registry* (``require_signed``, i.e. trusted keys configured, or a model whose
  pointer or current version is already signed) refuses to promote or roll back: signed
  agents would refuse the unsigned bundle.

Promotions and rollbacks can be announced (:class:`Announcer`), e.g. as a retained MQTT message
on ``gapwatch/models/<name>`` with ``{name, version, path, sha256}`` so agents reload at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge.bundle import CURRENT_FILE, load_bundle, read_manifest, set_current_version, version_dirs
from edge.errors import BundleError
from pipeline.errors import RegistryError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "LOG_FILE",
    "Announcement",
    "Announcer",
    "MqttAnnouncer",
    "Registry",
    "RegistryEvent",
    "VersionInfo",
    "announcer_from_url",
]

LOG_FILE = "registry.json"
REJECTED_DIR = ".rejected"
LOCK_FILE = ".lock"
POINTER_FILE = "CURRENT.sig.json"  # edge.pointer.POINTER_FILE
SIGNATURE_FILE = "signature.json"  # edge.signing.SIGNATURE_FILE


@dataclass(frozen=True)
class RegistryEvent:
    action: str  # "promote" or "rollback"
    version: str  # the version that runs after this event
    at: str  # RFC 3339 UTC
    reason: str = ""
    previous: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    created_at: str
    current: bool
    promoted: bool  # ever promoted


@dataclass(frozen=True)
class Announcement:
    name: str
    version: str
    path: str
    sha256: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


class Announcer(Protocol):
    def announce(self, announcement: Announcement) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Registry:
    """One model's versions under ``<root>/<name>/``."""

    def __init__(
        self,
        root: str | Path,
        name: str,
        clock: Callable[[], datetime] = _now,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        require_signed: bool = False,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.dir = self.root / name
        self._clock = clock
        self._key = signing_key
        self._require_signed = require_signed

    # ---------------------------------------------------------------- reading

    def events(self) -> list[RegistryEvent]:
        path = self.dir / LOG_FILE
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return [RegistryEvent(**e) for e in data["events"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path} is unreadable ({exc}); restore it from a backup") from exc

    def stack(self) -> list[str]:
        """Promoted versions, oldest first; the last one is current."""
        out: list[str] = []
        for e in self.events():
            if e.action == "promote":
                out.append(e.version)
            elif e.action == "rollback" and out:
                out.pop()
        return out

    def current(self) -> str | None:
        pointer = self.dir / CURRENT_FILE
        if not pointer.is_file():
            return None
        return pointer.read_text(encoding="utf-8").strip() or None

    def versions(self) -> list[VersionInfo]:
        current = self.current()
        promoted = {e.version for e in self.events() if e.action == "promote"}
        out = []
        for path in version_dirs(self.dir):
            try:
                created = read_manifest(path).created_at
            except BundleError:
                created = "?"
            out.append(
                VersionInfo(path.name, path, created, path.name == current, path.name in promoted)
            )
        return out

    def signed(self) -> bool:
        """Whether agents of this model verify signatures (so every promotion must be signed)."""
        if self._require_signed or (self.dir / POINTER_FILE).exists():
            return True
        current = self.current()
        return current is not None and (self.dir / current / SIGNATURE_FILE).exists()

    def check_signing(self, what: str = "promote") -> None:
        """Raise RegistryError when a promotion now would publish an unsigned bundle to agents
        that verify signatures (call it before expensive work, e.g. training)."""
        if self._key is None and self.signed():
            raise RegistryError(
                f"refusing to {what} unsigned: agents of {self.name!r} verify signatures "
                "(trusted keys are configured, or the model is already signed) and would refuse "
                "it; give the signing key with --signing-key or GAPWATCH_SIGNING_KEY"
            )

    # ---------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / LOCK_FILE).open("a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _verify(self, path: Path) -> str:
        """Fully load the bundle at ``path``; return its model sha256."""
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            raise RegistryError(f"refusing {path}: {exc}") from exc
        if bundle.manifest.name != self.name:
            raise RegistryError(
                f"{path} holds model {bundle.manifest.name!r}, not {self.name!r}; "
                f"publish it under --name {bundle.manifest.name}"
            )
        if bundle.manifest.version != path.name:
            raise RegistryError(
                f"{path} says version {bundle.manifest.version!r} but sits in {path.name!r}"
            )
        return bundle.manifest.model_sha256

    def _append(self, event: RegistryEvent) -> None:
        events = [*self.events(), event]
        body = {"name": self.name, "events": [asdict(e) for e in events]}
        _write_atomic(self.dir / LOG_FILE, json.dumps(body, indent=2) + "\n")

    def _copy_in(self, source: Path, dest_parent: Path) -> Path:
        dest = dest_parent / source.name
        if dest.exists():
            raise RegistryError(f"{dest} already exists; versions are immutable, pick a new one")
        dest_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=dest_parent))
        try:
            for item in source.iterdir():
                shutil.copy2(item, tmp / item.name)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def publish(self, bundle_dir: str | Path) -> Path:
        """Copy a verified bundle directory in as ``<name>/<version>/`` (not promoted)."""
        source = Path(bundle_dir)
        self._verify(source)
        with self._locked():
            dest = self._copy_in(source, self.dir)
            self._verify(dest)
        return dest

    def reject(self, bundle_dir: str | Path) -> Path:
        """Keep a losing challenger for inspection where agents never look."""
        with self._locked():
            return self._copy_in(Path(bundle_dir), self.dir / REJECTED_DIR)

    def promote(
        self, version: str, reason: str = "", evaluation: dict[str, Any] | None = None
    ) -> RegistryEvent:
        """Make ``version`` current and log it."""
        path = self.dir / version
        if not path.is_dir():
            known = [v.version for v in self.versions()]
            raise RegistryError(f"no version {version!r} of {self.name!r}; known: {known}")
        self._verify(path)
        with self._locked():
            previous = self.current()
            if previous == version:
                raise RegistryError(f"{self.name}/{version} is already current")
            event = RegistryEvent(
                "promote", version, self._stamp(), reason, previous, dict(evaluation or {})
            )
            self._sign_for_agents(event)
            set_current_version(self.dir, version)
            self._append(event)
        return event

    def rollback(self, reason: str = "") -> RegistryEvent:
        """Point CURRENT back at the version promoted before the current one."""
        with self._locked():
            stack = self.stack()
            if len(stack) < 2:
                raise RegistryError(
                    f"nothing to roll back to: {self.name!r} has "
                    f"{'one promoted version' if stack else 'no promoted version'}"
                )
            target = stack[-2]
            self._verify(self.dir / target)
            event = RegistryEvent("rollback", target, self._stamp(), reason, stack[-1])
            self._sign_for_agents(event)
            set_current_version(self.dir, target)
            self._append(event)
        return event

    def _sign_for_agents(self, event: RegistryEvent) -> None:
        """Sign the version ``event`` makes current and the pointer to it; see the module doc.

        Called under the lock, before CURRENT moves, so CURRENT never names an unsigned
        version in a signed registry.
        """
        path = self.dir / event.version
        self.check_signing(f"{event.action} {self.name}/{event.version}")
        if self._key is None:
            return
        from edge.pointer import Pointer, write_pointer
        from edge.signing import sign_bundle, verify_bundle

        try:
            try:
                verify_bundle(path, [self._key.public_key()])
            except BundleError:
                sign_bundle(path, self._key)
            sha = read_manifest(path).model_sha256
            epoch = len(self.events()) + 1
            pointer = Pointer(self.name, event.version, sha, epoch, event.action)
            write_pointer(self.dir, pointer, self._key)
        except BundleError as exc:
            raise RegistryError(f"cannot sign {path}: {exc}") from exc

    def announcement(self, version: str) -> Announcement:
        path = self.dir / version
        return Announcement(
            self.name, version, str(path.resolve()), read_manifest(path).model_sha256
        )

    def _stamp(self) -> str:
        return self._clock().astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class MqttAnnouncer:
    """Retained QoS 1 message on ``topic`` (``{name}`` is filled in); waits for the broker."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic: str = "gapwatch/models/{name}",
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.topic = host, port, topic
        self._username, self._password, self._timeout = username, password, timeout_s

    def announce(self, announcement: Announcement) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="")
        if self._username:
            client.username_pw_set(self._username, self._password)
        topic = self.topic.format(name=announcement.name)
        try:
            client.connect(self.host, self.port, keepalive=30)
            client.loop_start()
            info = client.publish(topic, announcement.encode(), qos=1, retain=True)
            info.wait_for_publish(timeout=self._timeout)
            if not info.is_published():
                raise RegistryError(f"MQTT broker {self.host}:{self.port} did not ack {topic}")
        except (OSError, ValueError, RuntimeError) as exc:
            raise RegistryError(
                f"cannot announce on mqtt://{self.host}:{self.port}/{topic}: {exc}"
            ) from exc
        finally:
            client.disconnect()
            client.loop_stop()


def announcer_from_url(url: str) -> MqttAnnouncer:
    """``mqtt://[user:password@]host[:port][/topic/{name}]`` → :class:`MqttAnnouncer`."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise RegistryError(f"announce URL {url!r} must look like mqtt://host:1883")
    topic = unquote(parts.path.lstrip("/")) or "gapwatch/models/{name}"
    return MqttAnnouncer(
        parts.hostname,
        parts.port or 1883,
        topic=topic,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )
