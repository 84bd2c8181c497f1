"""Stories of the reference panel against a real broker, with a small fake hub answering it."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.panel import AlertChange, PendingEvent, ReferencePanel
from devices.panel_state import PanelStateFile
from devices.protocol import (
    AlarmKind,
    AlarmState,
    EventType,
    Heartbeat,
    ProtocolError,
    Receipt,
    ReceiptStatus,
    UnitAlert,
    encode,
    parse_event,
)
from devices.topics import (
    heartbeat_topic,
    parse_panel_topic,
    receipt_topic,
    status_topic,
    unit_alert_topic,
)
from tests.brokers import free_port

TIMEOUT = 5.0
UNIT = "u-0001"
_client_ids = itertools.count()


def _client(broker: Any, name: str) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{next(_client_ids)}",
        protocol=mqtt.MQTTv311,
    )
    client.username_pw_set(name, "x")  # the embedded broker refuses anonymous clients
    client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
    return client


class FakeHub:
    """Stands in for the hub: records every event copy, answers receipts as told, sends alerts."""

    def __init__(self, broker: Any, *, answer: bool = True, ignore_first: int = 0) -> None:
        self.answer = answer
        self.ignore_first = ignore_first
        self.copies: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self._answered: dict[tuple[str, int], str | None] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = _client(broker, "fake-hub")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(TIMEOUT), "fake hub did not subscribe"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe("tenhub/v1/panel/+/event", qos=1)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = parse_panel_topic(msg.topic)
        assert topic is not None
        seq = json.loads(msg.payload)["seq"]
        key = (topic.panel_id, seq)
        with self._cond:
            self.copies[key].append(bytes(msg.payload))
            self._cond.notify_all()
            if not self.answer or len(self.copies[key]) <= self.ignore_first:
                return
            receipt = self._receipt(key, msg.payload)
        client.publish(receipt_topic(topic.panel_id), encode(receipt), qos=1)

    def _receipt(self, key: tuple[str, int], payload: bytes) -> Receipt:
        if key in self._answered:
            return Receipt(seq=key[1], status=ReceiptStatus.DUPLICATE, alarm_id=self._answered[key])
        try:
            event = parse_event(payload)
        except ProtocolError as exc:
            return Receipt(seq=key[1], status=ReceiptStatus.REJECTED, error=exc.error)
        if event.type == EventType.ALARM:
            alarm_id: str | None = f"a-{key[0]}-{key[1]}"
        else:
            alarm_id = getattr(event, "alarm_id", None)
        self._answered[key] = alarm_id
        return Receipt(seq=key[1], status=ReceiptStatus.ACCEPTED, alarm_id=alarm_id)

    def wait_copies(self, panel_id: str, seq: int, count: int) -> list[bytes]:
        """Every copy of event seq once at least count of them arrived."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.copies[(panel_id, seq)]) >= count, TIMEOUT)
            assert ok, (
                f"hub got {len(self.copies[(panel_id, seq)])} copies of seq {seq}, wanted {count}"
            )
            return list(self.copies[(panel_id, seq)])

    def alert(
        self, alarm_id: str, household_id: str, state: AlarmState, ts: int | None = None
    ) -> None:
        alert = UnitAlert(
            alarm_id=alarm_id,
            household_id=household_id,
            kind=AlarmKind.BURGLARY,
            state=state,
            ts=ts if ts is not None else time.time_ns() // 1_000_000,
        )
        self.client.publish(unit_alert_topic(UNIT), encode(alert), qos=1).wait_for_publish(TIMEOUT)

    def send_raw_alert(self, payload: bytes) -> None:
        self.client.publish(unit_alert_topic(UNIT), payload, qos=1).wait_for_publish(TIMEOUT)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Watcher:
    """A fresh subscriber to one topic; retained messages come first, as the broker sends them."""

    def __init__(self, broker: Any, topic: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()
        self.client = _client(broker, "watcher")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT)

    def next(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], None]]]:
    """Things to stop after the test, last made first stopped."""
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


@pytest.fixture
def hub_factory(cleanup: list[Callable[[], None]]) -> Callable[..., FakeHub]:
    def make(broker: Any, **kwargs: Any) -> FakeHub:
        hub = FakeHub(broker, **kwargs)
        cleanup.append(hub.stop)
        return hub

    return make


@pytest.fixture
def watch(cleanup: list[Callable[[], None]]) -> Callable[[Any, str], Watcher]:
    def make(broker: Any, topic: str) -> Watcher:
        watcher = Watcher(broker, topic)
        cleanup.append(watcher.stop)
        return watcher

    return make


