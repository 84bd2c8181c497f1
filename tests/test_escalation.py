"""The alarm lifecycle and its ladder, as a unit, its responders and the police desk live it.

A real broker and reference panels; the hub's clock is moved by the test, so a ladder of
minutes runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from devices.protocol import ReceiptStatus
from devices.topics import receipt_topic, unit_alert_topic
from hub.alarms.work import Responder
from hub.clock import ManualClock
from tests.conftest import first_step_recorded
from tests.mqtt_probe import MqttProbe
from tests.waiting import until

pytestmark = pytest.mark.asyncio

UNIT1 = [f"p-0001-{i:02d}" for i in range(1, 11)]
PINS = {"p-0001-02": ("7468", "1791"), "p-0001-04": ("2542", "6991")}  # from the example
DESK = "+15550009911"
PATROL = {"+15550009001", "+15550009002"}


@pytest.fixture
def clock(hub_runner):
    hub_runner.clock = ManualClock()
    return hub_runner.clock


@pytest.fixture
async def hub(hub_runner, clock):
    return await hub_runner.start()


async def receipt_of(pending, timeout: float = 5.0):
    return await asyncio.to_thread(pending.wait, timeout)


async def later(hub, clock, seconds: float) -> None:
    """Let `seconds` pass on the hub's clock and let the engine catch up."""
    clock.advance(seconds)
    await hub.engine.run_once()


async def raise_alarm(hub, panel, kind="burglary") -> str:
    receipt = await receipt_of(panel.raise_alarm(kind))
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    await first_step_recorded(hub, receipt.alarm_id)
    return receipt.alarm_id


async def entries(hub, alarm_id) -> list[str]:
    return [e.entry for e in await hub.alarms.timeline(alarm_id)]


async def fired(hub, alarm_id) -> dict[str, list[str]]:
    """Step name → the phones it reached, for every step that fired."""
    return {
        e.detail["name"]: sorted({r["address"] for r in e.detail["recipients"]})
        for e in await hub.alarms.timeline(alarm_id)
        if e.entry == "step_fired"
    }


async def skipped(hub, alarm_id) -> dict[str, str]:
    return {
        e.detail["name"]: e.detail["reason"]
        for e in await hub.alarms.timeline(alarm_id)
        if e.entry == "step_skipped"
    }


async def test_nobody_answers_and_the_ladder_climbs_to_police_then_command(hub, clock, panels):
    raiser, *_ = panels(*UNIT1)
    alarm_id = await raise_alarm(hub, raiser)

    first = await fired(hub, alarm_id)
    assert list(first) == ["first alert"]
    assert set(first["first alert"]) >= PATROL, "the zone's patrol is told at once"
    assert "+15550000102" in first["first alert"], "and the neighbours"
    assert "+15550000101" not in first["first alert"], "never the raising household"

    await later(hub, clock, 59)
    assert "police" not in await fired(hub, alarm_id)
    await later(hub, clock, 2)
    assert (await fired(hub, alarm_id))["police"] == [DESK]
    notes = await hub.outbox.for_alarm(alarm_id)
    assert {(n["channel"], n["recipient"]) for n in notes if n["recipient"] == DESK} == {
        ("sms", DESK),
        ("voice", DESK),
    }, "the desk gets an SMS and a call"

    await later(hub, clock, 4 * 60)
    assert "police handling" in await fired(hub, alarm_id)
    await later(hub, clock, 2 * 3600)
    assert list(await fired(hub, alarm_id)) == [
        "first alert",
        "police",
        "police handling",
        "support",
        "containment",
        "region-wide",
    ]
    steps = await hub.alarms.steps(alarm_id)
    assert [s.outcome for s in steps] == ["fired"] * 6
    alarm = await hub.alarms.get(alarm_id)
    assert alarm.state == "raised" and alarm.next_step_at is None


