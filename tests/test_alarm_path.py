"""The walking skeleton as a household and its neighbours live it: alarm, receipt, buzzers.

Every story runs against a real Mosquitto and against the embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import paho.mqtt.client as mqtt
import pytest

from devices.protocol import ReceiptStatus
from devices.topics import event_topic
from tests.waiting import until

pytestmark = pytest.mark.asyncio

UNIT1 = [f"p-0001-{i:02d}" for i in range(1, 11)]
UNIT2 = [f"p-0002-{i:02d}" for i in range(1, 11)]


async def receipt_of(pending, timeout: float = 5.0):
    """The receipt of a panel's event (waited for off the event loop the hub runs on)."""
    return await asyncio.to_thread(pending.wait, timeout)


async def test_alarm_is_stored_receipted_and_sounds_the_nine_neighbours(hub, panels):
    unit1 = panels(*UNIT1)
    unit2 = panels(*UNIT2)
    raiser, neighbours = unit1[0], unit1[1:]

    pending = raiser.raise_alarm("burglary")
    receipt = await receipt_of(pending)

    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    alarm = await hub.alarms.get(receipt.alarm_id)
    assert alarm is not None
    assert (alarm.unit_id, alarm.household_id, alarm.kind, alarm.state) == (
        "u-0001",
        "h-01",
        "burglary",
        "raised",
    )
    await until(lambda: all(receipt.alarm_id in p.sounding for p in neighbours))
    assert all(p.buzzer_on for p in neighbours)
    assert not raiser.buzzer_on, "a household's own alarm is not a neighbour's alarm"
    await asyncio.sleep(0.3)  # give a wrongly routed alert time to arrive
    assert not any(p.buzzer_on for p in unit2), "another unit's panels stay silent"
    timeline = await hub.alarms.timeline(receipt.alarm_id)
    assert [e.entry for e in timeline] == ["raised", "step_fired"]
    assert timeline[0].actor == "household:u-0001/h-01"
    assert timeline[1].detail["name"] == "first alert"


@dataclass
class BarePanel:
    """A panel's events sent byte for byte as given, and the receipts it got, in order."""

    client: mqtt.Client
    panel_id: str
    answers: list[dict]

    def send(self, event: dict) -> None:
        self.client.publish(event_topic(self.panel_id), json.dumps(event), qos=1)


@contextlib.asynccontextmanager
async def bare_panel(broker, panel_id: str, client_id: str) -> AsyncIterator[BarePanel]:
    """A bare MQTT client that sends a panel's events as given and keeps its receipts."""
    answers: list[dict] = []
    acknowledged: list[int] = []  # message ids of the SUBACKs received
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(client_id)
    client.on_message = lambda _c, _u, msg: answers.append(json.loads(msg.payload))
    client.on_subscribe = lambda _c, _u, mid, _codes, _props: acknowledged.append(mid)
    client.connect(broker.host, broker.port)
    _, mid = client.subscribe(f"tenhub/v1/panel/{panel_id}/receipt", 1)
    client.loop_start()
    try:
        # Subscribed (the broker's SUBACK) before the first event goes.
        await until(lambda: mid in acknowledged, timeout=20, message="the receipt topic's SUBACK")
        yield BarePanel(client, panel_id, answers)
    finally:
        client.loop_stop()
        client.disconnect()


async def test_the_same_event_twice_is_one_alarm_and_a_duplicate_receipt(hub, broker):
    async with bare_panel(broker, "p-0001-03", "test-dup") as panel:
        event = {"type": "alarm", "seq": 41, "ts": 1_700_000_000_000, "kind": "fire"}
        panel.send(event)
        panel.send(event)
        await until(lambda: len(panel.answers) == 2)

    first, second = panel.answers
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert first["seq"] == second["seq"] == 41
    assert second["alarm_id"] == first["alarm_id"]
    assert await hub.alarms.count() == 1


async def test_a_repeat_of_a_stored_alarm_is_answered_while_the_disk_stalls(
    hub, broker, panels, monkeypatch
):
    """A panel whose receipt was late sends its alarm again; the hub already stored it, so
    the repeat is answered at once, even while the disk holds every new write."""
    writing, disk_free = threading.Event(), threading.Event()
    async with bare_panel(broker, "p-0002-06", "test-repeat") as panel:
        alarm = {"type": "alarm", "seq": 7, "ts": 1_700_000_000_000, "kind": "fire"}
        panel.send(alarm)
        await until(lambda: len(panel.answers) == 1)
        assert panel.answers[0]["status"] == "accepted"

        apply = hub.ingest.handler.apply

        def stalled(*args, **kwargs):
            writing.set()
            disk_free.wait(10)  # the disk stalls: every write waits behind this one
            return apply(*args, **kwargs)

        monkeypatch.setattr(hub.ingest.handler, "apply", stalled)
        (other,) = panels("p-0002-07")
        held = other.raise_alarm("gas")
        try:
            await asyncio.to_thread(writing.wait, 5)
            panel.send(alarm)  # the same event again
            panel.send({**alarm, "kind": "gas"})  # its seq, another event
            await until(lambda: len(panel.answers) == 3, timeout=5)
            assert held.receipt is None, "a new alarm is answered only once it is stored"
        finally:
            disk_free.set()

    first, repeat, other_event = panel.answers
    assert repeat["status"] == "duplicate" and repeat["alarm_id"] == first["alarm_id"]
    assert other_event["status"] == "rejected" and other_event["error"].startswith("seq_reused")
    receipt = await receipt_of(held)
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert await hub.alarms.count() == 2