@pytest.fixture
def panel_factory(
    tmp_path: Path, cleanup: list[Callable[[], None]]
) -> Callable[..., ReferencePanel]:
    """Make a panel (not started) on the broker; state in tmp_path unless told otherwise."""

    def make(broker: Any, panel_id: str = "p-0001-01", **kwargs: Any) -> ReferencePanel:
        kwargs.setdefault("state_dir", tmp_path / "panel-state")
        kwargs.setdefault("retry_initial_s", 0.2)
        kwargs.setdefault("retry_max_s", 1.0)
        panel = ReferencePanel(panel_id, broker.host, broker.port, username=panel_id, **kwargs)
        cleanup.append(panel.stop)
        return panel

    return make


def test_an_alarm_gets_its_receipt(
    broker: Any, hub_factory: Any, panel_factory: Any, tmp_path: Path
) -> None:
    hub_factory(broker)
    receipts: queue.Queue[tuple[PendingEvent, Receipt]] = queue.Queue()
    panel = panel_factory(broker, on_receipt=lambda event, receipt: receipts.put((event, receipt)))
    panel.start()

    event = panel.raise_alarm(AlarmKind.FIRE)
    receipt = event.wait(TIMEOUT)

    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert receipt.seq == event.seq and receipt.alarm_id == f"a-p-0001-01-{event.seq}"
    assert receipts.get(timeout=TIMEOUT) == (event, receipt)
    assert event.attempts == 1
    assert event.first_sent_at is not None and event.receipt_at is not None
    assert event.receipt_at >= event.first_sent_at
    assert panel.pending == []
    assert PanelStateFile(tmp_path / "panel-state", panel.panel_id).pending() == []


