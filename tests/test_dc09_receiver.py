"""A household's commercial alarm panel reports to the hub over SIA DC-09, as to a receiving
centre, and its alarms go where a native panel's go.

The transmitter is `my-dc09-spt` (the panel's side, by another author) where it can be;
where a test needs a frame no well-behaved panel sends (a stale clock, a garbled CRC, the
same message after a restart), the frame is built with the codec. The hub is real: a real
Mosquitto, the database of each kind, the local SMS gateway behind the twilio client.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime

import pytest
from my_dc09_spt.comm.transpath import TransPath
from my_dc09_spt.dc09_spt import dc09_spt
from my_dc09_spt.msg.dc05_msg import dc05_msg

from devices import dc09
from devices.dc09 import Dc09Message, Token
from hub.alarms.alarm_store import AlarmStore
from hub.registry.model import Registry, parse_registry
from hub.storage.db import Database
from simulator.hub_process import HubProcess
from simulator.twilio_gateway import TwilioGateway
from tests.brokers import free_port
from tests.conftest import EXAMPLE_REGISTRY, HubRunner, db_url_of
from tests.waiting import until

HUB_NUMBER = "+15550001000"
DESK = "+15550009911"
PATROL_1 = "+15550009001"
CLEAR = "1234"  # u-0001/h-02, panel p-0001-02: sends in clear
SEALED = "5678"  # u-0001/h-03, panel p-0001-03: AES-128
KEY = b"0123456789ABCDEF"
NEIGHBOUR = "p-0001-01"


def dc09_registry(registry: Registry) -> Registry:
    """The example registry, with two households whose panels report over DC-09."""
    data = registry.model_dump(mode="json", exclude_none=True)
    households = data["units"][0]["households"]
    households[1]["dc09"] = {"account": CLEAR}
    households[2]["dc09"] = {"account": SEALED, "key": KEY.hex().upper()}
    return Registry.model_validate(data)


@pytest.fixture
def gateway():
    gw = TwilioGateway(phone_number=HUB_NUMBER, callback_delay_s=0.01)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
async def runner(mosquitto, tmp_path, registry, gateway, db_target):
    r = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        dc09_registry(registry),
        db_url=db_url_of(db_target),
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
        twilio_timeout_s=1.0,
        dc09_addr="127.0.0.1:0",
    )
    yield r
    await r.stop()


@pytest.fixture
async def hub(runner):
    return await runner.start()


@pytest.fixture
def neighbour(mosquitto, tmp_path, registry):
    """The reference panel of the DC-09 households' neighbour, listening to the unit."""
    from devices.panel import ReferencePanel

    place = registry.panel_place(NEIGHBOUR)
    panel = ReferencePanel(
        NEIGHBOUR,
        mosquitto.host,
        mosquitto.port,
        state_dir=tmp_path / "panels",
        username=NEIGHBOUR,
        household_id=place.household.id,
        unit_id=place.unit.id,
    )
    panel.start()
    yield panel
    panel.stop()


async def transmit(hub, account: str, nr: int, code: str, key: bytes | None = None, q="1"):
    """The panel's transmitter sends one Contact ID event; True when it took our ACK."""
    panel = dc09_spt(account, receiver=1, line=1)
    path = TransPath("127.0.0.1", hub.dc09.port, account, key=key, receiver=1, line=1)
    event = dc05_msg.dc05event(account, {"code": code, "q": q, "zone": "3"})
    # The transmitter blocks on its socket: it runs in a thread, as a panel would.
    return await asyncio.to_thread(panel.transfer_msg, nr, "ADM-CID", event, path)


def frame(seq: int, data: str, shift_s: float = 0, account: str = CLEAR) -> bytes:
    moment = datetime.fromtimestamp(int(time.time() + shift_s), UTC)
    return dc09.encode(
        Dc09Message(Token.ADM_CID, seq, account=account, data=data, receiver="1", timestamp=moment)
    )