async def test_a_neighbours_ack_does_not_stop_the_police_step(hub, clock, panels):
    raiser, neighbour, *others = panels(*UNIT1[1:])  # h-02 raises; h-03 answers
    alarm_id = await raise_alarm(hub, raiser)
    await until(lambda: all(alarm_id in p.sounding for p in [neighbour, *others]))

    ack = await receipt_of(neighbour.ack(alarm_id))
    assert ack.status == ReceiptStatus.ACCEPTED
    assert (await hub.alarms.get(alarm_id)).state == "acknowledged"
    acked = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "acknowledged"]
    assert acked[0].actor == "household:u-0001/h-03" and acked[0].detail["role"] == "neighbors"
    await until(lambda: others[0].sounding[alarm_id].state == "acknowledged")

    await later(hub, clock, 61)
    assert "police" in await fired(hub, alarm_id), "a neighbour may not be able to help"


async def test_a_key_households_ack_stops_the_police_step(hub, clock, panels):
    raiser, key = panels("p-0001-02", "p-0001-01")  # u-0001/h-01 is a key household
    alarm_id = await raise_alarm(hub, raiser)
    await receipt_of(key.ack(alarm_id))

    await later(hub, clock, 61)
    assert "police" not in await fired(hub, alarm_id)
    assert (await skipped(hub, alarm_id))["police"] == "acknowledged by key_households"
    await later(hub, clock, 5 * 60)
    assert "police handling" in await fired(hub, alarm_id), "nobody is on scene yet"


async def test_the_patrol_acks_then_arrives_then_resolves_and_the_ladder_stops(hub, clock, panels):
    raiser, neighbour = panels("p-0001-02", "p-0001-03")
    alarm_id = await raise_alarm(hub, raiser)
    patrol = Responder("phone:+15550009001", "patrol")

    assert (await hub.actions.acknowledge(alarm_id, patrol, "sms")).ok
    await later(hub, clock, 61)
    assert (await skipped(hub, alarm_id))["police"] == "acknowledged by patrol"
    assert (await hub.actions.on_scene(alarm_id, patrol, "web")).alarm.state == "on_scene"
    await later(hub, clock, 5 * 60)
    assert (await skipped(hub, alarm_id))["police handling"] == "alarm on_scene"
    result = await hub.actions.resolve(alarm_id, patrol, "web", "cat on the sensor")
    assert result.alarm.state == "resolved"
    await until(lambda: alarm_id not in neighbour.sounding)

    await later(hub, clock, 3 * 3600)
    assert list(await fired(hub, alarm_id)) == ["first alert"]
    assert (await hub.actions.acknowledge(alarm_id, patrol, "sms")).error.startswith(
        "invalid_state:"
    )
    assert await entries(hub, alarm_id) == [
        "raised",
        "step_fired",
        "acknowledged",
        "step_skipped",
        "on_scene",
        "step_skipped",
        "resolved",
        "step_skipped",
        "step_skipped",
        "step_skipped",
    ]


async def test_a_pin_cancel_stops_the_buzzers_and_everything_after(hub, clock, panels):
    raiser, *neighbours = panels(*UNIT1[1:])  # h-02
    alarm_id = await raise_alarm(hub, raiser)
    await until(lambda: all(p.buzzer_on for p in neighbours))

    pin, _duress = PINS["p-0001-02"]
    cancel = await receipt_of(raiser.cancel(alarm_id, pin))
    assert cancel.status == ReceiptStatus.ACCEPTED
    await until(lambda: not any(p.buzzer_on for p in neighbours))

    await later(hub, clock, 3 * 3600)
    assert list(await fired(hub, alarm_id)) == ["first alert"]
    assert set((await skipped(hub, alarm_id)).values()) == {"alarm cancelled"}
    cancelled = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "cancelled"]
    assert cancelled[0].actor == "household:u-0001/h-02"