def test_unanswered_copies_are_repeated_byte_for_byte(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(mosquitto, ignore_first=2)
    panel = panel_factory(mosquitto, retry_initial_s=0.1)
    panel.start()

    event = panel.raise_alarm("panic")
    receipt = event.wait(TIMEOUT)

    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert event.attempts == 3
    copies = hub.wait_copies(panel.panel_id, event.seq, 3)
    assert len(set(copies)) == 1
    assert json.loads(copies[0]) == event.payload


def test_a_rejected_event_is_reported_and_not_repeated(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub_factory(mosquitto)
    receipts: queue.Queue[Receipt] = queue.Queue()
    panel = panel_factory(mosquitto, on_receipt=lambda _event, receipt: receipts.put(receipt))
    panel.start()

    event = panel.send_event("reboot", reason="update")
    receipt = receipts.get(timeout=TIMEOUT)

    assert receipt.status == ReceiptStatus.REJECTED and receipt.error.startswith("unknown_type")
    assert event.wait(0) == receipt and event.attempts == 1
    assert panel.pending == []


def test_a_panel_with_max_attempts_gives_up(
    mosquitto: Any, hub_factory: Any, panel_factory: Any, tmp_path: Path
) -> None:
    hub = hub_factory(mosquitto, answer=False)
    panel = panel_factory(mosquitto, retry_initial_s=0.05, max_attempts=2)
    panel.start()

    event = panel.send_event(EventType.TEST)

    assert event.wait(TIMEOUT) is None
    assert event.done and event.gave_up and event.attempts == 2
    assert len(hub.wait_copies(panel.panel_id, event.seq, 2)) == 2
    assert panel.pending == []
    assert PanelStateFile(tmp_path / "panel-state", panel.panel_id).pending() == []


def test_seq_and_unreceipted_alarm_survive_a_reboot(
    mosquitto: Any, hub_factory: Any, panel_factory: Any, tmp_path: Path
) -> None:
    hub = hub_factory(mosquitto, answer=False)
    state_dir = tmp_path / "flash"
    before = panel_factory(mosquitto, state_dir=state_dir)
    before.start()
    lost = before.raise_alarm("burglary")
    hub.wait_copies(before.panel_id, lost.seq, 1)
    before.power_off()

    hub.answer = True
    after = panel_factory(mosquitto, state_dir=state_dir)
    [restored] = after.pending
    assert restored.seq == lost.seq and restored.payload == lost.payload
    after.start()

    receipt = restored.wait(TIMEOUT)
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    copies = hub.wait_copies(after.panel_id, lost.seq, 2)
    assert len(set(copies)) == 1, "the rebooted panel must resend the very same bytes"
    assert after.raise_alarm("fire").seq > lost.seq


def test_a_corrupt_state_file_never_goes_back_in_seq(tmp_path: Path) -> None:
    (tmp_path / "p-1.json").write_text('{"next_seq": 7, "pend')
    before_ms = time.time_ns() // 1_000_000

    state = PanelStateFile(tmp_path, "p-1")

    assert state.reserve_seq() >= before_ms
    assert state.pending() == []
    assert PanelStateFile(tmp_path, "p-1").next_seq == state.next_seq


def test_status_is_online_while_running_and_the_last_will_says_offline(
    mosquitto: Any, panel_factory: Any, watch: Any
) -> None:
    panel = panel_factory(mosquitto, battery=87)
    panel.start()
    topic = status_topic(panel.panel_id)

    online = watch(mosquitto, topic).next()
    assert online.retain
    status = json.loads(online.payload)
    assert (
        status["state"] == "online" and status["battery"] == 87 and status["fw"] == "tenhub-ref-1"
    )

    panel.power_off()
    assert not panel.connected
    retained = watch(mosquitto, topic).next()
    assert retained.retain and json.loads(retained.payload) == {"state": "offline"}


def test_a_graceful_stop_leaves_an_offline_status(
    mosquitto: Any, panel_factory: Any, watch: Any
) -> None:
    panel = panel_factory(mosquitto)
    panel.start()
    panel.stop()

    retained = watch(mosquitto, status_topic(panel.panel_id)).next()
    assert retained.retain and json.loads(retained.payload) == {"state": "offline"}


def test_heartbeats_arrive(mosquitto: Any, panel_factory: Any, watch: Any) -> None:
    panel = panel_factory(mosquitto, heartbeat_s=0.2)
    watcher = watch(mosquitto, heartbeat_topic(panel.panel_id))
    panel.start()

    beats = [Heartbeat.model_validate_json(watcher.next().payload) for _ in range(3)]

    assert beats[0].ts <= beats[1].ts <= beats[2].ts


def test_a_neighbours_alarm_sounds_until_it_is_cancelled(
    broker: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(broker)
    changes: queue.Queue[AlertChange] = queue.Queue()
    panel = panel_factory(broker, household_id="h-01", unit_id=UNIT, on_alert=changes.put)
    panel.start()

    hub.send_raw_alert(b"not json at all")
    hub.send_raw_alert(b'{"alarm_id": 3}')
    hub.alert("a-9", "h-02", AlarmState.RAISED)
    raised = changes.get(timeout=TIMEOUT)
    assert raised.started and not raised.stopped and raised.alert.alarm_id == "a-9"
    assert panel.buzzer_on and set(panel.sounding) == {"a-9"}

    hub.alert("a-9", "h-02", AlarmState.ACKNOWLEDGED)
    acked = changes.get(timeout=TIMEOUT)
    assert not acked.started and not acked.stopped and panel.buzzer_on

    hub.alert("a-9", "h-02", AlarmState.CANCELLED)
    cancelled = changes.get(timeout=TIMEOUT)
    assert cancelled.stopped and not cancelled.started
    assert not panel.buzzer_on and panel.sounding == {}


def test_a_late_copy_of_an_old_state_does_not_restart_the_buzzer(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(mosquitto)
    changes: queue.Queue[AlertChange] = queue.Queue()
    panel = panel_factory(mosquitto, unit_id=UNIT, on_alert=changes.put)
    panel.start()

    hub.alert("a-9", "h-02", AlarmState.RAISED, ts=1000)
    hub.alert("a-9", "h-02", AlarmState.RESOLVED, ts=2000)
    hub.alert("a-9", "h-02", AlarmState.RAISED, ts=1000)
    hub.alert("a-10", "h-03", AlarmState.RAISED, ts=3000)

    seen = [changes.get(timeout=TIMEOUT) for _ in range(3)]
    assert [(c.alert.alarm_id, c.started, c.stopped) for c in seen] == [
        ("a-9", True, False),
        ("a-9", False, True),
        ("a-10", True, False),
    ]
    assert set(panel.sounding) == {"a-10"}


def test_the_households_own_alarm_does_not_sound_its_buzzer(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(mosquitto)
    changes: queue.Queue[AlertChange] = queue.Queue()
    by_household = panel_factory(
        mosquitto, "p-0001-01", household_id="h-01", unit_id=UNIT, on_alert=changes.put
    )
    by_household.start()
    # No household_id: it knows its alarm from the alarm_id of the receipt.
    by_receipt_changes: queue.Queue[AlertChange] = queue.Queue()
    by_receipt = panel_factory(
        mosquitto, "p-0001-02", unit_id=UNIT, on_alert=by_receipt_changes.put
    )
    by_receipt.start()
    own = by_receipt.raise_alarm("medical").wait(TIMEOUT)
    assert own is not None and own.alarm_id is not None

    hub.alert("a-1", "h-01", AlarmState.RAISED)
    hub.alert(own.alarm_id, "h-02", AlarmState.RAISED)
    hub.alert("a-3", "h-03", AlarmState.RAISED)

    # Alerts arrive in order, so the first change each panel reports shows what it skipped.
    assert [changes.get(timeout=TIMEOUT).alert.alarm_id for _ in range(2)] == [own.alarm_id, "a-3"]
    assert set(by_household.sounding) == {own.alarm_id, "a-3"}
    assert [by_receipt_changes.get(timeout=TIMEOUT).alert.alarm_id for _ in range(2)] == [
        "a-1",
        "a-3",
    ]
    assert set(by_receipt.sounding) == {"a-1", "a-3"}


def test_a_failing_callback_does_not_break_the_panel(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(mosquitto)

    def explode(_change: AlertChange) -> None:
        raise RuntimeError("display broken")

    panel = panel_factory(mosquitto, unit_id=UNIT, on_alert=explode)
    panel.start()
    hub.alert("a-9", "h-02", AlarmState.RAISED)

    receipt = panel.raise_alarm("gas").wait(TIMEOUT)
    assert receipt is not None and panel.buzzer_on and panel.connected


def test_the_panel_reconnects_after_a_broker_restart_and_gets_its_receipt(
    mosquitto: Any, hub_factory: Any, panel_factory: Any
) -> None:
    hub = hub_factory(mosquitto, answer=False)
    panel = panel_factory(mosquitto)
    panel.start()
    event = panel.raise_alarm("burglary")
    hub.wait_copies(panel.panel_id, event.seq, 1)

    mosquitto.restart()
    hub.answer = True

    receipt = event.wait(TIMEOUT)
    assert receipt is not None and receipt.seq == event.seq
    assert panel.connected
    copies = hub.wait_copies(panel.panel_id, event.seq, 2)
    assert len(set(copies)) == 1


def test_the_panel_socket_has_nagle_off(mosquitto: Any, panel_factory: Any) -> None:
    panel = panel_factory(mosquitto)
    panel.start()
    sock = panel._client.socket()
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_start_fails_clearly_when_no_broker_listens(tmp_path: Path) -> None:
    panel = ReferencePanel(
        "p-0001-01", "127.0.0.1", free_port(), state_dir=tmp_path, retry_initial_s=0.1
    )
    with pytest.raises(ConnectionError):
        panel.start(timeout=TIMEOUT)
    panel.stop()


def test_a_repeated_unit_alert_is_applied_once(
    mosquitto: Any, hub_factory: Any, panel_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Alerts come at least once: a hub killed between publishing an alert and recording it
    # sends it again, byte for byte, after anything. Here a raise cancelled within the
    # same millisecond, each alert delivered twice, and the raise once more after all.
    caplog.set_level(logging.INFO, logger="devices.panel")
    hub = hub_factory(mosquitto)
    changes: queue.Queue[AlertChange] = queue.Queue()
    panel = panel_factory(mosquitto, household_id="h-01", unit_id=UNIT, on_alert=changes.put)
    panel.start()

    def alert(state: AlarmState) -> bytes:
        return encode(
            UnitAlert(
                alarm_id="a-9", household_id="h-02", kind=AlarmKind.BURGLARY, state=state, ts=5000
            )
        )

    raised, cancelled = alert(AlarmState.RAISED), alert(AlarmState.CANCELLED)
    for payload in (raised, raised, cancelled, cancelled, raised):
        hub.send_raw_alert(payload)
    hub.alert("a-10", "h-03", AlarmState.RAISED, ts=6000)  # in order: all before it are in

    seen = [changes.get(timeout=TIMEOUT) for _ in range(3)]
    assert [(c.alert.alarm_id, c.alert.state, c.started, c.stopped) for c in seen] == [
        ("a-9", AlarmState.RAISED, True, False),
        ("a-9", AlarmState.CANCELLED, False, True),
        ("a-10", AlarmState.RAISED, True, False),
    ]
    assert changes.empty() and set(panel.sounding) == {"a-10"}
    buzzer = [
        (r.alarm_id, r.buzzer_on)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "panel buzzer"
    ]
    assert buzzer == [("a-9", True), ("a-9", False), ("a-10", True)], "one start, one stop"
