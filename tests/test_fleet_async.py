"""The asyncio fleet: paho on the loop, virtual panels against a real hub, a thousand panels.

The MQTT client's stories run against a real Mosquitto and the embedded broker; the panel
stories against a real hub on Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from devices.protocol import AlarmState, ReceiptStatus, canonical_json
from devices.signing import sign_event, verify_event
from devices.topics import event_topic, receipt_topic, status_topic
from hub.registry.model import parse_registry
from simulator.fleet_async import AsyncFleet
from simulator.paho_asyncio import AsyncPahoClient, ConnectRefused, Message
from simulator.registry_gen import make_registry
from simulator.virtual_panel import VirtualPanel
from tests.brokers import Mosquitto
from tests.conftest import HubRunner, db_url_of
from tests.waiting import until, within

UNIT1 = [f"p-0001-{i:02d}" for i in range(1, 11)]


async def next_message(client: AsyncPahoClient, timeout: float = 20.0) -> Message:
    assert client.messages is not None
    return await within(client.messages.get(), f"a message for {client.client_id}", timeout)


def lite(broker, client_id: str, **options) -> AsyncPahoClient:
    # The embedded broker refuses clients without a user name.
    return AsyncPahoClient(client_id, broker.host, broker.port, username=client_id, **options)


# --- paho on the loop, against real brokers -----------------------------------------------


async def test_qos1_round_trip_and_the_last_will_on_a_dropped_connection(broker):
    watcher = lite(broker, "watcher")
    sender = lite(broker, "sender", will=("lite/will/sender", b'{"state":"offline"}', 1, True))
    await watcher.connect()
    await sender.connect()
    assert await watcher.subscribe([("lite/#", 1)]) == [1]
    sock = sender.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "Nagle must be off"

    # Non-ASCII topic and a payload long enough for a 3-byte remaining length.
    payload = "警报".encode() * 10_000
    await sender.publish("lite/ünit/事件", payload, qos=1, wait=True, timeout=20)
    got = await next_message(watcher)
    assert (got.topic, got.payload, got.qos) == ("lite/ünit/事件", payload, 1)
    assert sender.unacknowledged == 0

    await sender.abort()  # no DISCONNECT: the broker publishes the Will
    will = await next_message(watcher)
    assert (will.topic, will.payload) == ("lite/will/sender", b'{"state":"offline"}')

    await watcher.disconnect()
    assert not watcher.connected


async def test_a_refused_login_says_why(tmp_path: Path):
    passwords = tmp_path / "passwords"
    command = ["mosquitto_passwd", "-b", "-c", str(passwords), "p-0001-01", "s3cret"]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
    broker = Mosquitto(
        tmp_path / "mosquitto",
        # Started as root, Mosquitto would switch to its own user, who cannot read the file.
        extra_config=(f"allow_anonymous false\npassword_file {passwords}\n"),
    )
    await asyncio.to_thread(broker.start)
    try:
        good = AsyncPahoClient("p-0001-01", broker.host, broker.port,
                          username="p-0001-01", password="s3cret")  # fmt: skip
        await good.connect()
        await good.disconnect()
        bad = AsyncPahoClient("p-0001-01", broker.host, broker.port,
                         username="p-0001-01", password="guess")  # fmt: skip
        with pytest.raises(ConnectRefused, match="Not authorized") as refused:
            await bad.connect()
        assert refused.value.reason == "Not authorized"
        assert not bad.connected
    finally:
        broker.stop()


async def test_after_a_broker_crash_it_resubscribes_and_resends_the_unacknowledged(mosquitto):
    # A clean session: the broker forgets the subscription, only the client can renew it.
    client = lite(mosquitto, "crash-survivor", clean_session=True, reconnect_initial_s=0.05)
    await client.connect()
    await client.subscribe([("crash/#", 1)])

    mosquitto.proc.send_signal(19)  # SIGSTOP: the publish goes out but is never acknowledged
    publishing = asyncio.create_task(client.publish("crash/x", b"m1", 1, wait=True, timeout=15))
    await until(
        lambda: client.unacknowledged == 1 and not client.client.want_write(),
        timeout=20,
        message="the publish handed to the socket",
    )
    assert not publishing.done()
    mosquitto.proc.kill()
    mosquitto.proc.wait()
    await asyncio.to_thread(mosquitto.restart)

    await publishing  # resent after the reconnect, then acknowledged
    got = await next_message(client, timeout=10)
    assert (got.topic, got.payload) == ("crash/x", b"m1"), "subscription renewed before the resend"
    assert client.reconnects == 1 and client.unacknowledged == 0

    # A graceful stop too; what is published while the broker is away goes out after.
    await asyncio.to_thread(mosquitto.stop)
    await until(lambda: not client.connected)
    publishing = asyncio.create_task(client.publish("crash/y", b"m2", 1, wait=True, timeout=15))
    await asyncio.to_thread(mosquitto.start)
    await publishing
    got = await next_message(client, timeout=10)
    assert (got.topic, got.payload) == ("crash/y", b"m2")
    assert client.reconnects == 2
    await client.disconnect()


# --- virtual panels against a real hub --------------------------------------------------


@pytest.fixture
async def hub_on_mosquitto(mosquitto, tmp_path: Path, registry, db_target):
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-test-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    hub = await runner.start()
    yield hub
    await runner.stop()


async def start_panels(broker, registry, panel_ids, **options) -> list[VirtualPanel]:
    panels = []
    for panel_id in panel_ids:
        place = registry.panel_place(panel_id)
        panel = VirtualPanel(
            panel_id, broker.host, broker.port, username=panel_id,
            household_id=place.household.id, unit_id=place.unit.id,
            **{"retry_initial_s": 0.5, **options},
        )  # fmt: skip
        await panel.start()
        panels.append(panel)
    return panels


async def test_an_alarm_is_receipted_and_sounds_the_neighbours_until_cancelled(
    hub_on_mosquitto, mosquitto, registry
):
    hub = hub_on_mosquitto
    key = (await hub.credentials.provision(UNIT1[0], hub.clock.now_ms())).hmac_key
    await hub.key_refresher.run_once()
    (raiser,) = await start_panels(mosquitto, registry, UNIT1[:1], hmac_key=key)
    raiser.clock_offset_ms = -120_000  # its clock is two minutes slow
    neighbours = await start_panels(mosquitto, registry, UNIT1[1:])
    sniffer = lite(mosquitto, "sniffer")
    await sniffer.connect()
    await sniffer.subscribe([(event_topic(raiser.panel_id), 1)])
    try:
        pending = raiser.raise_alarm("burglary")
        receipt = await pending.wait(20)
        assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED, receipt
        assert pending.resent == 1 and abs(raiser.clock_offset_ms) < 5_000, "clock corrected"
        # How fast the receipt came is the bench's to measure; here, that it was measured.
        assert pending.latency_s is not None and pending.latency_s > 0
        alarm_id = receipt.alarm_id
        await until(lambda: all(alarm_id in p.sounding for p in neighbours), timeout=20)
        assert not raiser.buzzer_on, "its own alarm does not sound on the raiser's panel"
        assert all(alarm_id in p.alerted_at for p in neighbours)

        first, second = [json.loads((await next_message(sniffer)).payload) for _ in range(2)]
        assert verify_event(first, key) and verify_event(second, key)
        assert second["seq"] == pending.seq == first["seq"] + 1

        pin = registry.household("u-0001", "h-01").pin
        cancelled = await raiser.cancel(alarm_id, pin).wait(20)
        assert cancelled is not None and cancelled.status == ReceiptStatus.ACCEPTED
        await until(lambda: not any(p.buzzer_on for p in neighbours))
        assert (await hub.alarms.get(alarm_id)).state == AlarmState.CANCELLED

        await until(lambda: hub.presence.online_count() == 10)
        await neighbours[0].power_off()
        await until(lambda: hub.presence.get(neighbours[0].panel_id).state == "offline")
    finally:
        await sniffer.disconnect()
        for panel in [raiser, *neighbours]:
            await panel.stop()


async def test_an_unanswered_event_repeats_byte_for_byte_until_its_receipt(
    embedded_broker, registry
):
    # No hub: the test reads the copies and answers the receipt itself.
    (panel,) = await start_panels(embedded_broker, registry, ["p-0001-02"], retry_initial_s=0.2)
    hub = lite(embedded_broker, "stand-in-hub")
    await hub.connect()
    await hub.subscribe([(event_topic("p-0001-02"), 1), (status_topic("p-0001-02"), 1)])
    try:
        pending = panel.send_event("test")
        copies = []
        while len(copies) < 3:
            message = await next_message(hub)
            if message.topic == event_topic("p-0001-02"):
                copies.append(message.payload)
        assert copies[0] == copies[1] == copies[2] == canonical_json(pending.payload).encode()
        assert not pending.done and pending.attempts >= 3
        assert abs(pending.seq - time.time() * 1000) < 60_000, "seq starts from the clock"

        receipt = {"seq": pending.seq, "status": "accepted"}
        await hub.publish(receipt_topic("p-0001-02"), json.dumps(receipt).encode(), 1)
        answered = await pending
        assert answered is not None and answered.status == ReceiptStatus.ACCEPTED
        assert panel.send_event("test").seq == pending.seq + 1
    finally:
        await hub.disconnect()
        await panel.stop()


# --- a thousand panels --------------------------------------------------------------------


async def test_a_thousand_panels_come_online_and_one_alarm_reaches_its_nine_neighbours(
    mosquitto, tmp_path: Path, db_target
):
    registry, problems = parse_registry(make_registry(100), "generated")
    assert registry is not None and problems == []
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-test-hub@"),
        tmp_path / "hub.db",
        registry,
        db_url=db_url_of(db_target),
    )
    hub = await runner.start()
    fleet = AsyncFleet(registry, mosquitto.host, mosquitto.port, heartbeat_s=10)
    try:
        # How fast they connect is the bench's to measure (its connect_s); here, that all do.
        failed = await fleet.start()
        assert failed == {} and len(fleet) == 1000
        await until(
            lambda: hub.presence.online_count() == 1000,
            timeout=30,
            message="the hub seeing all 1,000 panels online",
        )

        raiser, *neighbours = fleet.unit_panels("u-000042")
        receipt = await raiser.raise_alarm("fire").wait(20)
        assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
        await until(
            lambda: all(receipt.alarm_id in p.sounding for p in neighbours),
            timeout=20,
            message="the raiser's nine neighbours sounding",
        )
        await asyncio.sleep(0.3)  # a quiet period: a wrongly routed alert would arrive in it
        stats = fleet.stats()
        assert (stats.online, stats.alarms_raised, stats.receipts) == (1000, 1, 1)
        assert stats.buzzers_sounding == 9, "the raiser's nine neighbours, nobody else"
        assert stats.receipt_latency_median_s is not None
    finally:
        await fleet.stop()
        await runner.stop()
    assert fleet.stats().online == 0


# --- signing and generated registries ---------------------------------------------------


def test_a_signed_event_verifies_and_any_change_breaks_it():
    key = b"k" * 32
    event = {"type": "alarm", "seq": 7, "ts": 1_700_000_000_000, "kind": "fire"}
    signed = sign_event(event, key)
    assert "sig" not in event and len(signed["sig"]) == 64
    assert verify_event(signed, key)
    assert verify_event(dict(reversed(signed.items())), key), "key order does not matter"
    assert not verify_event({**signed, "kind": "gas"}, key)
    assert not verify_event({**signed, "extra": 1}, key)
    assert not verify_event(signed, b"another key")
    assert not verify_event(event, key), "unsigned"
    assert not verify_event({**signed, "sig": signed["sig"].upper()}, key)
    assert sign_event(signed, key) == signed, "re-signing replaces the old sig"


def test_a_generated_registry_of_a_thousand_units_is_clean_and_quick_to_make():
    started = time.perf_counter()
    text = make_registry(1000)
    assert time.perf_counter() - started < 0.5
    assert make_registry(1000) == text and make_registry(1000, seed=1) != text

    registry, problems = parse_registry(text, "generated")
    assert problems == [] and registry is not None
    assert registry.counts() == {
        "units": 1000, "households": 10_000, "panels": 10_000,
        "patrols": 50, "police_desks": 50, "command": 1,
    }  # fmt: skip
    phones = [p for u in registry.units for h in u.households for p in h.phones]
    assert all(len(registry.who_has_phone(p)) == 1 for p in phones), "every phone is unique"
    households = [h for u in registry.units for h in u.households]
    assert all(h.pin and h.duress_pin and h.pin != h.duress_pin for h in households)
    assert {len(registry.patrols_in_zone(u.zone)) for u in registry.units} == {1}
    assert all(len(p.members) == 2 for p in registry.patrols)
    assert all(registry.desks_for_zone(u.zone) for u in registry.units)
    assert {u.key_households[0].split("/")[0] for u in registry.units[:3]} == {
        u.id for u in registry.units[:3]
    }
    assert all(
        30.4 < u.location.lat < 30.7 and 114.1 < u.location.lon < 114.5 for u in registry.units
    )
    assert make_registry(7, zones=3).count("  - id: u-") == 7


def test_a_registry_asks_for_a_sensible_size():
    with pytest.raises(ValueError, match="units"):
        make_registry(0)
    with pytest.raises(ValueError, match="zones"):
        make_registry(5, zones=6)


def test_make_registry_writes_yaml_to_stdout_and_a_summary_to_stderr(tmp_path: Path):
    from typer.testing import CliRunner

    from simulator.cli_fleet import fleet_app

    result = CliRunner().invoke(fleet_app, ["make-registry", "--units", "3", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout == make_registry(3, seed=4)
    assert "3 units, 30 households and panels, 1 zone, seed 4" in result.stderr

    out = tmp_path / "registry.yaml"
    result = CliRunner().invoke(fleet_app, ["make-registry", "--units", "3", "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert parse_registry(out.read_text(), str(out))[1] == []
