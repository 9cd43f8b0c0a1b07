"""The MQTT side of ingest: paho-mqtt 2.x with manual acknowledgements.

paho-mqtt, not aiomqtt, because ingest must send each PUBACK only after the database COMMIT:
paho's `manual_ack=True` holds the PUBACK until `ack(mid)`, and `receive_maximum` (MQTT 5)
then makes the broker stop sending once that many messages are unacknowledged, so a database
outage turns into back-pressure at the broker instead of memory growth here.

A worker's session outlives its process (that is what keeps messages through a restart). On a
shared subscription the broker also queues a share of new messages for an offline member, so a
worker removed for good must end its session (`end_session`), or its share waits for it.

A message id is only meaningful on the connection that delivered it: after a reconnect the
broker redelivers everything unacknowledged, so acks for the old connection are dropped (the
redelivered copies are stored idempotently and acked then).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from contracts.topics import INGEST_SUBSCRIPTIONS, ack_topic, shared_subscription
from contracts.wire import Ack, encode

log = structlog.get_logger("meterward.ingest.consumer")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue through a week-long outage


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int  # which connection delivered it
    received_at: float  # time.monotonic()


class Consumer:
    """Subscribes, hands messages to a queue, acks on request."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        receive_maximum: int = 1000,
        mqtt5: bool = True,
        shared: bool = True,
        share_group: str = "ingest",
        extra_topics: tuple[str, ...] = (),
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.mqtt5 = mqtt5
        self.shared = shared and mqtt5  # shared subscriptions are an MQTT 5 feature
        self.share_group = share_group
        self.extra_topics = extra_topics  # topic filters of self-publishing meters
        self.receive_maximum = receive_maximum
        self.messages: queue.Queue[Incoming] = queue.Queue()
        self.generation = 0
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self._lock = threading.Lock()
        protocol = MQTTProtocolVersion.MQTTv5 if mqtt5 else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if mqtt5 else False,
            manual_ack=True,
        )
        if parts.username:
            self._client.username_pw_set(parts.username, parts.password)
        if parts.scheme == "mqtts":
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Outgoing acks are QoS 1 too; bound what may be in flight to the broker.
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect (retrying in the background until the broker answers) and start the loop."""
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
            properties.ReceiveMaximum = self.receive_maximum
            self._client.connect_async(
                self.host, self.port, keepalive=30, clean_start=False, properties=properties
            )
        else:
            self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect. `end_session` also asks the broker to forget the session (MQTT 5)."""
        properties = None
        if end_session and self.mqtt5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        self._client.disconnect(properties=properties)
        self._client.loop_stop()

    def ack(self, message: Incoming) -> bool:
        """PUBACK one message, if the connection that delivered it is still the current one."""
        with self._lock:
            if message.generation != self.generation or not self.connected.is_set():
                return False
            return self._client.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_ack(self, gateway_code: str, ack: Ack) -> None:
        """The application ack: after COMMIT, QoS 1 to the gateway's ack topic."""
        self._client.publish(ack_topic(gateway_code), encode(ack), qos=1)

    def _subscriptions(self) -> list[str]:
        topics = [*INGEST_SUBSCRIPTIONS, *self.extra_topics]
        if self.shared:
            return [shared_subscription(t, self.share_group) for t in topics]
        return topics

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("mqtt connect refused", reason=str(reason_code))
            return
        with self._lock:
            self.generation += 1
            self.session_present = bool(flags.session_present)
        options = SubscribeOptions(qos=1) if self.mqtt5 else None
        for topic in self._subscriptions():
            if options is not None:
                client.subscribe(topic, options=options)
            else:
                client.subscribe(topic, qos=1)
        self.connected.set()
        log.info(
            "mqtt connected",
            broker=f"{self.host}:{self.port}",
            session_present=self.session_present,
            generation=self.generation,
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        log.warning("mqtt disconnected", reason=str(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Incoming(
                topic=message.topic,
                payload=bytes(message.payload),
                mid=message.mid,
                qos=message.qos,
                generation=self.generation,
                received_at=time.monotonic(),
            )
        )
