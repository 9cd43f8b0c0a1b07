"""Small MQTT helpers for tests: a publisher and an ack collector on the test broker."""

from __future__ import annotations

import threading
import uuid
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def client(url: str, name: str, *, max_inflight: int = 20) -> mqtt.Client:
    parts = urlsplit(url)
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    c.max_inflight_messages_set(max_inflight)
    c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    c.loop_start()
    return c


class Collector:
    """Subscribes to a topic filter and keeps every payload received."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.payloads: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self._client = client(url, "collector")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.subscribe(topic_filter, qos=1)
        subscribed.wait(10)

    def _on_message(self, c: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.payloads.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.payloads) >= count, timeout)
            return list(self.payloads)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
