"""SIA DC-09: an alarm panel reporting to tenhub as it reports to a receiving centre.

Frames are checked against the standard's CRC and length, encrypted frames against
independent implementations (the `my-dc09-spt` transmitter and the `pysiaalarm`
receiver), and a real transmitter sends over TCP to a small receiver built on the codec.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from my_dc09_spt.comm.transpath import TransPath
from my_dc09_spt.dc09_spt import dc09_spt
from my_dc09_spt.msg.dc03_msg import dc03_msg
from my_dc09_spt.msg.dc05_msg import dc05_msg
from my_dc09_spt.msg.dc09_msg import dc09_msg
from pysiaalarm import SIAAccount, SIAEvent

from devices import dc09
from devices.alarm_codes import CodeError, message_signals
from devices.dc09 import Dc09Error, Dc09Message, Fault, Token
from devices.device_signal import SignalType
from devices.protocol import AlarmKind

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEYS = {
    128: b"0123456789ABCDEF",
    192: b"0123456789ABCDEF01234567",
    256: b"0123456789ABCDEF0123456789ABCDEF",
}


def at(ms: int, shift_s: float = 0) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(seconds=shift_s)


def cid(seq: int = 1, data: str = "#1234|1130 01 003", **kw) -> Dc09Message:
    return Dc09Message(Token.ADM_CID, seq, account="1234", data=data, **kw)


# --- framing, CRC and length ------------------------------------------------------------


def test_crc_is_crc16_arc_as_the_standard_and_a_transmitter_compute_it() -> None:
    assert dc09.crc16(b"123456789") == 0xBB3D  # the CRC-16/ARC check value
    body = '"SIA-DCS"0001L0#123456[#123456|NBA3]'
    assert dc09.crc16(body.encode()) == dc09_msg.dc09crc(body)


def test_the_design_documents_example_frame_decodes() -> None:
    msg = dc09.decode(b'\nA18C0022"SIA-DCS"0001#123456[#123456|NBA3]\r')
    assert (msg.token, msg.seq, msg.account, msg.line) == (Token.SIA_DCS, 1, "123456", None)
    assert msg.data == "#123456|NBA3"
    assert message_signals(msg)[0].kind is AlarmKind.BURGLARY


@pytest.mark.parametrize(
    "msg",
    [
        cid(7, receiver="5A", line="3", timestamp=at(NOW_MS)),
        Dc09Message(Token.SIA_DCS, 9999, account="ABC", data="#ABC|Nri1/BA3", line="0"),
        Dc09Message(Token.NULL, 0, account="123456", extended=("X114.27", "Y30.58")),
        Dc09Message(Token.SIA_DCS, 12, account="1234", data="#1234|NPA1", line=None),
    ],
    ids=["cid-with-receiver", "sia", "null-with-extended", "no-line"],
)
def test_a_clear_message_survives_a_round_trip(msg: Dc09Message) -> None:
    frame = dc09.encode(msg)
    assert frame.startswith(b"\n") and frame.endswith(b"\r")
    assert int(frame[5:9], 16) == len(frame) - 10 and frame[5:6] == b"0"
    assert dc09.decode(frame) == msg


def test_a_flipped_character_is_a_crc_error_and_gets_no_answer() -> None:
    frame = bytearray(dc09.encode(cid()))
    frame[frame.index(b"1130")] = ord("2")  # a burglary read as a fire: the CRC must tell
    with pytest.raises(Dc09Error) as err:
        dc09.decode(bytes(frame))
    assert err.value.fault is Fault.CRC
    assert dc09.answer_to_error(err.value, NOW_MS) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: f[:-3] + f[-2:],  # a character lost
        lambda f: f[:5] + b"0FFF" + f[9:],  # the length field lies
        lambda f: f[:5] + b"1" + f[6:],  # not 0LLL
    ],
    ids=["short-body", "wrong-length", "not-0LLL"],
)
def test_a_length_that_does_not_match_is_refused(mangle) -> None:
    with pytest.raises(Dc09Error) as err:
        dc09.decode(mangle(dc09.encode(cid())))
    assert err.value.fault is Fault.LENGTH


@pytest.mark.parametrize(
    ("frame", "fault"),
    [
        (b'A18C0022"SIA-DCS"0001#123456[#123456|NBA3]\r', Fault.FRAMING),
        (b'\nA18C0022"SIA-DCS"0001#123456[#123456|NBA3]', Fault.FRAMING),
        (b"\n\r", Fault.FRAMING),
        ('\nA18C0022"SIA-DCS"0001#123456[#123456|NBA€]\r'.encode(), Fault.FORMAT),
    ],
    ids=["no-lf", "no-cr", "empty", "not-ascii"],
)
def test_a_broken_frame_is_refused_for_its_fault(frame: bytes, fault: Fault) -> None:
    with pytest.raises(Dc09Error) as err:
        dc09.decode(frame)
    assert err.value.fault is fault
    assert err.value.header is None


def _frame(body: str) -> bytes:
    return b"\n" + f"{dc09.crc16(body.encode()):04X}0{len(body):03X}{body}".encode() + b"\r"


def test_an_unknown_token_is_answered_duh_that_a_transmitter_reads() -> None:
    with pytest.raises(Dc09Error) as err:
        dc09.decode(_frame('"SIA-XYZ"0042R1L0#1234[#1234|NBA3]'))
    assert err.value.fault is Fault.UNKNOWN_TOKEN
    answer = dc09.answer_to_error(err.value, NOW_MS)
    assert dc09.decode(answer) == Dc09Message(Token.DUH, 42, account="1234", receiver="1")
    assert dc09_msg("1234").dc09answer(42, answer.decode()) == ("DUH", None)


@pytest.mark.parametrize(
    "body",
    [
        '"SIA-DCS"42L0#1234[#1234|NBA3]',  # a 2-digit sequence number
        '"SIA-DCS"0042L0#12[#1234|NBA3]',  # a 2-digit account
        '"SIA-DCS"0042L0#1234[#1234|NBA3',  # no closing bracket
        '"SIA-DCS"0042L0#1234[#1234|NBA3]_25:00:00,01-01-2026',  # no such time
        '"SIA-DCS"0042L0#1234[#1234|NBA3]_12:00',  # half a timestamp
    ],
)
def test_a_malformed_header_or_content_is_a_format_error(body: str) -> None:
    with pytest.raises(Dc09Error) as err:
        dc09.decode(_frame(body))
    assert err.value.fault is Fault.FORMAT


def test_a_sequence_number_outside_0000_9999_cannot_be_sent() -> None:
    with pytest.raises(ValueError, match="0000-9999"):
        dc09.encode(cid(10_000))


# --- encryption -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", sorted(KEYS))
def test_an_encrypted_message_survives_a_round_trip(bits: int) -> None:
    key = KEYS[bits]
    msg = cid(3, receiver="1", timestamp=at(NOW_MS), encrypted=True, extended=("X114.27",))
    frame = dc09.encode(msg, key)
    assert frame[9:20] == b'"*ADM-CID"0'
    assert b"1130" not in frame  # the event is not readable on the wire
    cipher_hex = frame[frame.index(b"[") + 1 : -1]
    assert len(cipher_hex) % 32 == 0
    assert dc09.decode(frame, {"1234": key}) == msg
    # A random pad: the same message never looks the same twice on the wire.
    assert dc09.encode(msg, key) != frame


@pytest.mark.parametrize("bits", sorted(KEYS))
def test_pysiaalarm_reads_our_encrypted_frames_and_we_read_its_encrypted_ack(bits: int) -> None:
    key = KEYS[bits]
    now_ms = int(time.time() * 1000)  # pysiaalarm checks the window against its own clock
    msg = cid(42, data="#1234|1120 01 015", receiver="12", timestamp=at(now_ms), encrypted=True)
    account = SIAAccount("1234", key.decode())
    event = SIAEvent.from_line(dc09.encode(msg, key).decode().strip(), {"1234": account})
    assert event.valid_message  # its CRC agrees with ours
    assert (event.event_qualifier, event.event_type, event.ri) == ("1", "120", "015")
    assert event.code == "PA"
    answer = dc09.decode(event.create_response(), {"1234": key})
    assert (answer.token, answer.seq, answer.encrypted) == (Token.ACK, 42, True)
    assert abs(answer.timestamp - at(now_ms)) < timedelta(seconds=5)


def test_pysiaalarms_published_encrypted_poll_decrypts() -> None:
    # From pysiaalarm's test cases: an encrypted NULL under the key "AAAAAAAAAAAAAAAA".
    # Its CRC and length fields are not the real ones, so only the ciphertext is reused.
    cipher = "B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9"
    msg = dc09.decode(_frame(f'"*NULL"0000R0L0#AAAB[{cipher}'), {"AAAB": b"A" * 16})
    assert msg.token is Token.NULL and msg.encrypted
    assert msg.timestamp == datetime(2020, 7, 5, 18, 24, 52, tzinfo=UTC)
    assert [s.type for s in message_signals(msg)] == [SignalType.HEARTBEAT]


def test_an_encrypted_message_without_the_accounts_key_is_answered_duh() -> None:
    frame = dc09.encode(cid(5, timestamp=at(NOW_MS), encrypted=True), KEYS[128])
    with pytest.raises(Dc09Error) as err:
        dc09.decode(frame, {"9999": KEYS[128]})
    assert err.value.fault is Fault.NO_KEY
    assert dc09.decode(dc09.answer_to_error(err.value, NOW_MS)).token is Token.DUH


def test_a_wrong_key_does_not_open_the_message() -> None:
    for _ in range(50):  # the pad is random: no pad may let noise pass for a message
        frame = dc09.encode(cid(5, timestamp=at(NOW_MS), encrypted=True), KEYS[128])
        with pytest.raises(Dc09Error) as err:
            dc09.decode(frame, {"1234": b"F" * 16})
        assert err.value.fault is Fault.UNDECRYPTABLE


def test_an_account_with_a_key_may_not_send_in_clear() -> None:
    with pytest.raises(Dc09Error) as err:
        dc09.decode(dc09.encode(cid()), {"1234": KEYS[256]})
    assert err.value.fault is Fault.NOT_ENCRYPTED


def test_a_key_must_be_128_192_or_256_bits() -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        dc09.encode(cid(timestamp=at(NOW_MS), encrypted=True), b"short")


# --- timestamps and answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("shift_s", "accepted"),
    [(0, True), (-40, True), (-41, False), (20, True), (21, False), (-3600, False)],
)
def test_the_timestamp_window_is_minus_40_plus_20_seconds(shift_s: int, accepted: bool) -> None:
    msg = cid(timestamp=at(NOW_MS, shift_s))
    assert dc09.in_window(msg, NOW_MS) is accepted
    if accepted:
        dc09.check_window(msg, NOW_MS)
    else:
        with pytest.raises(Dc09Error) as err:
            dc09.check_window(msg, NOW_MS)
        assert err.value.fault is Fault.TIMESTAMP


def test_a_clear_message_without_a_timestamp_is_in_the_window() -> None:
    assert dc09.in_window(cid(), NOW_MS)


def test_a_stale_message_is_answered_nak_with_the_receivers_time() -> None:
    receiver_ms = int(time.time() * 1000) + 3_600_000  # the receiver is an hour ahead
    stale = dc09_msg("1234", KEYS[256], receiver=1, line=0).dc09block(
        8, "ADM-CID", dc05_msg.dc05event("1234", {"code": "120", "q": "1"})
    )
    msg = dc09.decode(stale.encode(), {"1234": KEYS[256]})
    with pytest.raises(Dc09Error) as err:
        dc09.check_window(msg, receiver_ms)
    answer = dc09.answer_to_error(err.value, receiver_ms)
    nak = dc09.decode(answer)
    assert (nak.token, nak.seq, nak.account, nak.encrypted) == (Token.NAK, 0, None, False)
    assert b'"NAK"0000R1L0A0[]_' in answer
    # The transmitter reads the receiver's clock from it, to send again on that time.
    kind, offset = dc09_msg("1234", KEYS[256]).dc09answer(8, answer.decode())
    assert kind == "NAK" and 3590 < offset < 3610


@pytest.mark.parametrize("key", [None, KEYS[128], KEYS[256]], ids=["clear", "aes128", "aes256"])
def test_our_ack_is_accepted_by_the_transmitters_own_check(key: bytes | None) -> None:
    panel = dc09_msg("1234", key, receiver=2, line=1)
    frame = panel.dc09block(77, "SIA-DCS", dc03_msg.dc03event("1234", {"code": "FA", "zone": "4"}))
    msg = dc09.decode(frame.encode(), {"1234": key} if key else {})
    answer = dc09.ack(msg, int(time.time() * 1000), key)
    kind, offset = panel.dc09answer(77, answer.decode())
    assert kind == "ACK" and abs(offset) < 5
    assert dc09.decode(answer, {"1234": key} if key else {}).encrypted is (key is not None)


# --- a real transmitter over TCP ----------------------------------------------------------


class Receiver:
    """A small DC-09 receiver on the codec: ACKs what it could read, keeps what it meant."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.received: list[tuple[Dc09Message, list]] = []
        self.answered: list[Token | None] = []

    def answer(self, frame: bytes) -> bytes | None:
        now_ms = int(time.time() * 1000)
        msg = None
        try:
            msg = dc09.decode(frame, self.keys)
            dc09.check_window(msg, now_ms)
            signals = message_signals(msg)
        except Dc09Error as error:
            return dc09.answer_to_error(error, now_ms)
        except CodeError:
            return dc09.duh(msg)
        self.received.append((msg, signals))
        return dc09.ack(msg, now_ms, self.keys.get(msg.account) if msg.encrypted else None)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                answer = self.answer(await reader.readuntil(b"\r"))
                self.answered.append(dc09.decode(answer, self.keys).token if answer else None)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the transmitter hung up after its answer
        finally:
            writer.close()


