"""A plain MQTT client for tests: publish anything on any topic, collect what comes back."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt


class MqttProbe:
    """Subscribes to topic filters and records every message, JSON-decoded when it can be."""

    def __init__(self, host: str, port: int, name: str, subscriptions: list[str]) -> None:
        self.messages: list[tuple[str, Any]] = []
        self._raw: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.client.username_pw_set(name)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if subscriptions:
            self.client.subscribe([(s, 1) for s in subscriptions])
            if not self._subscribed.wait(5):
                raise TimeoutError("probe did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except ValueError:
            body = msg.payload
        with self._cond:
            self.messages.append((msg.topic, body))
            self._raw.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def raw_messages(self) -> list[tuple[str, bytes]]:
        """Every message so far as (topic, payload bytes), in arrival order."""
        with self._cond:
            return list(self._raw)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def wait_for(self, topic: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """The first `count` payloads seen on topic; fewer if the timeout passes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [body for t, body in self.messages if t == topic]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found[:count]
                self._cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
