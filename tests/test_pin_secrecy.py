"""Household PINs never leave the hub: not in exports, files, answers or logs.

A real hub with its web server, on Mosquitto, with the example registry in a file of its
own; an admin exports and imports over HTTP, and households cancel through real panels.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import shutil
import sqlite3
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from devices.panel import ReferencePanel
from devices.protocol import ReceiptStatus, canonical_json
from devices.topics import event_topic, receipt_topic
from hub.passwords import hash_password
from hub.storage.db import Database
from tests.conftest import EXAMPLE_REGISTRY, HubRunner, db_url_of
from tests.legacy_schema import make_legacy_file
from tests.mqtt_probe import MqttProbe
from tests.test_api import PASSWORD, login

pytestmark = pytest.mark.asyncio

PANEL, UNIT, HOUSEHOLD = "p-0001-02", "u-0001", "h-02"
PIN, DURESS = "7468", "1791"  # the example's, for u-0001/h-02
NEW_PIN = "2580"
# What a LogRecord holds of its own: anything else on a record came with `extra`.
_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


@pytest.fixture
def example_pins(registry) -> set[str]:
    """Every PIN and duress PIN of the example registry."""
    pins = {
        pin
        for unit in registry.units
        for h in unit.households
        for pin in (h.pin, h.duress_pin)
        if pin is not None
    }
    assert {PIN, DURESS} <= pins and NEW_PIN not in pins
    return pins


def pins_in(text: str, pins: set[str]) -> set[str]:
    """The PINs written in the text as a value of their own (not inside a longer number)."""
    return {pin for pin in pins if re.search(rf"(?<![0-9A-Za-z.]){pin}(?![0-9A-Za-z])", text)}


def saved_registry(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """A registry file's text and its households."""
    text = path.read_text(encoding="utf-8")
    return text, [h for unit in yaml.safe_load(text)["units"] for h in unit["households"]]


def logged(records: list[logging.LogRecord]) -> str:
    """What the records say: messages and every `extra` field."""
    return "\n".join(
        " ".join([r.getMessage(), *(str(v) for k, v in vars(r).items() if k not in _RECORD_KEYS)])
        for r in records
    )


@pytest.fixture
async def hub(mosquitto, tmp_path, registry, db_target):
    """A hub serving HTTP whose registry file is a copy of the example, and an admin."""
    registry_file = tmp_path / "registry.yaml"
    shutil.copyfile(EXAMPLE_REGISTRY, registry_file)
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    hub = await runner.start(registry=str(registry_file))
    pw = await asyncio.to_thread(hash_password, PASSWORD)
    await hub.accounts.add_user("admin", pw, "admin", (), None, hub.clock.now_ms())
    yield hub
    await runner.stop()


@pytest.fixture
async def panel(mosquitto, tmp_path):
    """The reference panel of u-0001/h-02, connected."""
    made = ReferencePanel(
        PANEL,
        mosquitto.host,
        mosquitto.port,
        state_dir=tmp_path / "panels",
        username=PANEL,
        household_id=HOUSEHOLD,
        unit_id=UNIT,
        retry_initial_s=0.5,
    )
    await asyncio.to_thread(made.start)
    yield made
    await asyncio.to_thread(made.stop)


async def receipt_of(pending):
    receipt = await asyncio.to_thread(pending.wait, 5)
    assert receipt is not None, "no receipt"
    return receipt


async def raise_alarm(panel: ReferencePanel) -> str:
    receipt = await receipt_of(panel.raise_alarm("burglary"))
    assert receipt.status == ReceiptStatus.ACCEPTED and receipt.alarm_id
    return receipt.alarm_id


