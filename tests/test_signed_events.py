"""Nobody can fake or replay a provisioned panel: signatures, the replay window, and a
panel whose clock drifts still gets its alarm through."""

from __future__ import annotations

import asyncio
import json

import pytest

from devices.panel import ReferencePanel
from devices.protocol import ReceiptStatus
from devices.signing import sign_event
from devices.topics import event_topic, receipt_topic
from hub.clock import ManualClock
from tests.conftest import HubRunner, db_url_of
from tests.mqtt_probe import MqttProbe

pytestmark = pytest.mark.asyncio

PANEL = "p-0001-03"


@pytest.fixture
async def hub(mosquitto, tmp_path, registry, db_target):
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    hub = await runner.start()
    yield hub
    await runner.stop()


@pytest.fixture
def clock():
    """The hub's clock, held still: an event is exactly as far from it as the test says."""
    return ManualClock()


@pytest.fixture
async def hub_on_a_held_clock(mosquitto, tmp_path, registry, clock, db_target):
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    runner.clock = clock
    hub = await runner.start()
    yield hub
    await runner.stop()


async def provision(hub, panel_id: str = PANEL) -> bytes:
    secrets = await hub.credentials.provision(panel_id, hub.clock.now_ms())
    await hub.key_refresher.run_once()
    return secrets.hmac_key


@pytest.fixture
def make_panel(mosquitto, tmp_path, registry):
    made = []

    def make(key: bytes | None, **options) -> ReferencePanel:
        place = registry.panel_place(PANEL)
        p = ReferencePanel(
            PANEL,
            mosquitto.host,
            mosquitto.port,
            state_dir=tmp_path / "panel",
            username=PANEL,
            household_id=place.household.id,
            unit_id=place.unit.id,
            hmac_key=key,
            retry_initial_s=0.5,
            **options,
        )
        p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


async def test_a_provisioned_panel_signs_and_is_accepted(hub, make_panel):
    key = await provision(hub)
    panel = make_panel(key)
    pending = panel.raise_alarm("burglary")
    receipt = await asyncio.to_thread(pending.wait, 5)
    assert receipt.status == ReceiptStatus.ACCEPTED, receipt.error
    assert "sig" in pending.payload


async def test_forged_or_unsigned_events_of_a_provisioned_panel_are_refused(hub, mosquitto):
    key = await provision(hub)
    probe = MqttProbe(mosquitto.host, mosquitto.port, "test-forger", [receipt_topic(PANEL)])
    now = hub.clock.now_ms()
    try:
        unsigned = {"type": "alarm", "seq": 1, "ts": now, "kind": "fire"}
        forged = sign_event({"type": "alarm", "seq": 2, "ts": now, "kind": "fire"}, b"x" * 32)
        tampered = sign_event({"type": "alarm", "seq": 3, "ts": now, "kind": "fire"}, key)
        tampered["kind"] = "gas"
        for event in (unsigned, forged, tampered):
            await asyncio.to_thread(probe.publish, event_topic(PANEL), json.dumps(event))
        answers = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), 3)
    finally:
        probe.close()
    assert [a["error"].split(":")[0] for a in answers] == [
        "unsigned",
        "bad_signature",
        "bad_signature",
    ]
    assert await hub.alarms.count() == 0


async def test_a_replayed_event_outside_the_window_is_refused_with_the_hubs_time(hub, mosquitto):
    key = await provision(hub)
    probe = MqttProbe(mosquitto.host, mosquitto.port, "test-replayer", [receipt_topic(PANEL)])
    try:
        old = sign_event(
            {"type": "alarm", "seq": 7, "ts": hub.clock.now_ms() - 60_000, "kind": "panic"}, key
        )
        await asyncio.to_thread(probe.publish, event_topic(PANEL), json.dumps(old))
        (answer,) = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL))
    finally:
        probe.close()
    assert answer["status"] == "rejected"
    assert answer["error"].startswith("ts_out_of_window: ts is 60 s behind the hub's clock")
    assert "hub time " in answer["error"]
    assert await hub.alarms.count() == 0


