"""A panel that lost its counter (replaced, factory reset) still raises its alarm.

It starts again at seq 1, which its earlier life already used. A household pressing
panic must never be refused for that: an event reusing a seq with another payload and a
later `ts` is new, and the operator is shown a `seq_reset` trouble once.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from devices.topics import event_topic, receipt_topic
from tests.mqtt_probe import MqttProbe
from tests.test_supervision import trouble_sms
from tests.waiting import until

pytestmark = pytest.mark.asyncio

PANEL = "p-0001-04"  # household u-0001/h-04
NEIGHBOUR = "p-0001-05"


def event(seq: int, ts: int, type: str = "test", **fields) -> str:
    return json.dumps({"type": type, "seq": seq, "ts": ts, **fields})


async def test_a_replaced_panel_starting_again_at_seq_1_raises_its_alarm(
    hub_runner, broker, panels
):
    hub = await hub_runner.start()
    (neighbour,) = panels(NEIGHBOUR)
    before = int(time.time() * 1000) - 3600_000
    receipts = receipt_topic(PANEL)
    probe = MqttProbe(broker.host, broker.port, "test-replaced-panel", [receipts])

    async def send(payload: str, count: int) -> dict:
        await asyncio.to_thread(probe.publish, event_topic(PANEL), payload)
        answers = await asyncio.to_thread(probe.wait_for, receipts, count)
        assert len(answers) == count, f"no receipt for {payload}"
        return answers[-1]

    try:
        # The old panel's life: three panel tests, an hour ago.
        old = [event(seq, before + seq) for seq in (1, 2, 3)]
        for n, payload in enumerate(old, start=1):
            assert (await send(payload, n))["status"] == "accepted"

        # Replaced: the new panel's first event is seq 1 again, a panic, now.
        now = int(time.time() * 1000)
        panic = event(1, now, type="alarm", kind="panic")
        receipt = await send(panic, 4)
        assert receipt["status"] == "accepted", receipt
        alarm = await hub.alarms.get(receipt["alarm_id"])
        assert alarm is not None and alarm.kind == "panic" and alarm.household_id == "h-04"
        await until(lambda: receipt["alarm_id"] in neighbour.sounding, timeout=5)

        troubles = await hub.panels.troubles(panel_ids=[PANEL])
        assert [(t.kind, t.detail["seq"]) for t in troubles] == [("seq_reset", 1)]
        # Bookkeeping for the operator: the household is not texted about it.
        assert await trouble_sms(hub) == []

        # The new panel repeating its panic byte for byte: a duplicate of the new alarm.
        repeat = await send(panic, 5)
        assert repeat == {**receipt, "status": "duplicate"}
        # A copy of the old life's seq 1 (older ts) is no new event: refused, not raised.
        stale = await send(old[0], 6)
        assert stale["status"] == "rejected" and stale["error"].startswith("seq_reused:")
    finally:
        probe.close()

    # After a restart the hub finds the old seq 2 in its database, not in memory: the new
    # panel's seq 2 is taken all the same, and the trouble is not opened twice.
    await hub_runner.stop()
    hub = await hub_runner.start()
    probe = MqttProbe(broker.host, broker.port, "test-replaced-panel-2", [receipts])
    try:
        second = await send(event(2, int(time.time() * 1000)), 1)
        assert second["status"] == "accepted", second
    finally:
        probe.close()
    troubles = await hub.panels.troubles(panel_ids=[PANEL], open_only=False)
    assert [t.kind for t in troubles] == ["seq_reset"]
    assert await hub.alarms.count() == 1
