"""SIA DC-09 frames: framing, CRC and length, AES-CBC encryption, timestamps and answers.

A frame is `LF crc 0LLL "id" seq [Rrcvr] [Lpref] #acct [data][ext]..._HH:MM:SS,MM-DD-YYYY CR`.
`crc` is CRC-16/ARC and `0LLL` the length (hex), both over the text from the first `"`
to the end of the timestamp. An encrypted message (`"*SIA-DCS"`, `"*ADM-CID"`, `"*NULL"`)
carries, after `[`, the hex of AES-CBC with a zero IV over `pad|data]ext...timestamp`,
the pad making it whole 16-byte blocks. The receiver answers `ACK` (encrypted when the
message was), `NAK` with its own time when the timestamp is outside −40 s/+20 s, and
`DUH` when it cannot handle a message it could read the header of.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

WINDOW_BEHIND_S = 40  # a message's timestamp may be this far behind the receiver's clock
WINDOW_AHEAD_S = 20  # ... and this far ahead of it
MAX_FRAME_BYTES = 1 + 4 + 4 + 0xFFF + 1  # LF, CRC, length, the longest body, CR
KEY_SIZES = (16, 24, 32)  # AES-128, -192, -256
TIME_FORMAT = "_%H:%M:%S,%m-%d-%Y"

_ZERO_IV = bytes(16)
# Pad characters: printable, and never one of the three the decrypted text is split on.
_PAD_CHARS = "".join(
    c for c in string.ascii_letters + string.digits + string.punctuation if c not in "|[]"
)
_HEADER = re.compile(
    r'"(?P<star>\*?)(?P<token>[A-Z-]+)"(?P<seq>[0-9]{4})'
    r"(?:R(?P<receiver>[0-9A-F]{1,6}))?(?:L(?P<line>[0-9A-F]{1,6}))?"
    r"(?:#(?P<account>[0-9A-F]{3,16})|A0)?\[(?P<rest>.*)"
)
_CONTENT = re.compile(
    r"(?P<data>[^\[\]]*)\](?P<ext>(?:\[[^\[\]]*\])*)"
    r"(?P<ts>_[0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{2}-[0-9]{2}-[0-9]{4})?"
)
# Decrypted text: a pad without `|[]`, then `|data` (absent in an ACK or a poll), then `]`.
_PLAIN = re.compile(r"[^|\[\]]*(?:\|(?P<content>.*))?(?P<bare>\].*)?", re.DOTALL)
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


class Token(StrEnum):
    SIA_DCS = "SIA-DCS"
    ADM_CID = "ADM-CID"
    NULL = "NULL"  # a link test (poll)
    ACK = "ACK"
    NAK = "NAK"
    DUH = "DUH"


MESSAGES = frozenset({Token.SIA_DCS, Token.ADM_CID, Token.NULL})  # a transmitter's
ENCRYPTABLE = MESSAGES | {Token.ACK}  # NAK and DUH go in clear: the key may be the trouble


class Fault(StrEnum):
    """Why a frame was refused."""

    FRAMING = "framing"  # not LF ... CR
    LENGTH = "length"  # the 0LLL field does not match the body
    CRC = "crc"
    FORMAT = "format"  # the header or content does not parse
    UNKNOWN_TOKEN = "unknown_token"
    NO_KEY = "no_key"  # encrypted, and no key for the account
    NOT_ENCRYPTED = "not_encrypted"  # in clear from an account that has a key
    UNDECRYPTABLE = "undecryptable"  # the key does not open it
    TIMESTAMP = "timestamp"  # outside the receiver's window


@dataclass(frozen=True)
class Dc09Message:
    """One DC-09 message; `data` is the text inside the first `[...]`, decrypted."""

    token: Token
    seq: int
    account: str | None = None
    data: str = ""
    receiver: str | None = None
    line: str | None = "0"
    extended: tuple[str, ...] = ()
    timestamp: datetime | None = None
    encrypted: bool = False


class Dc09Error(ValueError):
    """A frame the receiver refuses; `header` is set when its header could be read."""

    def __init__(self, fault: Fault, detail: str, header: Dc09Message | None = None) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault
        self.detail = detail
        self.header = header


def crc16(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected, init 0), as DC-09 specifies."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def time_text(ms: int) -> str:
    """A DC-09 timestamp (`_HH:MM:SS,MM-DD-YYYY`, UTC) for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(TIME_FORMAT)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC)


def _check_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise ValueError(f"an AES key is 16, 24 or 32 bytes, not {len(key)}")