async def test_exports_and_answers_carry_no_pin_nor_its_hash(hub, example_pins, caplog):
    caplog.set_level(logging.DEBUG)
    admin, _ = await login(hub, "admin", over_http=True)
    async with aclosing(admin):
        exported = await admin.get("/api/registry")
        table = await admin.get("/api/registry/households.csv")
        households = await admin.get("/api/households")
    assert exported.status_code == table.status_code == households.status_code == 200
    for answer in (exported, table, households):
        assert pins_in(answer.text, example_pins) == set(), answer.request.url
        assert "scrypt" not in answer.text and "pin_hash" not in answer.text

    # They still say which households have a PIN: h-07 and h-10 have no duress PIN.
    data = yaml.safe_load(exported.text)
    first = {h["id"]: h for h in data["units"][0]["households"]}
    assert first["h-01"]["pin_set"] is True and first["h-01"]["duress_pin_set"] is True
    assert "duress_pin_set" not in first["h-07"]
    rows = {(r["unit_id"], r["household_id"]): r for r in csv.DictReader(io.StringIO(table.text))}
    assert (rows[UNIT, "h-01"]["pin"], rows[UNIT, "h-01"]["duress_pin"]) == ("set", "set")
    assert (rows[UNIT, "h-10"]["pin"], rows[UNIT, "h-10"]["duress_pin"]) == ("set", "")

    # Nor does the hub hold them: only salted hashes, each its own.
    held = [h for unit in hub.registry.units for h in unit.households]
    assert all(h.pin is None and h.duress_pin is None for h in held)
    assert len({h.pin_hash for h in held}) == len(held)
    assert pins_in(logged(caplog.records), example_pins) == set()


