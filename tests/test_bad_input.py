"""Bad input gets a clear answer and breaks nothing; a valid alarm right after still works."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from devices.topics import event_topic, receipt_topic
from tests.mqtt_probe import MqttProbe

pytestmark = pytest.mark.asyncio

PANEL = "p-0001-04"
NOW = int(time.time() * 1000)


def alarm(seq: int, **extra) -> str:
    return json.dumps({"type": "alarm", "seq": seq, "ts": NOW, "kind": "burglary", **extra})


# (what the installer got wrong, payload, the receipt's seq, the reason it must name)
BAD_EVENTS = [
    ("not JSON", b"\x00garbage{", -1, "invalid_json"),
    ("not UTF-8", b"\xff\xfe{}", -1, "not_utf8"),
    ("a JSON list", b"[1, 2]", -1, "not_object"),
    (
        "seq as a string",
        json.dumps({"type": "alarm", "seq": "7", "ts": NOW, "kind": "fire"}),
        -1,
        "invalid_field",
    ),
    (
        "ts as a float",
        json.dumps({"type": "alarm", "seq": 8, "ts": 1.5, "kind": "fire"}),
        8,
        "invalid_field",
    ),
    ("unknown type", json.dumps({"type": "explode", "seq": 9, "ts": NOW}), 9, "unknown_type"),
    (
        "unknown kind",
        json.dumps({"type": "alarm", "seq": 10, "ts": NOW, "kind": "zombie"}),
        10,
        "unknown_kind",
    ),
    ("missing seq", json.dumps({"type": "alarm", "ts": NOW, "kind": "fire"}), -1, "missing_seq"),
    # Too large to read at all, so not even its seq is read.
    ("too large", alarm(11, note="x" * 5000), -1, "too_large"),
    ("NaN", b'{"type": "alarm", "seq": 12, "ts": NaN, "kind": "fire"}', -1, "invalid_json"),
    (
        "ack without alarm_id",
        json.dumps({"type": "ack", "seq": 13, "ts": NOW}),
        13,
        "missing_field",
    ),
    (
        "ack of an alarm that does not exist",
        json.dumps({"type": "ack", "seq": 14, "ts": NOW, "alarm_id": "a-nothing"}),
        14,
        "unknown_alarm",
    ),
]


async def test_each_bad_event_is_answered_and_the_next_alarm_still_accepted(hub, broker):
    probe = MqttProbe(broker.host, broker.port, "test-bad-input", [receipt_topic(PANEL)])
    try:
        seq = 100
        for n, (what, payload, want_seq, reason) in enumerate(BAD_EVENTS, start=1):
            await asyncio.to_thread(probe.publish, event_topic(PANEL), payload)
            seq += 1
            await asyncio.to_thread(probe.publish, event_topic(PANEL), alarm(seq))
            answers = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), 2 * n)
            refused, accepted = answers[-2:]
            assert refused["status"] == "rejected", what
            assert refused["seq"] == want_seq, what
            assert refused["error"].startswith(reason + ":"), (what, refused["error"])
            assert accepted == {**accepted, "status": "accepted", "seq": seq}, what
    finally:
        probe.close()
    assert hub.metrics.value("tenhub_rejected_total", reason="unknown_kind") == 1
    assert hub.metrics.value("tenhub_events_total", type="alarm", status="accepted") == len(
        BAD_EVENTS
    )
    assert len(hub.rejects) == len(BAD_EVENTS)
    # The same household pressing again while its alarm is open joins that alarm.
    assert await hub.alarms.count() == 1


async def test_an_unknown_panel_is_told_it_is_not_in_the_registry(hub, broker):
    stranger = "p-9999-01"
    probe = MqttProbe(broker.host, broker.port, "test-stranger", [receipt_topic(stranger)])
    try:
        await asyncio.to_thread(probe.publish, event_topic(stranger), alarm(1))
        (answer,) = await asyncio.to_thread(probe.wait_for, receipt_topic(stranger))
    finally:
        probe.close()
    assert answer["status"] == "rejected"
    assert answer["error"].startswith("unknown_panel:")
    assert await hub.alarms.count() == 0


async def test_a_panel_cannot_act_on_an_alarm_of_another_unit(hub, broker):
    other = "p-0002-01"
    probe = MqttProbe(
        broker.host, broker.port, "test-other-unit", [receipt_topic(PANEL), receipt_topic(other)]
    )
    try:
        await asyncio.to_thread(probe.publish, event_topic(PANEL), alarm(1))
        (raised,) = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL))
        alarm_id = raised["alarm_id"]
        for seq, event in (
            (1, {"type": "ack", "alarm_id": alarm_id}),
            (2, {"type": "cancel", "alarm_id": alarm_id, "pin": "1234"}),
        ):
            body = json.dumps({**event, "seq": seq, "ts": NOW})
            await asyncio.to_thread(probe.publish, event_topic(other), body)
        answers = await asyncio.to_thread(probe.wait_for, receipt_topic(other), 2)
    finally:
        probe.close()
    assert [a["status"] for a in answers] == ["rejected", "rejected"]
    assert all(a["error"].startswith("other_unit:") for a in answers)
    assert (await hub.alarms.get(alarm_id)).state == "raised"
    assert [e.entry for e in await hub.alarms.timeline(alarm_id)] == ["raised", "step_fired"]


async def test_garbage_where_no_panel_can_be_answered_is_counted_and_logged(hub, broker):
    probe = MqttProbe(broker.host, broker.port, "test-garbage", [receipt_topic(PANEL)])
    try:
        for topic, payload in [
            ("tenhub/v1/panel/NOT_AN_ID/event", alarm(1)),
            ("tenhub/v1/panel/p-0001-04/nonsense", b"x"),
            (f"tenhub/v1/panel/{PANEL}/status", b"{bad json"),
            (f"tenhub/v1/panel/{PANEL}/heartbeat", b'{"ts": "soon"}'),
        ]:
            await asyncio.to_thread(probe.publish, topic, payload)
        await asyncio.to_thread(probe.publish, event_topic(PANEL), alarm(5))
        (answer,) = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL))
    finally:
        probe.close()
    assert answer["status"] == "accepted", "the hub goes on"
    # An id that is not an id cannot be answered; the status and heartbeat are refused
    # without a receipt (nobody asked for one). The `nonsense` topic is not subscribed.
    assert hub.metrics.value("tenhub_unanswered_messages_total", reason="bad_topic") == 1
    assert hub.metrics.value("tenhub_unanswered_messages_total", reason="invalid_json") == 1
    assert hub.metrics.value("tenhub_unanswered_messages_total", reason="invalid_field") == 1
    reasons = [r["reason"] for r in hub.rejects.recent()]
    assert reasons.count("invalid_json") == 1 and reasons.count("invalid_field") == 1


async def test_a_seq_reused_for_a_different_event_no_later_is_refused_not_swallowed(hub, broker):
    # A later ts would be a panel that lost its counter (test_panel_counter_reset.py).
    probe = MqttProbe(broker.host, broker.port, "test-reuse", [receipt_topic(PANEL)])
    try:
        await asyncio.to_thread(probe.publish, event_topic(PANEL), alarm(77))
        other = json.dumps({"type": "alarm", "seq": 77, "ts": NOW, "kind": "fire"})
        await asyncio.to_thread(probe.publish, event_topic(PANEL), other)
        first, second = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), 2)
    finally:
        probe.close()
    assert first["status"] == "accepted"
    assert second["status"] == "rejected" and second["error"].startswith("seq_reused:")
    assert await hub.alarms.count() == 1
