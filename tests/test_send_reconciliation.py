"""Sends in doubt are made known: the hub asks the provider, and nobody is told twice or never.

The hub runs as a real process (killed with SIGKILL) against a real Mosquitto, sending
through the real `twilio` client to the local gateway, which answers Twilio's list
requests as Twilio does. The gateway takes some requests and then keeps the hub waiting
(the provider has the message; the hub never hears so), and holds others before taking
them (the request never reached the provider's books).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from devices.panel import ReferencePanel
from simulator.twilio_gateway import TwilioGateway
from tests.brokers import free_port
from tests.test_crash import CrashableHub

TAKEN_THEN_SILENT = 3


@pytest.fixture
def panel(tmp_path, mosquitto):
    p = ReferencePanel(
        "p-0002-04", "127.0.0.1", mosquitto.port, state_dir=tmp_path / "panel",
        username="p-0002-04", household_id="h-04", unit_id="u-0002",
    )  # fmt: skip
    p.start()
    yield p
    p.stop()


@pytest.fixture
def gateway():
    g = TwilioGateway(port=free_port(), callback_delay_s=0.01).start()
    yield g
    g.stop()


def twilio_env(gateway: TwilioGateway, timeout_s: float) -> dict[str, str]:
    return {
        "TWILIO_ACCOUNT_SID": gateway.account_sid,
        "TWILIO_AUTH_TOKEN": gateway.auth_token,
        "TWILIO_FROM": "+15550001000",
        "TENHUB_TWILIO_API_BASE": gateway.base_url,
        "TENHUB_TWILIO_TIMEOUT_S": str(timeout_s),
    }


def until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s"
        time.sleep(0.05)
    return found


def sms_rows(hub: CrashableHub, alarm_id: str) -> list[tuple[int, str, str, str, str | None]]:
    """(id, recipient, text, status, provider id) of every SMS of the alarm."""
    rows = hub.query(
        "SELECT id, recipient, payload, status, provider_id FROM outbox"
        " WHERE alarm_id = :a AND channel = 'sms' ORDER BY id",
        a=alarm_id,
    )
    return [(i, to, json.loads(payload)["text"], st, sid) for i, to, payload, st, sid in rows]


def timeline_count(hub: CrashableHub, alarm_id: str, entry: str) -> int:
    return hub.query(
        "SELECT count(*) FROM alarm_timeline WHERE alarm_id = :a AND entry = :e",
        a=alarm_id,
        e=entry,
    )[0][0]


def test_a_hub_killed_mid_send_tells_every_recipient_exactly_once_after_restart(
    tmp_path, mosquitto, gateway, panel, db_target
):
    # The first sends are taken and never answered; the rest are held before being taken.
    gateway.store.hang_next(TAKEN_THEN_SILENT, 120)
    gateway.store.stall_next(100, 120)
    hub = CrashableHub(tmp_path, mosquitto.port, db_target, **twilio_env(gateway, timeout_s=60))
    try:
        hub.start()
        alarm_id = panel.raise_alarm("burglary").wait(5).alarm_id
        # The first step's SMS all claimed (each is sending), three of them at the gateway.
        first_step = until(
            lambda: (rows := sms_rows(hub, alarm_id))
            and all(status == "sending" for *_, status, _ in rows)
            and len(gateway.store.messages()) == TAKEN_THEN_SILENT
            and rows,
            10, "the first step's SMS in flight",
        )  # fmt: skip
        assert len(first_step) > TAKEN_THEN_SILENT
        hub.kill()  # between the requests and their answers
        time.sleep(0.5)  # the held requests see their client gone: nothing is created
        assert len(gateway.store.messages()) == TAKEN_THEN_SILENT
        gateway.store.reset_faults()

        hub.start()
        settled = until(
            lambda: (rows := sms_rows(hub, alarm_id))
            and all(status == "sent" for *_, status, _ in rows)
            and rows,
            30, "every SMS sent or confirmed",
        )  # fmt: skip
        told = Counter((m.to, m.body) for m in gateway.store.messages())
        wanted = Counter((recipient, text) for _, recipient, text, _, _ in settled)
        twice = sum(1 for n in told.values() if n > 1)
        print(
            f"\nreconciled after SIGKILL: {len(first_step)} SMS in flight,"
            f" {TAKEN_THEN_SILENT} confirmed, {len(first_step) - TAKEN_THEN_SILENT} resent;"
            f" recipients told {len(told)}/{len(wanted)}, told twice {twice}"
        )
        assert told == wanted, "every message at the gateway exactly once"
        assert twice == 0
        sids = {m.sid for m in gateway.store.messages()}
        assert {provider_id for *_, provider_id in settled} == sids
        assert timeline_count(hub, alarm_id, "notification_confirmed") == TAKEN_THEN_SILENT
        assert timeline_count(hub, alarm_id, "notification_resent") == (
            len(first_step) - TAKEN_THEN_SILENT
        )
    finally:
        hub.stop()


def test_a_send_that_timed_out_is_confirmed_not_repeated_while_the_hub_runs(
    tmp_path, mosquitto, gateway, panel, db_target
):
    # The provider takes the first SMS and answers long after the hub's 1 s timeout.
    gateway.store.hang_next(1, 10)
    hub = CrashableHub(tmp_path, mosquitto.port, db_target, **twilio_env(gateway, timeout_s=1))
    try:
        hub.start()
        alarm_id = panel.raise_alarm("burglary").wait(5).alarm_id
        until(
            lambda: any(s == "unknown" for *_, s, _ in sms_rows(hub, alarm_id)),
            10, "a send marked unknown after the timeout",
        )  # fmt: skip
        rows = until(
            lambda: (rows := sms_rows(hub, alarm_id))
            and timeline_count(hub, alarm_id, "notification_confirmed") == 1
            and rows,
            20, "the unknown send confirmed",
        )  # fmt: skip
        confirmed = [r for r in rows if r[4] is not None and r[3] == "sent"]
        told = Counter((m.to, m.body) for m in gateway.store.messages())
        assert len(confirmed) == len(rows)
        assert all(n == 1 for n in told.values()), told
        assert timeline_count(hub, alarm_id, "notification_resent") == 0
    finally:
        hub.stop()
