"""MQTT adapter (paho-mqtt 2.x, callback API VERSION2) implementing ``edge.ports.MessageSource``.

* QoS 1 with a persistent session and a stable client id: MQTT 5 ``clean_start=False`` with a
  session-expiry interval, or MQTT 3.1.1 ``clean_session=False``. The broker keeps our queue
  while the agent is away (Mosquitto bounds it with ``max_queued_messages``: raise it on
  gateways that may be offline for long).
* Manual acknowledgement: a message is PUBACKed only when the agent calls :meth:`ack`, after
  it journaled the message to disk, so a crash never loses an acknowledged message.
* Reconnect with exponential backoff (paho's ``reconnect_delay_set``), resubscribe on every
  connect; :attr:`disconnected_for_s` feeds the agent's watchdog.
* A retained status topic (``mqtt.status_topic``): "online" on every connect, "offline" on a
  clean stop and, as the broker's last will, when the agent dies or loses its connection.
* TLS and username/password; shared subscriptions (``$share/<group>/<filter>``) for agents
  that split one stream.

paho's network thread only appends messages to a bounded buffer (a deque: no lock per
message); the agent thread polls it in batches.

Flow control (MQTT 5): the CONNECT carries a Receive Maximum of ``mqtt.receive_maximum``
(capped at ``queue_max``, see :attr:`MqttConfig.flow_window`). A message counts against it
until the agent acknowledges it (after journaling), so the broker never has more than that
many in flight to us: the buffer cannot overflow and a burst waits in the broker's queue for
our session (Mosquitto: up to ``max_queued_messages`` *above* the in-flight ones). Under
MQTT 3.1.1 the broker's ``max_inflight_messages`` applies instead and a full buffer blocks the
network thread (TCP back-pressure), then drops unacknowledged (redelivered on reconnect).
:attr:`depth`, :attr:`oldest_received_ms` and :meth:`take_peak` feed the intake-lag metrics.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge.config import MqttConfig
from edge.errors import ConfigError
from edge.ports import Clock, InMessage

__all__ = ["MqttSource"]

log = logging.getLogger(__name__)
_ENQUEUE_WAIT_S = 5.0
_STATUS_WAIT_S = 2.0
ONLINE = b"online"
OFFLINE = b"offline"


def send_pubacks(client: Any, mids: Sequence[int]) -> None:
    """PUBACK each packet id through paho's public manual-ack API (``client.ack(mid, qos)``)."""
    for mid in mids:
        client.ack(mid, 1)