async def send(receiver: Receiver, key: bytes | None, sends: list[tuple[str, str]]) -> list[bool]:
    """Start the receiver on a free port; the transmitter sends each (type, data) in turn."""
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    panel = dc09_spt("1234", receiver=3, line=1)
    path = TransPath("127.0.0.1", port, "1234", key=key, receiver=3, line=1)
    accepted = []
    async with server:
        for nr, (mtype, data) in enumerate(sends, start=1):
            # The transmitter blocks on its socket: it runs in a thread, as a panel would.
            accepted.append(await asyncio.to_thread(panel.transfer_msg, nr, mtype, data, path))
    return accepted


@pytest.mark.parametrize("key", [None, KEYS[128], KEYS[256]], ids=["clear", "aes128", "aes256"])
async def test_a_panel_reports_a_burglary_a_fire_and_a_restore_and_takes_our_acks(
    key: bytes | None,
) -> None:
    receiver = Receiver({"1234": key} if key else {})
    accepted = await send(
        receiver,
        key,
        [
            ("ADM-CID", dc05_msg.dc05event("1234", {"code": "130", "q": "1", "zone": "7"})),
            ("SIA-DCS", dc03_msg.dc03event("1234", {"code": "FA", "zone": "2", "area": "1"})),
            ("ADM-CID", dc05_msg.dc05event("1234", {"code": "301", "q": "3"})),
            ("NULL", "]"),
        ],
    )
    assert accepted == [True, True, True, True]  # the transmitter took each ACK
    assert receiver.answered == [Token.ACK] * 4
    meanings = [(s.type, s.kind, s.condition, s.zone) for _, sig in receiver.received for s in sig]
    assert meanings == [
        (SignalType.ALARM, AlarmKind.BURGLARY, None, "007"),
        (SignalType.ALARM, AlarmKind.FIRE, None, "2"),
        (SignalType.RESTORE, None, "power_loss", "000"),
        (SignalType.HEARTBEAT, None, None, None),
    ]
    assert [m.seq for m, _ in receiver.received] == [1, 2, 3, 4]
    assert all(m.encrypted is (key is not None) for m, _ in receiver.received)