async def exchange(hub, payload: bytes, wait_s: float = 5.0) -> Dc09Message | None:
    """Send raw bytes over TCP as a panel; the answer read back, or None if none came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.dc09.port)
    try:
        writer.write(payload)
        await writer.drain()
        try:
            async with asyncio.timeout(wait_s):
                return dc09.decode(await reader.readuntil(b"\r"))
        except TimeoutError:
            return None
    finally:
        writer.close()


async def alarms_of(hub, household_id: str):
    return [a for a in await hub.alarms.list_recent() if a.household_id == household_id]


async def test_a_burglary_is_stored_acked_sounds_the_unit_and_starts_the_ladder(
    hub, gateway, neighbour
):
    assert await transmit(hub, CLEAR, 1, "130")  # the panel took our ACK

    [alarm] = await alarms_of(hub, "h-02")
    assert (alarm.kind, alarm.state, alarm.panel_id) == ("burglary", "raised", "p-0001-02")
    await until(lambda: alarm.id in neighbour.sounding, message="the neighbour's buzzer")
    sms = await asyncio.to_thread(gateway.store.wait_for_messages, 1, PATROL_1, 15, strict=True)
    address = hub.registry.panel_place("p-0001-02").household.address
    assert address in sms[0].body, "the patrol is told which home"
    timeline = [e.entry for e in await hub.alarms.timeline(alarm.id)]
    assert timeline[:2] == ["raised", "step_fired"]


async def test_an_encrypted_fire_is_taken_and_a_wrong_key_is_told_duh(hub):
    assert await transmit(hub, SEALED, 1, "110", key=KEY)
    [alarm] = await alarms_of(hub, "h-03")
    assert alarm.kind == "fire"

    assert not await transmit(hub, SEALED, 2, "130", key=b"Z" * 16)
    assert [a.kind for a in await alarms_of(hub, "h-03")] == ["fire"]
    [refused] = [r for r in hub.rejects.recent() if r["topic"] == f"dc09/{SEALED}"]
    assert refused["reason"] == "undecryptable"


async def test_a_retransmission_is_acked_again_and_raises_no_second_alarm(hub, gateway):
    assert await transmit(hub, CLEAR, 7, "130")
    await asyncio.to_thread(gateway.store.wait_for_messages, 1, PATROL_1, 15, strict=True)
    assert await transmit(hub, CLEAR, 7, "130")  # the ACK was lost: the panel sends it again

    [alarm] = await alarms_of(hub, "h-02")
    timeline = [e.entry for e in await hub.alarms.timeline(alarm.id)]
    assert "repeated" not in timeline, "a copy is not a second press"
    await asyncio.sleep(0.5)  # time for a wrongly started second round of SMS
    assert len(gateway.messages(PATROL_1)) == 1


async def test_a_stale_timestamp_is_nakked_with_the_hubs_time_and_nothing_is_stored(hub):
    answer = await exchange(hub, frame(3, "#1234|1130 01 003", shift_s=-120))
    assert answer is not None and answer.token is Token.NAK
    assert abs(answer.timestamp.timestamp() - time.time()) < 5
    assert await alarms_of(hub, "h-02") == []


async def test_a_garbled_crc_gets_no_answer_and_nothing_is_stored(hub):
    garbled = bytearray(frame(4, "#1234|1130 01 003"))
    garbled[garbled.index(b"1130")] = ord("2")  # a burglary read as something else
    assert await exchange(hub, bytes(garbled), wait_s=1.0) is None
    assert await alarms_of(hub, "h-02") == []
    assert any(r["reason"] == "crc" for r in hub.rejects.recent())


async def test_an_unknown_account_is_told_duh(hub):
    answer = await exchange(hub, frame(5, "#9999|1130 01 003", account="9999"))
    assert answer is not None and answer.token is Token.DUH
    assert await hub.alarms.list_recent() == []


async def test_duress_goes_straight_to_the_police_and_sounds_no_buzzer(hub, gateway, neighbour):
    assert await transmit(hub, CLEAR, 1, "121")

    [alarm] = await alarms_of(hub, "h-02")
    assert (alarm.kind, alarm.duress) == ("panic", 1)
    # The police step fired in the transaction that stored the alarm, marked as duress.
    [police] = [s for s in await hub.alarms.steps(alarm.id) if s.outcome == "fired"]
    assert police.reason == "duress"
    await asyncio.to_thread(gateway.store.wait_for_messages, 1, DESK, 15, strict=True)
    timeline = [e.entry for e in await hub.alarms.timeline(alarm.id)]
    assert "duress" in timeline
    await asyncio.sleep(0.3)  # time for a wrongly sent unit alert to arrive
    assert not neighbour.buzzer_on, "under duress nobody's buzzer sounds"


async def test_a_trouble_opens_and_its_restore_closes_it_and_a_test_is_a_heartbeat(hub):
    assert await transmit(hub, CLEAR, 1, "137")  # tamper
    assert await transmit(hub, CLEAR, 2, "301")  # AC loss
    troubles = await hub.panels.troubles(panel_ids=["p-0001-02"])
    assert sorted(t.kind for t in troubles) == ["power_loss", "tamper"]

    assert await transmit(hub, CLEAR, 3, "301", q="3")  # AC restored
    assert [t.kind for t in await hub.panels.troubles(panel_ids=["p-0001-02"])] == ["tamper"]

    assert await transmit(hub, CLEAR, 4, "602")  # the periodic test
    assert hub.presence.get("p-0001-02").state == "online"
    assert await transmit(hub, CLEAR, 5, "401")  # opening: logged, nothing more
    assert await hub.alarms.list_recent() == []


async def test_a_message_over_udp_is_acked(hub):
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Panel(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(
        Panel, remote_addr=("127.0.0.1", hub.dc09.port)
    )
    try:
        transport.sendto(frame(9, "#1234|1100 01 001"))
        async with asyncio.timeout(5):
            answer = dc09.decode(await answers.get())
    finally:
        transport.close()
    assert (answer.token, answer.seq) == (Token.ACK, 9)
    [alarm] = await alarms_of(hub, "h-02")
    assert alarm.kind == "medical"


async def test_a_copy_sent_again_after_a_restart_is_stored_once(runner, gateway):
    hub = await runner.start()
    first = frame(42, "#1234|1130 01 003")
    # The panel sends and hangs up before reading the ACK: for it, nothing was taken.
    _, writer = await asyncio.open_connection("127.0.0.1", hub.dc09.port)
    writer.write(first)
    await writer.drain()
    writer.close()
    await until(lambda: alarms_of(hub, "h-02"), message="the alarm stored")
    await runner.stop()

    hub = await runner.start()
    # Sent again, with a new timestamp (the panel's clock moved on) but the same seq and data.
    answer = await exchange(hub, frame(42, "#1234|1130 01 003", shift_s=1))
    assert answer is not None and (answer.token, answer.seq) == (Token.ACK, 42)
    [alarm] = await alarms_of(hub, "h-02")
    timeline = [e.entry for e in await hub.alarms.timeline(alarm.id)]
    assert timeline.count("raised") == 1 and "repeated" not in timeline

    # A new message that reuses the seq (the counter wrapped) is a new event.
    assert (await exchange(hub, frame(42, "#1234|1110 01 004"))).token is Token.ACK
    assert sorted(a.kind for a in await alarms_of(hub, "h-02")) == ["burglary", "fire"]


# --- the registry's dc09 key, as check-config reads it --------------------------------------


def _registry_text(*links: str) -> str:
    text = EXAMPLE_REGISTRY.read_text()
    for i, link in enumerate(links, start=1):
        panel = f"panel: p-0001-0{i},"
        assert panel in text
        text = text.replace(panel, f"{panel} dc09: {link},", 1)
    return text


def test_check_config_takes_accounts_in_clear_and_with_keys():
    registry, problems = parse_registry(
        _registry_text('{account: "1234"}', '{account: "5678", key: "' + KEY.hex() + '"}'), "r.yaml"
    )
    assert registry is not None, [p.format() for p in problems]
    assert registry.dc09_place("5678").household.panel == "p-0001-02"
    assert registry.dc09_keys() == {"5678": KEY}


@pytest.mark.parametrize(
    ("links", "says"),
    [
        (['{account: "1234"}', '{account: "1234"}'], "duplicate DC-09 account '1234'"),
        (['{account: "1234", key: "0011AABB"}'], "32, 48 or 64 hex digits, not 8"),
        (['{account: "1234", key: "' + "G" * 32 + '"}'], "written in hex"),
        (["{account: 1234}"], "must be quoted"),
        (['{account: "12"}'], "is not a DC-09 account"),
    ],
    ids=["duplicate", "key-length", "key-not-hex", "unquoted", "short-account"],
)
def test_check_config_names_a_bad_dc09_link(links: list[str], says: str):
    registry, problems = parse_registry(_registry_text(*links), "r.yaml")
    assert registry is None
    assert any(says in p.message for p in problems), [p.format() for p in problems]


# --- a hub killed with SIGKILL while a message is in flight --------------------------------


def _send_raw(port: int, payload: bytes, read: bool, wait_s: float = 0.0) -> bytes | None:
    """As a panel over TCP: send, then read the answer (or wait and go, without reading)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        if not read:
            time.sleep(wait_s)
            return None
        answer = b""
        while not answer.endswith(b"\r"):
            chunk = sock.recv(1024)
            if not chunk:
                return None
            answer += chunk
        return answer