class MqttSource:
    """Subscribes to the sensor topics (and optional announcement topic) on one broker."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        filters: Sequence[str],
        clock: Clock,
        extra_filters: Sequence[str] = (),
        *,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._client_id = client_id
        group = config.shared_group
        self._filters = [f"$share/{group}/{f}" if group else f for f in filters]
        self._filters += list(extra_filters)  # never shared: every agent must see these
        self._clock = clock
        self._buffer: deque[InMessage] = deque()
        self._max = config.queue_max
        self.flow_window = config.flow_window
        self._peak = 0  # largest buffer depth since the last take_peak()
        self._ready = threading.Event()  # set when the buffer may hold messages
        self._space = threading.Event()  # set when the buffer may have room
        self._generation = 0
        self._connected = False
        self._subscribed = False
        self._down_since: float | None = time.monotonic()
        self._lock = threading.Lock()
        self._client: Any = None
        self.dropped = 0
        self.reconnects = 0  # connections made after the first one
        self._on_reconnect = on_reconnect
        self.status_topic = config.status_topic.replace("{client_id}", client_id)

    # -- MessageSource ---------------------------------------------------------------------

    def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = self._config
        v5 = c.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(c.reconnect_min_s, c.reconnect_max_s)
        if self.status_topic:
            client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        password = c.password
        if c.password_file:
            try:
                password = Path(c.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file {c.password_file!r}: {exc}") from exc
        if c.username:
            client.username_pw_set(c.username, password or None)
        if c.tls.enabled:
            client.tls_set(
                ca_certs=c.tls.ca_file or None,
                certfile=c.tls.cert_file or None,
                keyfile=c.tls.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(c.tls.insecure)
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = c.session_expiry_s
            props.ReceiveMaximum = self.flow_window
            client.connect_async(
                c.host, c.port, keepalive=c.keepalive_s, clean_start=False, properties=props
            )
        else:
            client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        self._client = client
        client.loop_start()
        log.info(
            "mqtt.starting",
            extra={
                "host": c.host,
                "port": c.port,
                "client_id": self._client_id,
                "protocol": c.protocol,
                "flow_window": self.flow_window,
            },
        )

    def poll(self, max_messages: int, timeout_s: float) -> list[InMessage]:
        buf = self._buffer
        if not buf:
            self._ready.clear()
            if not buf and timeout_s > 0:  # checked again: an append may have come in between
                self._ready.wait(timeout_s)
        n = min(max_messages, len(buf))
        popleft = buf.popleft
        out = [popleft() for _ in range(n)]
        if n and not self._space.is_set():
            self._space.set()
        return out

    def ack(self, messages: Sequence[InMessage]) -> None:
        client = self._client
        if client is None:
            return
        with self._lock:
            generation = self._generation
        pubacks: list[int] = []
        for m in messages:
            token = m.ack_token
            if not isinstance(token, tuple):
                continue
            gen, mid, qos = token
            # After a reconnect the broker redelivers unacknowledged messages itself; an
            # ack for the old connection's packet id could hit another message: skip it.
            if qos <= 0 or gen != generation:
                continue
            if qos == 1:
                pubacks.append(mid)
            else:
                client.ack(mid, qos)
        if pubacks:
            send_pubacks(client, pubacks)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def depth(self) -> int:
        """Messages received and not yet polled by the agent."""
        return len(self._buffer)

    @property
    def oldest_received_ms(self) -> int | None:
        """Arrival time of the oldest message not yet polled (None when the buffer is empty)."""
        try:
            return self._buffer[0].received_ms
        except IndexError:
            return None

    def take_peak(self) -> int:
        """The largest buffer depth since the previous call (at least the current depth)."""
        peak, self._peak = self._peak, len(self._buffer)
        return max(peak, self._peak)

    @property
    def subscribed(self) -> bool:
        """True once the broker granted the subscriptions of the current connection."""
        return self._connected and self._subscribed

    @property
    def disconnected_for_s(self) -> float:
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self.status_topic and self._connected:
                self._publish_offline(client)
            client.disconnect()
        finally:
            client.loop_stop()
        log.info("mqtt.stopped", extra={"dropped": self.dropped})

    def _publish_offline(self, client: Any) -> None:
        """Retained "offline" before a clean disconnect (which, by design, sends no will)."""
        try:
            info = client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
            info.wait_for_publish(_STATUS_WAIT_S)
        except (RuntimeError, ValueError) as exc:
            log.warning("mqtt.status_not_sent", extra={"error": str(exc)})

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.warning("mqtt.connect_refused", extra={"reason": str(reason_code)})
            return
        with self._lock:
            self._generation += 1
            again = self._generation > 1
        if again:
            self.reconnects += 1
            if self._on_reconnect is not None:
                self._on_reconnect()
        self._connected = True
        self._subscribed = False
        self._down_since = None
        qos = self._config.qos
        if self._filters:
            client.subscribe([(f, qos) for f in self._filters])
        if self.status_topic:
            client.publish(self.status_topic, ONLINE, qos=1, retain=True)
        log.info(
            "mqtt.connected",
            extra={
                "session_present": bool(getattr(flags, "session_present", False)),
                "filters": ",".join(self._filters),
            },
        )

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("mqtt.subscribe_refused", extra={"reasons": ",".join(failed)})
            return
        self._subscribed = True
        log.info("mqtt.subscribed", extra={"filters": len(self._filters)})

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._connected:
            self._down_since = time.monotonic()
        self._connected = False
        log.warning("mqtt.disconnected", extra={"reason": str(reason_code)})

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        token = (self._generation, msg.mid, msg.qos)  # an int read: no lock needed
        item = InMessage(msg.topic, bytes(msg.payload), self._clock.now_ms(), token)
        buf = self._buffer
        if len(buf) >= self._max and not self._wait_for_room():
            # Not acknowledged: a QoS 1 message comes back after the next reconnect.
            self.dropped += 1
            log.warning("mqtt.queue_full", extra={"topic": msg.topic, "dropped": self.dropped})
            return
        buf.append(item)
        self._peak = max(self._peak, len(buf))
        if not self._ready.is_set():
            self._ready.set()

    def _wait_for_room(self) -> bool:
        """Block the network thread until the agent took messages (at most a few seconds)."""
        deadline = time.monotonic() + _ENQUEUE_WAIT_S
        while len(self._buffer) >= self._max:
            self._space.clear()
            if len(self._buffer) < self._max:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not self._space.wait(left):
                return len(self._buffer) < self._max
        return True
