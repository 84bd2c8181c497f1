"""The reference alarm panel: what panel firmware does on the wire, on a threaded paho client."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from devices.panel_state import PanelStateFile
from devices.pending_event import PendingEvent
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
from devices.retry_scheduler import RetryScheduler
from devices.signing import sign_event
from devices.topics import (
    event_topic,
    heartbeat_topic,
    receipt_topic,
    status_topic,
    unit_alert_topic,
)
from devices.unit_alarms import AlertChange, UnitAlarms

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., None])

KEEPALIVE_S = 60
STOP_PUBLISH_TIMEOUT_S = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _guarded(method: F) -> F:
    """Wrap a paho callback so that no exception ever reaches (and stops) paho's thread."""

    @functools.wraps(method)
    def wrapper(self: ReferencePanel, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception:
            self._log(logging.ERROR, "panel callback failed", True, callback=method.__name__)

    return wrapper  # type: ignore[return-value]


class ReferencePanel:
    """One alarm panel: sends events until receipted and sounds for its unit's other alarms."""

    def __init__(
        self,
        panel_id: str,
        host: str,
        port: int,
        *,
        state_dir: Path,
        username: str | None = None,
        password: str | None = None,
        household_id: str | None = None,
        unit_id: str | None = None,
        heartbeat_s: float = 30.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        max_attempts: int | None = None,
        on_alert: Callable[[AlertChange], None] | None = None,
        on_receipt: Callable[[PendingEvent, Receipt], None] | None = None,
        battery: int | None = None,
        fw: str | None = "tenhub-ref-1",
        hmac_key: bytes | None = None,
        tls: bool = False,
        ca_file: str | Path | None = None,
    ) -> None:
        self.panel_id = panel_id
        self.host = host
        self.port = port
        self.household_id = household_id
        self.unit_id = unit_id
        self.heartbeat_s = heartbeat_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.battery = battery
        self.fw = fw
        self.hmac_key = hmac_key  # set for provisioned panels: every event is signed
        self.clock_offset_ms = 0  # learnt from the hub when our clock drifts
        self._on_alert = on_alert
        self._on_receipt = on_receipt
        self._topics = {
            "event": event_topic(panel_id),
            "receipt": receipt_topic(panel_id),
            "status": status_topic(panel_id),
            "heartbeat": heartbeat_topic(panel_id),
            "alert": unit_alert_topic(unit_id) if unit_id is not None else None,
        }
        self._state = PanelStateFile(state_dir, panel_id)
        self._lock = threading.RLock()
        self._pending = {p["seq"]: PendingEvent(p) for p in self._state.pending()}
        self._alarms = UnitAlarms(household_id)
        self._phase = "new"  # new → running → stopping → stopped
        self._connected = False
        self._started = threading.Event()
        self._start_error: str | None = None
        self._subscribe_mid: int | None = None
        self._halt = threading.Event()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name=f"panel-heartbeat-{panel_id}", daemon=True
        )
        self._retries = RetryScheduler(self._retry, name=f"panel-retry-{panel_id}")
        self._client = self._make_client(username, password)
        if tls or ca_file is not None:
            # The broker's certificate is checked against `ca_file` (else the system's
            # CAs) and the host name: a panel must not hand its password to an impostor.
            self._client.tls_set(ca_certs=str(ca_file) if ca_file is not None else None)

    # -- public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def sounding(self) -> dict[str, UnitAlert]:
        """Neighbours' alarms sounding now: alarm_id → the last alert about it."""
        with self._lock:
            return dict(self._alarms.sounding)

    @property
    def buzzer_on(self) -> bool:
        with self._lock:
            return bool(self._alarms.sounding)

    @property
    def pending(self) -> list[PendingEvent]:
        """Events still waiting for a receipt (those restored from disk included), by seq."""
        with self._lock:
            return [self._pending[seq] for seq in sorted(self._pending)]

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe, or raise ConnectionError / TimeoutError; starts once."""
        with self._lock:
            if self._phase != "new":
                raise RuntimeError(f"panel {self.panel_id} was already started")
            self._phase = "running"
        self._retries.start()
        self._client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        if not self._started.wait(timeout):
            error: Exception | None = TimeoutError(
                f"panel {self.panel_id} not connected to {self.host}:{self.port} within {timeout} s"
            )
        elif self._start_error is not None:
            error = ConnectionError(f"panel {self.panel_id}: {self._start_error}")
        else:
            error = None
        if error is not None:
            self._shut_down(graceful=False)
            raise error
        self._heartbeat_thread.start()

    def stop(self) -> None:
        """Publish the retained offline status, disconnect cleanly and stop every thread."""
        self._shut_down(graceful=True)

    def power_off(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the Last Will."""
        self._shut_down(graceful=False)

    def raise_alarm(self, kind: AlarmKind | str) -> PendingEvent:
        """Raise an alarm of this household; ValueError for an unknown kind."""
        return self.send_event(EventType.ALARM, kind=AlarmKind(kind).value)

    def cancel(self, alarm_id: str, pin: str) -> PendingEvent:
        """Cancel this household's alarm (false alarm) with the household PIN."""
        return self.send_event(EventType.CANCEL, alarm_id=alarm_id, pin=pin)

    def ack(self, alarm_id: str) -> PendingEvent:
        """Tell the hub this household is coming to a neighbour's alarm."""
        return self.send_event(EventType.ACK, alarm_id=alarm_id)

    def send_event(self, type: EventType | str, **fields: Any) -> PendingEvent:
        """Persist an event under a new seq, then send it until a receipt comes (not validated)."""
        clash = {"type", "seq", "ts"} & fields.keys()
        if clash:
            raise ValueError(f"event fields {sorted(clash)} are set by the panel")
        with self._lock:
            if self._phase in ("stopping", "stopped"):
                raise RuntimeError(f"panel {self.panel_id} is stopped")
        type_name = type.value if isinstance(type, EventType) else str(type)
        event = PendingEvent(self._state.add_new(self._builder(type_name, fields)))
        with self._lock:
            self._pending[event.seq] = event
        self._log(logging.INFO, "panel event", type=type_name, seq=event.seq)
        self._send(event)
        return event

    def _builder(self, type_name: str, fields: dict[str, Any]) -> Any:
        def build(seq: int) -> dict[str, Any]:
            payload = {
                "type": type_name,
                "seq": seq,
                "ts": _now_ms() + self.clock_offset_ms,
                **fields,
            }
            return sign_event(payload, self.hmac_key) if self.hmac_key else payload

        return build

    def _send_again_with_the_hubs_time(self, event: PendingEvent, receipt: Receipt) -> bool:
        """The hub refused our clock: learn its time, send the same event under a new seq.

        Nothing is lost to a drifting clock or a late delivery; returns False when the
        receipt is not such a refusal (or the event was already sent again three times).
        """
        hub_time = hub_time_of(receipt)
        if hub_time is None or event.resent >= 3:
            return False
        self.clock_offset_ms = hub_time - _now_ms()
        fields = resend_fields(event.payload)
        self._forget(event.seq)
        event.arm(self._state.add_new(self._builder(event.type, fields)))
        event.resent += 1
        with self._lock:
            self._pending[event.seq] = event
        self._log(
            logging.WARNING,
            "clock corrected from the hub; event sent again",
            seq=event.seq,
            offset_ms=self.clock_offset_ms,
        )
        self._send(event)
        return True

    # -- sending ------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        return repeat_delay_s(attempts, self.retry_initial_s, self.retry_max_s)

    def _send(self, event: PendingEvent) -> None:
        """Publish one copy now when connected and schedule the next; offline, on_connect sends."""
        with self._lock:
            if self._pending.get(event.seq) is not event or not self._connected:
                return
            if self.max_attempts is not None and event.attempts >= self.max_attempts:
                return  # its retry timer is still set and gives up when it fires
            event.attempts += 1
            if event.first_sent_at is None:
                event.first_sent_at = time.monotonic()
            attempts = event.attempts
        info = self._client.publish(self._topics["event"], event.body, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._log(logging.DEBUG, "event copy queued until connected", seq=event.seq)
        self._retries.schedule(event.seq, self._backoff(attempts))

    def _retry(self, seq: int) -> None:
        with self._lock:
            event = self._pending.get(seq)
            if event is None:
                return
            give_up = self.max_attempts is not None and event.attempts >= self.max_attempts
            if give_up:
                del self._pending[seq]
        if not give_up:
            self._send(event)
            return
        self._forget(seq)
        self._log(logging.ERROR, "event gave up without receipt", seq=seq, attempts=event.attempts)
        event.finish(None, time.monotonic())

    def _forget(self, seq: int) -> None:
        try:
            self._state.remove_pending(seq)
        except OSError:
            # Harmless beyond a reboot: the event goes out again and the hub answers duplicate.
            self._log(logging.ERROR, "could not drop a finished event from flash", True, seq=seq)

    # -- paho client and callbacks --------------------------------------------------------

    def _make_client(self, username: str | None, password: str | None) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.panel_id,
            clean_session=False,  # the broker keeps receipts and alerts for us while we are away
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            client.username_pw_set(username, password)
        client.will_set(
            self._topics["status"], encode(PanelStatus(state="offline")), qos=1, retain=True
        )
        # Reconnecting follows the same backoff as event retries; paho accepts floats here.
        client.reconnect_delay_set(self.retry_initial_s, self.retry_max_s)  # type: ignore[arg-type]
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    @_guarded
    def _on_socket_open(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: a small publish could then wait ~40 ms for a delayed ACK.
        # Set before CONNECT goes out, so every packet of the connection benefits.
        with contextlib.suppress(OSError, AttributeError):  # not TCP (unix socket, websocket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @_guarded
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: Any,
        _props: Any,
    ) -> None:
        if reason.is_failure:
            self._log(logging.ERROR, "broker refused panel", reason=str(reason))
            if not self._started.is_set():
                self._start_error = f"broker refused the connection: {reason}"
                self._started.set()
            return
        subscriptions = [(self._topics["receipt"], 1)]
        if self._topics["alert"] is not None:
            subscriptions.append((self._topics["alert"], 1))
        _, mid = client.subscribe(subscriptions)
        online = PanelStatus(state="online", ts=_now_ms(), battery=self.battery, fw=self.fw)
        client.publish(self._topics["status"], encode(online), qos=1, retain=True)
        with self._lock:
            self._subscribe_mid = mid
            self._connected = True
            pending = [self._pending[seq] for seq in sorted(self._pending)]
        self._log(
            logging.INFO, "panel connected", session=flags.session_present, resend=len(pending)
        )
        # The broker handles SUBSCRIBE before these, so the receipts find our subscription.
        for event in pending:
            self._send(event)

    @_guarded
    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._log(logging.WARNING, "panel cannot reach broker")
        if not self._started.is_set():
            self._start_error = f"cannot reach the broker at {self.host}:{self.port}"
            self._started.set()

    @_guarded
    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: list[Any], _props: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._log(logging.ERROR, "broker refused subscriptions", reasons=refused)
            if not self._started.is_set():
                self._start_error = f"broker refused the subscriptions: {refused}"
        self._started.set()

    @_guarded
    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with self._lock:
            self._connected = False
            running = self._phase == "running"
        if running:
            self._log(logging.WARNING, "panel lost its connection", reason=str(reason))

    @_guarded
    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._topics["receipt"]:
            self._handle_receipt(msg.payload)
        elif msg.topic == self._topics["alert"]:
            self._handle_alert(msg.payload)

    # -- receipts and alerts --------------------------------------------------------------

    def _handle_receipt(self, payload: bytes) -> None:
        arrived = time.monotonic()
        try:
            receipt = parse_model(Receipt, payload, MAX_PAYLOAD_BYTES)
        except ProtocolError as exc:
            self._log(logging.WARNING, "unreadable receipt ignored", error=str(exc))
            return
        with self._lock:
            event = self._pending.pop(receipt.seq, None)
            if event is None:
                self._log(logging.DEBUG, "receipt for no pending seq", seq=receipt.seq)
                return
            own_alarm = (
                event.type == EventType.ALARM
                and receipt.status in (ReceiptStatus.ACCEPTED, ReceiptStatus.DUPLICATE)
                and receipt.alarm_id is not None
            )
            silenced = self._alarms.mark_own(receipt.alarm_id) if own_alarm else None
        self._retries.cancel(receipt.seq)
        if receipt.status == ReceiptStatus.REJECTED and self._send_again_with_the_hubs_time(
            event, receipt
        ):
            return
        self._forget(receipt.seq)
        event.finish(receipt, arrived)
        level = logging.WARNING if receipt.status == ReceiptStatus.REJECTED else logging.INFO
        self._log(
            level,
            "panel receipt",
            seq=receipt.seq,
            status=receipt.status.value,
            error=receipt.error,
            attempts=event.attempts,
        )
        if silenced is not None:
            self._notify_alert(AlertChange(silenced, started=False, stopped=True))
        if self._on_receipt is not None:
            try:
                self._on_receipt(event, receipt)
            except Exception:
                self._log(logging.ERROR, "on_receipt callback failed", True)

    def _handle_alert(self, payload: bytes) -> None:
        try:
            alert = parse_model(UnitAlert, payload, MAX_PAYLOAD_BYTES)
        except ProtocolError as exc:
            self._log(logging.WARNING, "unreadable unit alert ignored", error=str(exc))
            return
        with self._lock:
            change = self._alarms.update(alert)
        if change is None:
            return
        if change.started or change.stopped:
            self._log(
                logging.INFO,
                "panel buzzer",
                alarm_id=alert.alarm_id,
                state=alert.state.value,
                buzzer_on=self.buzzer_on,
            )
        self._notify_alert(change)

    def _notify_alert(self, change: AlertChange) -> None:
        if self._on_alert is None:
            return
        try:
            self._on_alert(change)
        except Exception:
            self._log(logging.ERROR, "on_alert callback failed", True)

    # -- heartbeat and shutdown -----------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._halt.wait(self.heartbeat_s):
            if self._connected:
                beat = encode(Heartbeat(ts=_now_ms()))
                self._client.publish(self._topics["heartbeat"], beat, qos=0)

    def _shut_down(self, *, graceful: bool) -> None:
        with self._lock:
            if self._phase != "running":
                self._phase = "stopped"
                return
            self._phase = "stopping"
        self._halt.set()
        self._retries.close()
        if self._heartbeat_thread.is_alive():
            self._heartbeat_thread.join(5)
        client = self._client
        if graceful:
            if self._connected:
                offline = encode(PanelStatus(state="offline"))
                info = client.publish(self._topics["status"], offline, qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(STOP_PUBLISH_TIMEOUT_S)
            client.disconnect()
        else:
            # Like a power cut: the TCP connection ends and no DISCONNECT is sent, so the
            # broker publishes the Last Will. paho's thread sees the end of the stream.
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        client.loop_stop()
        if not graceful:
            sock = client.socket()  # left open if paho's thread ended before noticing
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with self._lock:
            self._connected = False
            self._phase = "stopped"
        self._log(logging.INFO, "panel stopped", graceful=graceful)

    def _log(self, level: int, message: str, exc_info: bool = False, **fields: Any) -> None:
        logger.log(level, message, exc_info=exc_info, extra={"panel_id": self.panel_id, **fields})
