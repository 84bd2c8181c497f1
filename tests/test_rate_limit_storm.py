"""A storm of alarms meets the per-phone limit: however many alarms go off at the same
instant, no phone receives more SMS in a window than the limit allows, and every message
held back is on its alarm's timeline as held.

A real Mosquitto, twenty reference panels of one zone, the real twilio client against the
local gateway; the hub's clock is moved by the test. What reached each phone is read from
the gateway's own record.
"""

from __future__ import annotations

import asyncio
import collections

import pytest

from devices.panel import ReferencePanel
from devices.protocol import ReceiptStatus
from hub.clock import ManualClock
from simulator.twilio_gateway import TwilioGateway
from tests.conftest import HubRunner, first_step_recorded
from tests.waiting import until

pytestmark = pytest.mark.asyncio

HUB_NUMBER = "+15550001000"
PATROL = ("+15550009001", "+15550009002")  # the zone's patrol, told of every alarm
ZONE = [f"p-0001-{i:02d}" for i in range(1, 11)] + [f"p-0002-{i:02d}" for i in range(1, 11)]
LIMIT = 5  # SMS per phone in any 15 minutes, the hub's default
WINDOW_S = 15 * 60


@pytest.fixture
def gateway():
    gw = TwilioGateway(phone_number=HUB_NUMBER, callback_delay_s=0.01)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
async def runner(mosquitto, tmp_path, registry, gateway):
    r = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
        twilio_timeout_s=2.0,
    )
    r.clock = ManualClock()
    yield r
    await r.stop()


@pytest.fixture
def zone_panels(mosquitto, tmp_path, registry):
    made = []
    for panel_id in ZONE:
        place = registry.panel_place(panel_id)
        panel = ReferencePanel(
            panel_id,
            mosquitto.host,
            mosquitto.port,
            state_dir=tmp_path / "panels",
            username=panel_id,
            household_id=place.household.id,
            unit_id=place.unit.id,
            retry_initial_s=0.5,
        )
        panel.start()
        made.append(panel)
    yield made
    for panel in made:
        panel.stop()


async def storm(hub, panels) -> list[str]:
    """Every panel raises an alarm at once; their alarm ids, once each first step fired."""
    pending = [panel.raise_alarm("burglary") for panel in panels]
    receipts = await asyncio.gather(*(asyncio.to_thread(p.wait, 10) for p in pending))
    assert all(r is not None and r.status == ReceiptStatus.ACCEPTED for r in receipts)
    ids = [r.alarm_id for r in receipts]
    assert len(set(ids)) == len(panels), "one alarm per panel"
    for alarm_id in ids:
        await first_step_recorded(hub, alarm_id, timeout=10)
    return ids


async def outbox_rows(hub, alarm_ids) -> list[dict]:
    return [row for a in alarm_ids for row in await hub.outbox.for_alarm(a)]


async def settled(hub, alarm_ids) -> bool:
    """Every SMS of these alarms has gone out or is held back by the limit."""
    rows = [r for r in await outbox_rows(hub, alarm_ids) if r["channel"] == "sms"]
    return bool(rows) and all(
        r["status"] == "sent" or (r["status"] == "queued" and r["limited_at"]) for r in rows
    )


def sms_per_phone(gateway) -> collections.Counter[str]:
    return collections.Counter(m.to for m in gateway.messages())


async def test_twenty_alarms_at_once_give_no_phone_more_than_its_limit(
    runner, gateway, zone_panels
):
    hub = await runner.start()
    alarms = await storm(hub, zone_panels)
    await until(lambda: settled(hub, alarms), timeout=20, message="every SMS sent or held")

    received = sms_per_phone(gateway)
    over = {phone: n for phone, n in received.items() if n > LIMIT}
    assert over == {}, f"phones told more than {LIMIT} times in 15 minutes: {over}"
    rows = [r for r in await outbox_rows(hub, alarms) if r["channel"] == "sms"]
    told = collections.Counter(r["recipient"] for r in rows)
    assert all(told[p] == len(ZONE) for p in PATROL), "the patrol is told of every alarm"
    assert received == {p: min(n, LIMIT) for p, n in told.items()}, (
        "each phone hears of the first alarms up to its limit, none held back needlessly"
    )
    sent = collections.Counter(r["recipient"] for r in rows if r["status"] == "sent")
    assert sent == received, "the outbox records what the gateway received"

    for alarm_id in alarms:
        held = {
            r["recipient"]
            for r in await hub.outbox.for_alarm(alarm_id)
            if r["channel"] == "sms" and r["status"] == "queued"
        }
        said = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "notification_held"]
        assert {e.detail["recipient"] for e in said} == held, f"{alarm_id}: held, and says so"
        assert all("rate limit" in e.detail["reason"] for e in said)

    # After a restart the outbox still counts what went out: nothing more goes now.
    await runner.stop()
    hub = await runner.start()
    await hub.sender.run_once()
    await asyncio.sleep(0.3)  # a quiet moment: whatever would go, would go now
    assert sms_per_phone(gateway) == received

    # The window passes: the held messages fall due together, and again the limit holds.
    runner.clock.advance(WINDOW_S + 1)
    await hub.sender.run_once()
    await until(
        lambda: all(sms_per_phone(gateway)[p] >= 2 * LIMIT for p in PATROL),
        timeout=20,
        message="the next five reach each patrol phone",
    )
    await hub.sender.run_once()
    await asyncio.sleep(0.3)
    later = sms_per_phone(gateway)
    over = {phone: n for phone, n in later.items() if n - received[phone] > LIMIT}
    assert over == {}, f"phones told more than {LIMIT} times in the second window: {over}"