async def test_a_hub_killed_while_a_message_is_in_flight_stores_the_panels_copy_once(
    mosquitto, tmp_path, db_target
):
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(
        EXAMPLE_REGISTRY.read_text().replace(
            "panel: p-0001-02,", f'panel: p-0001-02, dc09: {{account: "{CLEAR}"}},', 1
        )
    )
    dc09_port = free_port()
    env = {
        "TENHUB_BROKER_URL": f"mqtt://tenhub-hub@127.0.0.1:{mosquitto.port}",
        "TENHUB_REGISTRY": str(registry_file),
        "TENHUB_DC09_ADDR": f"127.0.0.1:{dc09_port}",
    }
    if url := db_url_of(db_target):
        env["TENHUB_DB_URL"] = url
    hub = HubProcess(tmp_path / "hub", free_port(), env)
    await asyncio.to_thread(hub.start)
    # Killed sooner or later after the frame arrived: before its commit, or after it and
    # before the panel read the ACK. Either way the panel's copy must end up stored once.
    delays = [0.0, 0.01, 0.3]
    try:
        for nr, delay in enumerate(delays, start=100):
            sent = frame(nr, "#1234|1130 01 003")
            await asyncio.to_thread(_send_raw, dc09_port, sent, False, delay)
            await asyncio.to_thread(hub.kill)
            await asyncio.to_thread(hub.start)
            again = frame(nr, "#1234|1130 01 003")  # the panel's copy, on its clock of now
            answer = await asyncio.to_thread(_send_raw, dc09_port, again, True)
            assert answer is not None, hub.tail()
            assert (dc09.decode(answer).token, dc09.decode(answer).seq) == (Token.ACK, nr)
    finally:
        await asyncio.to_thread(hub.stop)

    db = Database(hub.database)
    await db.open()
    try:
        store = AlarmStore(db)
        [alarm] = [a for a in await store.list_recent() if a.household_id == "h-02"]
        entries = [e.entry for e in await store.timeline(alarm.id)]
    finally:
        await db.close()
    # One message, one press: the first raised the alarm, each later one joined it.
    assert entries.count("raised") + entries.count("repeated") == len(delays)