def _cipher(key: bytes) -> Cipher:
    _check_key(key)
    return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))


def _encrypt(key: bytes, text: str) -> str:
    size = 16 - len(text) % 16  # 1 to 16 pad characters
    plain = "".join(secrets.choice(_PAD_CHARS) for _ in range(size)) + text
    enc = _cipher(key).encryptor()
    return (enc.update(plain.encode("ascii")) + enc.finalize()).hex().upper()


def _decrypt(key: bytes, hex_text: str, header: Dc09Message) -> str:
    if not re.fullmatch(r"(?:[0-9A-Fa-f]{32})+", hex_text):
        raise Dc09Error(Fault.UNDECRYPTABLE, "not whole hex AES blocks", header)
    dec = _cipher(key).decryptor()
    # latin-1: a transmitter may pad with any byte; what follows the pad is checked below.
    plain = (dec.update(bytes.fromhex(hex_text)) + dec.finalize()).decode("latin-1")
    match = _PLAIN.fullmatch(plain)
    if match is None or (match["content"] is None and match["bare"] is None):
        raise Dc09Error(Fault.UNDECRYPTABLE, "the key does not open the message", header)
    content = match["content"] if match["content"] is not None else match["bare"]
    # What a wrong key yields is noise: only printable text ending in a timestamp is taken.
    opened = _CONTENT.fullmatch(content)
    if not _PRINTABLE.fullmatch(content) or opened is None or not opened["ts"]:
        raise Dc09Error(Fault.UNDECRYPTABLE, "the key does not open the message", header)
    return content


def _content_text(msg: Dc09Message) -> str:
    ext = "".join(f"[{x}]" for x in msg.extended)
    stamp = msg.timestamp.strftime(TIME_FORMAT) if msg.timestamp else ""
    return f"{msg.data}]{ext}{stamp}"


def encode(msg: Dc09Message, key: bytes | None = None) -> bytes:
    """The frame for a message; encrypted with key when `msg.encrypted` (key required)."""
    if not 0 <= msg.seq <= 9999:
        raise ValueError(f"a sequence number is 0000-9999, not {msg.seq}")
    star = "*" if msg.encrypted else ""
    head = f'"{star}{msg.token.value}"{msg.seq:04d}'
    head += f"R{msg.receiver}" if msg.receiver is not None else ""
    head += f"L{msg.line}" if msg.line is not None else ""
    head += f"#{msg.account}" if msg.account is not None else ""
    if msg.token is Token.NAK and msg.account is None:
        head += "A0"
    if msg.encrypted:
        if key is None or msg.timestamp is None:
            raise ValueError("an encrypted message needs a key and a timestamp")
        text = f"|{_content_text(msg)}" if msg.data else _content_text(msg)
        body = f"{head}[{_encrypt(key, text)}"
    else:
        body = f"{head}[{_content_text(msg)}"
    raw = body.encode("ascii")
    if len(raw) > 0xFFF:
        raise ValueError(f"a DC-09 body is at most 4095 bytes, not {len(raw)}")
    return b"\n" + f"{crc16(raw):04X}0{len(raw):03X}".encode() + raw + b"\r"


def decode(frame: bytes, keys: Mapping[str, bytes] | None = None) -> Dc09Message:
    """Check and read a frame, decrypting with the account's key from keys; Dc09Error if not.

    An account that has a key must encrypt: its clear frames are refused.
    """
    keys = keys or {}
    if len(frame) < 11 or frame[:1] != b"\n" or frame[-1:] != b"\r":
        raise Dc09Error(Fault.FRAMING, "a frame is LF ... CR")
    try:
        text = frame[1:-1].decode("ascii")
    except UnicodeDecodeError:
        raise Dc09Error(Fault.FORMAT, "a frame is ASCII") from None
    crc_text, length_text, body = text[:4], text[4:8], text[8:]
    if not re.fullmatch(r"[0-9A-Fa-f]{4}", crc_text):
        raise Dc09Error(Fault.FORMAT, f"CRC field {crc_text!r} is not 4 hex digits")
    if not re.fullmatch(r"0[0-9A-Fa-f]{3}", length_text):
        raise Dc09Error(Fault.LENGTH, f"length field {length_text!r} is not 0LLL")
    if int(length_text, 16) != len(body):
        raise Dc09Error(Fault.LENGTH, f"length says {int(length_text, 16)}, body is {len(body)}")
    if int(crc_text, 16) != crc16(body.encode("ascii")):
        raise Dc09Error(Fault.CRC, f"CRC {crc_text} does not match the body")
    match = _HEADER.fullmatch(body)
    if match is None:
        raise Dc09Error(Fault.FORMAT, "header does not parse")
    try:
        token = Token(match["token"])
    except ValueError:
        token = None
    header = Dc09Message(
        token=token or Token.DUH,
        seq=int(match["seq"]),
        account=match["account"],
        receiver=match["receiver"],
        line=match["line"],
        encrypted=bool(match["star"]),
    )
    if token is None:
        raise Dc09Error(Fault.UNKNOWN_TOKEN, f"unknown id token {match['token']!r}", header)
    key = keys.get(header.account) if header.account else None
    if header.encrypted:
        if token not in ENCRYPTABLE:
            raise Dc09Error(Fault.FORMAT, f"{token.value} is never encrypted", header)
        if key is None:
            raise Dc09Error(Fault.NO_KEY, f"no key for account {header.account}", header)
        content = _decrypt(key, match["rest"], header)
    else:
        if key is not None and token in MESSAGES:
            raise Dc09Error(Fault.NOT_ENCRYPTED, f"account {header.account} must encrypt", header)
        content = match["rest"]
    return _with_content(header, content)