async def test_a_panel_with_the_wrong_key_is_told_duh_and_nothing_is_taken() -> None:
    receiver = Receiver({"1234": KEYS[256]})
    wrong = b"Z" * 32
    event = dc05_msg.dc05event("1234", {"code": "120", "q": "1"})
    assert await send(receiver, wrong, [("ADM-CID", event)]) == [False]
    assert receiver.answered == [Token.DUH]
    assert receiver.received == []


async def test_the_original_dc09_spt_sends_in_clear_and_takes_our_ack() -> None:
    original = pytest.importorskip("dc09_spt.dc09_spt", reason="dc09-spt installs only --no-deps")
    from dc09_spt.comm.transpath import TransPath as OriginalPath
    from dc09_spt.msg.dc05_msg import dc05_msg as original_dc05

    receiver = Receiver({})
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    panel = original.dc09_spt("123456")
    event = original_dc05.dc05event("123456", {"code": "121", "q": "1", "zone": "1"})
    async with server:
        path = OriginalPath("127.0.0.1", port, "123456")
        assert await asyncio.to_thread(panel.transfer_msg, 1, "ADM-CID", event, path)
    [(msg, [signal])] = receiver.received
    assert (msg.token, msg.account) == (Token.ADM_CID, "123456")
    assert (signal.kind, signal.duress) == (AlarmKind.PANIC, True)