async def test_an_export_imported_back_keeps_every_pin_and_the_duress_pin(
    hub, panel, example_pins, caplog
):
    caplog.set_level(logging.DEBUG)
    admin, csrf = await login(hub, "admin", over_http=True)
    async with aclosing(admin):
        exported = (await admin.get("/api/registry")).text
        again = await admin.put("/api/registry", content=exported, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 200, again.text
    assert pins_in(again.text, example_pins) == set()

    cancelled = await raise_alarm(panel)
    receipt = await receipt_of(panel.cancel(cancelled, PIN))
    assert receipt.status == ReceiptStatus.ACCEPTED, receipt.error
    assert (await hub.alarms.get(cancelled)).state == "cancelled"

    forced = await raise_alarm(panel)
    receipt = await receipt_of(panel.cancel(forced, DURESS))
    assert receipt.status == ReceiptStatus.ACCEPTED, "it looks like a cancel"
    alarm = await hub.alarms.get(forced)
    assert alarm.state == "raised" and alarm.duress
    timeline = await hub.alarms.timeline(forced)
    assert "duress" in [e.entry for e in timeline]
    assert any(e.entry == "step_fired" and e.detail["name"] == "police" for e in timeline)

    # The file the hub wrote holds the hashes, so the PINs outlive a restart; never a PIN.
    _, saved = saved_registry(Path(hub.settings.registry))
    assert not [h for h in saved if "pin" in h or "duress_pin" in h]
    assert len(saved) == 30 and all(h["pin_hash"].startswith("scrypt$") for h in saved)
    assert pins_in(logged(caplog.records), example_pins) == set()


async def test_a_new_pin_in_a_csv_replaces_the_old_one(hub, panel, example_pins):
    duress_before = hub.registry.household(UNIT, HOUSEHOLD).duress_pin_hash
    admin, csrf = await login(hub, "admin", over_http=True)
    async with aclosing(admin):
        table = (await admin.get("/api/registry/households.csv")).text
        row = next(line for line in table.splitlines() if line.startswith(f"{UNIT},{HOUSEHOLD},"))
        assert row.endswith(",set,set")
        changed = table.replace(row, row.removesuffix(",set,set") + f",{NEW_PIN},set")
        imported = await admin.put(
            "/api/registry/households.csv", content=changed, headers={"X-CSRF-Token": csrf}
        )
        assert imported.status_code == 200, imported.text

        alarm_id = await raise_alarm(panel)
        old = await receipt_of(panel.cancel(alarm_id, PIN))
        assert old.status == ReceiptStatus.REJECTED and old.error.startswith("wrong_pin:")
        new = await receipt_of(panel.cancel(alarm_id, NEW_PIN))
        assert new.status == ReceiptStatus.ACCEPTED, new.error
        assert (await hub.alarms.get(alarm_id)).state == "cancelled"
        assert hub.registry.household(UNIT, HOUSEHOLD).duress_pin_hash == duress_before

        # The refused cancel is in the admins' log of refused messages, without its PIN.
        refused = await admin.get("/api/rejected")
    assert refused.status_code == 200
    cancel = next(r for r in refused.json() if r["reason"] == "wrong_pin")
    assert '"pin":"(hidden)"' in cancel["payload_excerpt"]
    assert pins_in(refused.text, example_pins | {NEW_PIN}) == set()

    text, saved = saved_registry(Path(hub.settings.registry))
    assert not [h for h in saved if "pin" in h or "duress_pin" in h]
    assert pins_in(text, {NEW_PIN}) == set()


async def test_the_pins_a_household_types_are_not_kept_in_the_database(hub, panel, mosquitto):
    # The cancel and the duress cancel go through as always, and a repeat of a cancel is
    # still a repeat; the stored events hold a digest, which the database alone cannot undo.
    cancelled = await raise_alarm(panel)
    assert (await receipt_of(panel.cancel(cancelled, PIN))).status == ReceiptStatus.ACCEPTED
    forced = await raise_alarm(panel)
    assert (await receipt_of(panel.cancel(forced, DURESS))).status == ReceiptStatus.ACCEPTED
    assert (await hub.alarms.get(forced)).duress

    stored = await hub.db.read(
        lambda conn: list(
            conn.execute(
                sa.text("SELECT payload FROM panel_events WHERE type = 'cancel' ORDER BY seq")
            ).scalars()
        )
    )
    assert len(stored) == 2
    assert pins_in("\n".join(stored), {PIN, DURESS}) == set()
    digests = [json.loads(text)["pin"] for text in stored]
    assert all(d.startswith("hmac-sha256:") for d in digests) and digests[0] != digests[1]
    key_file = Path(hub.settings.db_path).with_name("hub-pin.key")
    assert key_file.stat().st_mode & 0o777 == 0o600

    # The panel's own copy of its duress cancel (the latest), sent again as it sent it:
    # a duplicate of the stored one, not a refusal.
    again = max((json.loads(text) for text in stored), key=lambda event: event["seq"])
    repeat = {**again, "pin": DURESS}
    probe = MqttProbe(mosquitto.host, mosquitto.port, "test-cancel-repeat", [receipt_topic(PANEL)])
    try:
        await asyncio.to_thread(probe.publish, event_topic(PANEL), canonical_json(repeat))
        (answer,) = await asyncio.to_thread(probe.wait_for, receipt_topic(PANEL), 1, 10)
    finally:
        probe.close()
    assert answer["status"] == "duplicate" and answer["alarm_id"] == forced


async def test_a_database_from_before_loses_the_pins_its_cancels_held(tmp_path):
    # A hub of the version before kept each cancel as the panel sent it, PIN and all.
    path = tmp_path / "old.db"
    make_legacy_file(path, up_to=11)
    conn = sqlite3.connect(path)
    cancel = canonical_json({"alarm_id": "a-1", "pin": DURESS, "seq": 9, "ts": 1, "type": "cancel"})
    conn.execute(
        "INSERT INTO panel_events (panel_id, seq, type, payload, status, received_at)"
        " VALUES (?, 9, 'cancel', ?, 'accepted', 1)",
        (PANEL, cancel),
    )
    conn.commit()
    conn.close()

    db = Database(path)
    await db.open()
    try:
        payload = await db.read(
            lambda conn: conn.execute(sa.text("SELECT payload FROM panel_events")).scalar_one()
        )
    finally:
        await db.close()
    assert json.loads(payload) == {**json.loads(cancel), "pin": "removed"}
    assert pins_in(payload, {DURESS}) == set()