def _with_content(header: Dc09Message, content: str) -> Dc09Message:
    match = _CONTENT.fullmatch(content)
    if match is None:
        raise Dc09Error(Fault.FORMAT, "content is not data]...[ext]_timestamp", header)
    timestamp = None
    if match["ts"]:
        try:
            timestamp = datetime.strptime(match["ts"], TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise Dc09Error(Fault.FORMAT, f"timestamp {match['ts']!r} is no date", header) from None
    extended = tuple(re.findall(r"\[([^\[\]]*)\]", match["ext"]))
    return replace(header, data=match["data"], extended=extended, timestamp=timestamp)


def in_window(msg: Dc09Message, now_ms: int) -> bool:
    """True when the message has no timestamp or it is within −40 s/+20 s of now."""
    if msg.timestamp is None:
        return True
    drift = msg.timestamp - datetime.fromtimestamp(now_ms / 1000, UTC)
    return timedelta(seconds=-WINDOW_BEHIND_S) <= drift <= timedelta(seconds=WINDOW_AHEAD_S)


def ack(msg: Dc09Message, now_ms: int, key: bytes | None = None) -> bytes:
    """The receiver's ACK of msg, with its time; encrypted (with key) when msg was."""
    answer = Dc09Message(
        Token.ACK,
        msg.seq,
        account=msg.account,
        receiver=msg.receiver,
        line=msg.line,
        timestamp=_ms_to_datetime(now_ms),
        encrypted=msg.encrypted,
    )
    return encode(answer, key)


def nak(now_ms: int, header: Dc09Message | None = None) -> bytes:
    """The receiver's NAK, carrying its time so the transmitter can correct its clock.

    Sent in clear, sequence 0000 and account `A0`, as the standard shows it: the
    transmitter must read the time even when its key or account is what is wrong.
    """
    answer = Dc09Message(
        Token.NAK,
        0,
        receiver=header.receiver if header and header.receiver else "0",
        line=header.line if header and header.line else "0",
        timestamp=_ms_to_datetime(now_ms),
    )
    return encode(answer)


def duh(header: Dc09Message) -> bytes:
    """The receiver's DUH: it read the header but cannot handle the message (in clear)."""
    answer = Dc09Message(
        Token.DUH, header.seq, account=header.account, receiver=header.receiver, line=header.line
    )
    return encode(answer)


def answer_to_error(error: Dc09Error, now_ms: int) -> bytes | None:
    """NAK for a timestamp, DUH for a frame whose header was read, None for a broken frame."""
    if error.fault is Fault.TIMESTAMP:
        return nak(now_ms, error.header)
    if error.header is not None:
        return duh(error.header)
    return None  # a garbled frame says nothing to trust: the transmitter repeats it


def check_window(msg: Dc09Message, now_ms: int) -> None:
    """Raise Dc09Error(TIMESTAMP) when the message's time is outside the window."""
    if not in_window(msg, now_ms):
        stamp = msg.timestamp.strftime(TIME_FORMAT) if msg.timestamp else ""
        window = f"−{WINDOW_BEHIND_S} s/+{WINDOW_AHEAD_S} s"
        detail = f"timestamp {stamp} outside {window} of {time_text(now_ms)}"
        raise Dc09Error(Fault.TIMESTAMP, detail, msg)