async def send_signed(mosquitto, key: bytes, events: list[dict]) -> dict[int, dict]:
    """Publish the events, signed, as the panel; its receipts by seq, once all came."""
    probe = MqttProbe(mosquitto.host, mosquitto.port, "test-signer", [receipt_topic(PANEL)])
    try:
        for event in events:
            signed = json.dumps(sign_event(event, key))
            await asyncio.to_thread(probe.publish, event_topic(PANEL), signed)
        answers = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), len(events), 15)
    finally:
        probe.close()
    assert len(answers) == len(events), f"only {answers} after 15 s"
    return {answer["seq"]: answer for answer in answers}


async def test_events_just_inside_both_edges_of_the_window_are_accepted(
    hub_on_a_held_clock, clock, mosquitto
):
    hub = hub_on_a_held_clock
    key = await provision(hub)
    now = clock.now_ms()
    answers = await send_signed(mosquitto, key, [
        {"type": "alarm", "seq": 21, "ts": now - 39_000, "kind": "fire"},  # 39 s behind
        {"type": "test", "seq": 22, "ts": now + 19_000},  # 19 s ahead
    ])  # fmt: skip
    assert [(answers[seq]["status"], answers[seq].get("error")) for seq in (21, 22)] == [
        ("accepted", None),
        ("accepted", None),
    ]
    assert (await hub.alarms.get(answers[21]["alarm_id"])).kind == "fire"


async def test_an_event_too_far_ahead_of_the_hubs_clock_is_refused_with_the_hubs_time(
    hub_on_a_held_clock, clock, mosquitto
):
    hub = hub_on_a_held_clock
    key = await provision(hub)
    now = clock.now_ms()
    answers = await send_signed(mosquitto, key, [
        {"type": "alarm", "seq": 31, "ts": now + 25_000, "kind": "fire"},  # 25 s ahead
        {"type": "alarm", "seq": 32, "ts": now + 21_000, "kind": "fire"},  # just past the edge
    ])  # fmt: skip
    for seq, ahead in ((31, 25), (32, 21)):
        assert answers[seq]["status"] == "rejected"
        assert answers[seq]["error"].startswith(
            f"ts_out_of_window: ts is {ahead} s ahead of the hub's clock"
        ), answers[seq]
        assert f"hub time {now}" in answers[seq]["error"]
    assert await hub.alarms.count() == 0


async def test_a_panel_with_a_drifting_clock_still_gets_its_alarm_through(hub, make_panel):
    key = await provision(hub)
    panel = make_panel(key)
    panel.clock_offset_ms = -90_000  # a minute and a half slow
    pending = panel.raise_alarm("medical")
    receipt = await asyncio.to_thread(pending.wait, 5)
    assert receipt.status == ReceiptStatus.ACCEPTED
    assert pending.resent == 1, "sent again under a new seq with the hub's time"
    assert abs(panel.clock_offset_ms) < 5_000
    assert (await hub.alarms.get(receipt.alarm_id)).kind == "medical"


async def test_a_late_repeat_of_a_stored_signed_event_is_still_a_duplicate(hub, mosquitto):
    key = await provision(hub)
    probe = MqttProbe(mosquitto.host, mosquitto.port, "test-late", [receipt_topic(PANEL)])
    try:
        event = sign_event(
            {"type": "alarm", "seq": 9, "ts": hub.clock.now_ms(), "kind": "fire"}, key
        )
        await asyncio.to_thread(probe.publish, event_topic(PANEL), json.dumps(event))
        await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL))
        hub.context.rules = type(hub.context.rules)(ts_behind_ms=0, ts_ahead_ms=0)
        await asyncio.sleep(0.01)  # now the event's ts is outside any window
        await asyncio.to_thread(probe.publish, event_topic(PANEL), json.dumps(event))
        first, again = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), 2)
    finally:
        probe.close()
    assert first["status"] == "accepted"
    assert again == {"seq": 9, "status": "duplicate", "alarm_id": first["alarm_id"]}


async def test_an_unprovisioned_panel_may_stay_unsigned(hub, make_panel):
    panel = make_panel(None)
    receipt = await asyncio.to_thread(panel.raise_alarm("gas").wait, 5)
    assert receipt.status == ReceiptStatus.ACCEPTED