async def test_five_wrong_pins_lock_cancelling(hub, clock, panels):
    raiser, neighbour = panels("p-0001-02", "p-0001-03")
    alarm_id = await raise_alarm(hub, raiser)
    answers = [await receipt_of(raiser.cancel(alarm_id, "0000")) for _ in range(5)]
    assert [a.status for a in answers] == [ReceiptStatus.REJECTED] * 5
    assert answers[0].error == "wrong_pin: wrong PIN; 4 tries left"
    assert answers[4].error == "wrong_pin: wrong PIN; cancelling is now locked"

    pin, _ = PINS["p-0001-02"]
    locked = await receipt_of(raiser.cancel(alarm_id, pin))
    assert locked.error.startswith("cancel_locked:")
    assert (await hub.alarms.get(alarm_id)).state == "raised"
    assert neighbour.buzzer_on


async def test_the_cancel_window_closes(hub, clock, panels):
    (raiser,) = panels("p-0001-02")
    alarm_id = await raise_alarm(hub, raiser)
    clock.advance(121)
    late = await receipt_of(raiser.cancel(alarm_id, PINS["p-0001-02"][0]))
    assert late.error.startswith("cancel_window_closed:")


async def test_the_duress_pin_looks_exactly_like_a_cancel_and_calls_the_police(
    hub, clock, panels, broker
):
    watcher = MqttProbe(
        broker.host,
        broker.port,
        "test-watcher",
        [receipt_topic("p-0001-02"), unit_alert_topic("u-0001")],
    )
    try:
        raiser, neighbour = panels("p-0001-02", "p-0001-03")
        pin, duress = PINS["p-0001-02"]
        real = await raise_alarm(hub, raiser)
        await receipt_of(raiser.cancel(real, pin))
        forced = await raise_alarm(hub, raiser)
        await until(lambda: forced in neighbour.sounding)
        clock.advance(10)
        await receipt_of(raiser.cancel(forced, duress))
        await until(lambda: forced not in neighbour.sounding)

        # What an intruder could watch: receipts and unit alerts, byte for byte, with only
        # the alarm ids, seqs and times (different for any two alarms) masked.
        await asyncio.to_thread(watcher.wait_for, receipt_topic("p-0001-02"), 4)
        await asyncio.to_thread(watcher.wait_for, unit_alert_topic("u-0001"), 4)
        raw = watcher.raw_messages()
        receipts = [m for t, m in raw if t.endswith("/receipt")]
        alerts = [m for t, m in raw if t.endswith("/alert")]
        assert len(receipts) == 4 and len(alerts) == 4  # raise+cancel, twice
        mask = lambda b: re.sub(rb'"(alarm_id|seq|ts)":("[^"]*"|\d+)', rb'"\1":_', b)  # noqa: E731
        assert mask(receipts[1]) == mask(receipts[3])
        assert mask(alerts[1]) == mask(alerts[3])
        assert len(receipts[1]) == len(receipts[3]) and len(alerts[1]) == len(alerts[3])
    finally:
        watcher.close()

    steps = await fired(hub, forced)
    assert steps["police"] == [DESK], "the police step fires now, not after 60 s"
    police = next(
        e
        for e in await hub.alarms.timeline(forced)
        if e.entry == "step_fired" and e.detail["name"] == "police"
    )
    assert police.detail["duress"] is True and police.detail["late_ms"] < 0
    assert "duress" in await entries(hub, forced)
    assert (await hub.alarms.get(forced)).state == "raised", "behind the scenes it goes on"

    # Later changes stay hidden from the unit: the panel showed "cancelled".
    await hub.actions.acknowledge(forced, Responder("user:desk-1", "police"), "web")
    await asyncio.sleep(0.3)
    assert forced not in neighbour.sounding
    panel_alerts = [n for n in await hub.outbox.for_alarm(forced) if n["channel"] == "panel"]
    assert len(panel_alerts) == 2  # raised, then the cancel it pretended
