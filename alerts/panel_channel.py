"""The `panel` channel: a unit alert on MQTT, so every panel of the unit sounds or stops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from alerts.channel import OutboxMessage, RetryableError
from devices.topics import unit_alert_topic

PublishFn = Callable[[str, bytes, int], Awaitable[None]]


class PanelChannel:
    """Publishes a queued unit alert (QoS 1) to its unit's alert topic."""

    name = "panel"
    idempotent = True
    remote = False

    def __init__(self, publish: PublishFn) -> None:
        self._publish = publish

    async def send(self, message: OutboxMessage) -> str | None:
        try:
            await self._publish(unit_alert_topic(message.recipient), message.payload.encode(), 1)
        except Exception as exc:  # broker away: the alert waits in the outbox
            raise RetryableError(str(exc) or type(exc).__name__) from exc
        return None