async def test_an_alarm_sent_while_the_hub_is_down_is_handled_when_it_is_back(hub_runner, panels):
    await hub_runner.start()
    await hub_runner.stop()
    # A long retry interval: only the broker's queue for the hub's session can deliver it.
    (panel,) = panels("p-0001-05", retry_initial_s=60)
    (neighbour,) = panels("p-0001-06")
    pending = panel.raise_alarm("medical")
    await asyncio.sleep(0.5)
    assert pending.receipt is None, "nobody can answer while the hub is down"

    hub = await hub_runner.start()
    receipt = await receipt_of(pending)

    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert pending.attempts == 1, "delivered from the broker's queue, not by a repeat"
    assert (await hub.alarms.get(receipt.alarm_id)).kind == "medical"
    await until(lambda: receipt.alarm_id in neighbour.sounding)


async def test_the_hub_reconnects_by_itself_after_the_broker_restarts(hub, broker, panels):
    raiser, neighbour = panels("p-0002-01", "p-0002-02")
    first = await receipt_of(raiser.raise_alarm("panic"))
    assert first.status == ReceiptStatus.ACCEPTED

    await asyncio.to_thread(broker.restart)
    await until(
        lambda: (
            hub.metrics.value("tenhub_broker_connects_total") >= 2
            and hub.transport.connected.is_set()
            and raiser.connected
        ),
        timeout=15,
    )

    second = await receipt_of(raiser.raise_alarm("fire"), timeout=15)
    assert second is not None and second.status == ReceiptStatus.ACCEPTED
    assert second.alarm_id != first.alarm_id
    await until(lambda: second.alarm_id in neighbour.sounding, timeout=10)


async def test_an_event_is_never_receipted_when_it_could_not_be_stored(hub, panels, monkeypatch):
    (panel,) = panels("p-0003-01", retry_initial_s=0.3)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hub.ingest.handler, "apply", broken)
    pending = panel.raise_alarm("gas")
    assert await receipt_of(pending, timeout=1.5) is None
    assert pending.attempts >= 2, "the panel keeps repeating"
    assert await hub.alarms.count() == 0

    monkeypatch.undo()  # the disk is fixed; the next repeat is stored and answered
    receipt = await receipt_of(pending)
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert await hub.alarms.count() == 1


async def test_a_hub_too_far_behind_takes_no_more_and_the_panels_send_again(
    hub, panels, monkeypatch
):
    first, second = panels("p-0003-02", "p-0003-03", retry_initial_s=0.3)
    apply = hub.ingest.handler.apply
    writing, disk_free = threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        writing.set()
        disk_free.wait(5)  # the disk stalls: the first alarm's write hangs
        return apply(*args, **kwargs)

    monkeypatch.setattr(hub.ingest.handler, "apply", slow)
    monkeypatch.setattr(hub.ingest, "queue_size", 1)
    held = first.raise_alarm("fire")
    await asyncio.to_thread(writing.wait, 5)
    refused = second.raise_alarm("gas")
    await until(
        lambda: hub.metrics.value("tenhub_unanswered_messages_total", reason="overloaded") >= 1
    )
    assert refused.receipt is None, "not taken: no receipt, and nothing kept in memory"
    disk_free.set()
    for pending in (held, refused):
        receipt = await receipt_of(pending)
        assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    assert refused.attempts >= 2, "the refused alarm came again and was stored then"
    assert await hub.alarms.count() == 2


async def test_health_and_metrics_tell_what_happened(hub, panels):
    (panel,) = panels("p-0001-02")
    await receipt_of(panel.raise_alarm("fire"))
    base = f"http://127.0.0.1:{hub.http_port}"
    async with httpx.AsyncClient() as client:
        health = await client.get(f"{base}/healthz")
        loop_cpu_before = time.thread_time()
        metrics = await client.get(f"{base}/metrics")
        loop_cpu_after, process_cpu_after = time.thread_time(), time.process_time()
        anonymous = await client.get(f"{base}/api/alarms")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["broker"]["connected"] is True
    assert 'tenhub_events_total{status="accepted",type="alarm"} 1.0' in metrics.text
    assert "tenhub_broker_connected 1.0" in metrics.text
    # The alarm's own commit at least: the disk's part of the receipt, for the operator.
    commits = next(
        line for line in metrics.text.splitlines()
        if line.startswith("tenhub_db_commit_seconds_count ")
    )  # fmt: skip
    assert float(commits.split()[1]) >= 1
    # Where the hub's CPU went: the event loop's thread and the writer's, apart.
    threads = {
        line.split('"')[1]: float(line.split()[1])
        for line in metrics.text.splitlines()
        if line.startswith("tenhub_thread_cpu_seconds_total{")
    }
    assert {"MainThread", "sqlite-writer"} <= set(threads)
    # The loop runs in this test's thread: its figure is this thread's CPU time, read while
    # the scrape was served (the kernel counts in clock ticks, hence the slack)...
    tick = 0.05
    assert loop_cpu_before - tick <= threads["MainThread"] <= loop_cpu_after + tick, threads
    # ...and each thread is counted apart, not each given the whole process's time.
    assert sum(threads.values()) <= process_cpu_after + tick, (threads, process_cpu_after)
    assert anonymous.status_code == 401, "alarms are for logged-in users only"
    await until(lambda: hub.presence.online_count() >= 1)
