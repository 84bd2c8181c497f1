"""A virtual alarm panel: the reference panel's wire behaviour on paho-mqtt, asyncio-native.

A panel is one paho client driven by the loop (a watched socket and a keepalive timer)
plus loop timers for its heartbeat and its event repeats, so that ten thousand of them
fit in one process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any

from devices.pending_event import EventInFlight
from devices.protocol import (
    MAX_PAYLOAD_BYTES,
    AlarmKind,
    EventType,
    Heartbeat,
    PanelStatus,
    ProtocolError,
    Receipt,
    ReceiptStatus,
    UnitAlert,
    encode,
    hub_time_of,
    parse_model,
    repeat_delay_s,
    resend_fields,
)
from devices.signing import sign_event
from devices.topics import (
    event_topic,
    heartbeat_topic,
    receipt_topic,
    status_topic,
    unit_alert_topic,
)
from devices.unit_alarms import AlertChange, UnitAlarms
from simulator.paho_asyncio import AsyncPahoClient, Message, MqttError

logger = logging.getLogger(__name__)

STOP_PUBLISH_TIMEOUT_S = 2.0
_REMEMBERED_ALERTS = 256
_MAX_CLOCK_RESENDS = 3


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PendingEvent(EventInFlight):
    """One event, repeated byte for byte until its receipt comes; `await` it for the receipt."""

    __slots__ = ("_future", "repeat_timer")

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.repeat_timer: asyncio.TimerHandle | None = None  # the panel's next copy
        self._future: asyncio.Future[Receipt | None] = asyncio.get_running_loop().create_future()

    @property
    def done(self) -> bool:
        """True once a receipt came or the panel gave up."""
        return self._future.done()

    def __await__(self) -> Generator[Any, None, Receipt | None]:
        return asyncio.shield(self._future).__await__()

    async def wait(self, timeout: float | None = None) -> Receipt | None:
        """The receipt; None on timeout or when the panel gave up or stopped."""
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._future)
        except TimeoutError:
            return None

    def rearm(self, payload: dict[str, Any]) -> None:
        """Carry a new payload (a new seq) from the next copy on."""
        self.arm(payload)

    def finish(self, receipt: Receipt | None) -> None:
        """End the event: with its receipt, or None when the panel gave up or stopped."""
        if self.repeat_timer is not None:
            self.repeat_timer.cancel()
            self.repeat_timer = None
        self.receipt = receipt
        self.receipt_at = time.monotonic() if receipt is not None else None
        self.gave_up = receipt is None
        if not self._future.done():
            self._future.set_result(receipt)


class VirtualPanel:
    """One household's panel: repeats events until receipted, sounds for neighbours' alarms."""

    def __init__(
        self,
        panel_id: str,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        household_id: str | None = None,
        unit_id: str | None = None,
        heartbeat_s: float = 30.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        max_attempts: int | None = None,
        keepalive_s: int = 60,
        hmac_key: bytes | None = None,
        battery: int | None = None,
        fw: str | None = "tenhub-virtual-1",
        on_alert: Callable[[AlertChange], None] | None = None,
        on_receipt: Callable[[PendingEvent, Receipt], None] | None = None,
    ) -> None:
        self.panel_id = panel_id
        self.household_id = household_id
        self.unit_id = unit_id
        self.heartbeat_s = heartbeat_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.battery = battery
        self.fw = fw
        self.on_alert = on_alert
        self.on_receipt = on_receipt
        self.alarms_raised = 0
        self.receipts = 0
        self.clock_offset_ms = 0  # learnt from the hub when our clock drifts
        # When each neighbour's alarm first sounded here (time.monotonic()), newest last.
        self.alerted_at: OrderedDict[str, float] = OrderedDict()
        self._hmac_key = hmac_key
        # A virtual panel keeps nothing on disk, so it cannot remember the seqs it used
        # before a restart; the hub deduplicates on (panel, seq) and would answer a new
        # alarm on a reused seq as a duplicate of an old one. Epoch ms at creation is above
        # every seq an earlier run used, unless that run sent over one event per ms.
        self._next_seq = _now_ms()
        self._pending: dict[int, PendingEvent] = {}
        self._alarms = UnitAlarms(household_id)
        self._phase = "new"  # new → running → stopped
        self._heartbeat: asyncio.TimerHandle | None = None
        self._receipt_topic = receipt_topic(panel_id)
        self._alert_topic = unit_alert_topic(unit_id) if unit_id is not None else None
        self._client = AsyncPahoClient(
            panel_id,
            host,
            port,
            username=username,
            password=password,
            clean_session=False,  # the broker keeps receipts and alerts for us while away
            keepalive=keepalive_s,
            will=(status_topic(panel_id), encode(PanelStatus(state="offline")), 1, True),
            on_message=self._on_message,
            on_reconnect=self._on_reconnect,
            reconnect_initial_s=retry_initial_s,
            reconnect_max_s=retry_max_s,
        )

    # -- public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def reconnects(self) -> int:
        return self._client.reconnects

    @property
    def sounding(self) -> dict[str, UnitAlert]:
        """Neighbours' alarms sounding now: alarm_id → the last alert about it."""
        return dict(self._alarms.sounding)

    @property
    def buzzer_on(self) -> bool:
        return bool(self._alarms.sounding)

    @property
    def pending(self) -> list[PendingEvent]:
        """Events still waiting for a receipt, by seq."""
        return [self._pending[seq] for seq in sorted(self._pending)]

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe, publish online status; raises MqttError, OSError or TimeoutError."""
        if self._phase != "new":
            raise RuntimeError(f"panel {self.panel_id} was already started")
        self._phase = "running"
        try:
            async with asyncio.timeout(timeout):
                await self._client.connect()
                subscriptions = [(self._receipt_topic, 1)]
                if self._alert_topic is not None:
                    subscriptions.append((self._alert_topic, 1))
                await self._client.subscribe(subscriptions)
        except BaseException:
            self._phase = "stopped"
            await self._client.abort()
            raise
        self._publish_online()
        # A random first beat: ten thousand panels started together must not beat together.
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.call_later(random.uniform(0, self.heartbeat_s), self._beat)

    async def stop(self) -> None:
        """Publish the retained offline status, DISCONNECT; pending events end without receipt."""
        if not self._halt():
            return
        if self._client.connected:
            offline = encode(PanelStatus(state="offline"))
            try:
                await self._client.publish(
                    status_topic(self.panel_id), offline, 1, True,
                    wait=True, timeout=STOP_PUBLISH_TIMEOUT_S,
                )  # fmt: skip
            except (MqttError, TimeoutError):
                self._log(logging.WARNING, "offline status not acknowledged")
        await self._client.disconnect()
        self._log(logging.DEBUG, "panel stopped", graceful=True)

    async def power_off(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the Last Will."""
        if self._halt():
            await self._client.abort()
            self._log(logging.DEBUG, "panel stopped", graceful=False)

    def raise_alarm(self, kind: AlarmKind | str) -> PendingEvent:
        """Raise an alarm of this household; ValueError for an unknown kind."""
        event = self.send_event(EventType.ALARM, kind=AlarmKind(kind).value)
        self.alarms_raised += 1
        return event

    def cancel(self, alarm_id: str, pin: str) -> PendingEvent:
        """Cancel this household's alarm (false alarm) with the household PIN."""
        return self.send_event(EventType.CANCEL, alarm_id=alarm_id, pin=pin)

    def ack(self, alarm_id: str) -> PendingEvent:
        """Tell the hub this household is coming to a neighbour's alarm."""
        return self.send_event(EventType.ACK, alarm_id=alarm_id)

    def send_event(self, type: EventType | str, **fields: Any) -> PendingEvent:
        """Send an event under a new seq until its receipt comes; signed if the panel has a key."""
        clash = {"type", "seq", "ts", "sig"} & fields.keys()
        if clash:
            raise ValueError(f"event fields {sorted(clash)} are set by the panel")
        if self._phase != "running":
            raise RuntimeError(f"panel {self.panel_id} is not running")
        type_name = type.value if isinstance(type, EventType) else str(type)
        event = PendingEvent(self._build(type_name, fields))
        self._pending[event.seq] = event
        self._log(logging.DEBUG, "panel event", type=type_name, seq=event.seq)
        self._send(event)
        return event

    def _build(self, type_name: str, fields: dict[str, Any]) -> dict[str, Any]:
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        payload = {"type": type_name, "seq": seq, "ts": _now_ms() + self.clock_offset_ms, **fields}
        return sign_event(payload, self._hmac_key) if self._hmac_key is not None else payload

    def _send_again_with_the_hubs_time(self, event: PendingEvent, receipt: Receipt) -> bool:
        """The hub refused our clock: learn its time, send the same event under a new seq."""
        hub_time = hub_time_of(receipt)
        if hub_time is None or event.resent >= _MAX_CLOCK_RESENDS:
            return False
        self.clock_offset_ms = hub_time - _now_ms()
        fields = resend_fields(event.payload)
        event.rearm(self._build(event.type, fields))
        event.resent += 1
        self._pending[event.seq] = event
        self._log(logging.WARNING, "clock corrected from the hub; event sent again",
                  seq=event.seq, offset_ms=self.clock_offset_ms)  # fmt: skip
        self._send(event)
        return True

    # -- sending ------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        return repeat_delay_s(attempts, self.retry_initial_s, self.retry_max_s)

    def _send(self, event: PendingEvent) -> None:
        """Publish one copy now and arm the next; offline, the reconnect sends it."""
        if self._pending.get(event.seq) is not event or not self._client.connected:
            return
        if event.repeat_timer is not None:
            event.repeat_timer.cancel()
        loop = asyncio.get_running_loop()
        if self.max_attempts is None or event.attempts < self.max_attempts:
            event.attempts += 1
            if event.first_sent_at is None:
                event.first_sent_at = time.monotonic()
            self._client.publish_nowait(event_topic(self.panel_id), event.body, qos=1)
        # At max_attempts the timer still runs once more: giving up waits for a last receipt.
        event.repeat_timer = loop.call_later(self._backoff(event.attempts), self._retry, event)

    def _retry(self, event: PendingEvent) -> None:
        event.repeat_timer = None
        if self._pending.get(event.seq) is not event:
            return
        if self.max_attempts is not None and event.attempts >= self.max_attempts:
            del self._pending[event.seq]
            self._log(logging.ERROR, "event gave up without receipt", seq=event.seq)
            event.finish(None)
            return
        self._send(event)

    def _publish_online(self) -> None:
        online = PanelStatus(state="online", ts=_now_ms(), battery=self.battery, fw=self.fw)
        self._client.publish_nowait(status_topic(self.panel_id), encode(online), 1, True)

    def _beat(self) -> None:
        if self._phase != "running":
            return
        if self._client.connected:
            beat = encode(Heartbeat(ts=_now_ms()))
            self._client.publish_nowait(heartbeat_topic(self.panel_id), beat, qos=0)
        self._heartbeat = asyncio.get_running_loop().call_later(self.heartbeat_s, self._beat)

    def _on_reconnect(self, session_present: bool) -> None:
        self._publish_online()
        self._log(logging.INFO, "panel reconnected", session=session_present)
        # The subscriptions went out first, so the receipts of these copies find them.
        for seq in sorted(self._pending):
            self._send(self._pending[seq])

    def _halt(self) -> bool:
        """Stop timers and end pending events; False when already stopped."""
        if self._phase == "stopped":
            return False
        self._phase = "stopped"
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        pending, self._pending = self._pending, {}
        for event in pending.values():
            event.finish(None)
        return True

    # -- receipts and alerts --------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        topic = message.topic  # paho decodes it on each read
        if topic == self._receipt_topic:
            self._handle_receipt(message.payload)
        elif topic == self._alert_topic:
            self._handle_alert(message.payload)

    def _handle_receipt(self, payload: bytes) -> None:
        try:
            receipt = parse_model(Receipt, payload, MAX_PAYLOAD_BYTES)
        except ProtocolError as exc:
            self._log(logging.WARNING, "unreadable receipt ignored", error=str(exc))
            return
        event = self._pending.pop(receipt.seq, None)
        if event is None:
            return  # a receipt for a repeat that crossed the first receipt
        if receipt.status == ReceiptStatus.REJECTED and self._send_again_with_the_hubs_time(
            event, receipt
        ):
            return
        self.receipts += 1
        own_alarm = (
            event.type == EventType.ALARM
            and receipt.status in (ReceiptStatus.ACCEPTED, ReceiptStatus.DUPLICATE)
            and receipt.alarm_id is not None
        )
        silenced = self._alarms.mark_own(receipt.alarm_id) if own_alarm else None  # type: ignore[arg-type]
        event.finish(receipt)
        if receipt.status == ReceiptStatus.REJECTED:
            self._log(logging.WARNING, "event rejected", seq=receipt.seq, error=receipt.error)
        if silenced is not None:
            self._notify_alert(AlertChange(silenced, started=False, stopped=True))
        if self.on_receipt is not None:
            try:
                self.on_receipt(event, receipt)
            except Exception:
                self._log(logging.ERROR, "on_receipt callback failed", True)

    def _handle_alert(self, payload: bytes) -> None:
        try:
            alert = parse_model(UnitAlert, payload, MAX_PAYLOAD_BYTES)
        except ProtocolError as exc:
            self._log(logging.WARNING, "unreadable unit alert ignored", error=str(exc))
            return
        change = self._alarms.update(alert)
        if change is None:
            return
        if change.started and alert.alarm_id not in self.alerted_at:
            self.alerted_at[alert.alarm_id] = time.monotonic()
            if len(self.alerted_at) > _REMEMBERED_ALERTS:
                self.alerted_at.popitem(last=False)
        self._notify_alert(change)

    def _notify_alert(self, change: AlertChange) -> None:
        if self.on_alert is None:
            return
        try:
            self.on_alert(change)
        except Exception:
            self._log(logging.ERROR, "on_alert callback failed", True)

    def _log(self, level: int, message: str, exc_info: bool = False, **fields: Any) -> None:
        logger.log(level, message, exc_info=exc_info, extra={"panel_id": self.panel_id, **fields})
