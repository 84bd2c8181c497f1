"""Contact ID and SIA DCS event data, read and mapped to what they mean for tenhub.

Contact ID (`ADM-CID`) data is `#acct|QEEE GG ZZZ`: qualifier 1 a new event, 3 a restore,
6 a status report; a three-digit event code; partition; zone or user. SIA DCS data is
`#acct|N` followed by `/`-separated blocks such as `ri1/BA3` (area 1, burglary, zone 3).
A restore closes a trouble; it never ends an alarm, which people stand down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from devices.dc09 import Dc09Message, Token
from devices.device_signal import (
    COMM_FAILURE,
    LOW_BATTERY,
    POWER_LOSS,
    TAMPER,
    WATER_LEAK,
    DeviceSignal,
    SignalType,
    alarm,
    restore,
    trouble,
)
from devices.protocol import AlarmKind


class Qualifier(IntEnum):
    NEW = 1
    RESTORE = 3
    STATUS = 6  # a condition reported before and still present


@dataclass(frozen=True)
class ContactIdEvent:
    account: str | None
    qualifier: Qualifier
    code: int
    partition: str
    zone: str  # or the user, for opening and closing


@dataclass(frozen=True)
class SiaEvent:
    code: str  # two letters, e.g. BA
    address: str  # zone, user or area, as the code says
    area: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class SiaDcsData:
    account: str | None
    events: tuple[SiaEvent, ...]
    text: str | None = None


class CodeError(ValueError):
    """Event data that does not parse as Contact ID or SIA DCS."""


_CID = re.compile(
    r"(?:#(?P<account>[0-9A-Fa-f]{3,16})\|)?(?P<q>[136])(?P<code>[0-9]{3}) ?"
    r"(?P<partition>[0-9A-Fa-f]{2}) ?(?P<zone>[0-9A-Fa-f]{3})"
)
_SIA_HEAD = re.compile(
    r"(?:#(?P<account>[0-9A-Fa-f]{3,16})\|)?N(?P<blocks>[^|]*)(?:\|A(?P<text>.*))?"
)
_SIA_BLOCK = re.compile(
    r"(?:ti[0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)?(?:id(?P<user>[0-9]+))?(?:ri(?P<area>[0-9]+))?"
    r"(?:pi[0-9]+)?(?:(?P<code>[A-Z]{2})(?P<address>[0-9A-Za-z]*))?"
)


def parse_contact_id(data: str) -> ContactIdEvent:
    """Read Contact ID data (`#acct|1130 01 003`); CodeError if it is not."""
    match = _CID.fullmatch(data)
    if match is None:
        raise CodeError(f"not Contact ID data: {data!r}")
    return ContactIdEvent(
        account=match["account"],
        qualifier=Qualifier(int(match["q"])),
        code=int(match["code"]),
        partition=match["partition"],
        zone=match["zone"],
    )


def parse_sia_dcs(data: str) -> SiaDcsData:
    """Read SIA DCS data (`#acct|Nri1/BA3`); CodeError if it is not."""
    match = _SIA_HEAD.fullmatch(data)
    if match is None:
        raise CodeError(f"not SIA DCS data: {data!r}")
    # Names between carets (`^Front door^`) are for people: they carry no meaning here.
    blocks = re.sub(r"\^[^^]*\^", "", match["blocks"]).split("/")
    events: list[SiaEvent] = []
    area = user = None
    for block in blocks:
        part = _SIA_BLOCK.fullmatch(block)
        if part is None:
            raise CodeError(f"not a SIA DCS block: {block!r}")
        area = part["area"] or area  # an area or user applies to the codes after it
        user = part["user"] or user
        if part["code"]:
            events.append(SiaEvent(part["code"], part["address"], area, user))
    if not events:
        raise CodeError(f"SIA DCS data without an event code: {data!r}")
    return SiaDcsData(match["account"], tuple(events), match["text"])


def _cid_alarm(code: int) -> tuple[AlarmKind, dict[str, bool]] | None:
    if code == 100:
        return AlarmKind.MEDICAL, {}
    if 110 <= code <= 118:
        return AlarmKind.FIRE, {}
    if code == 120 or code == 123:
        return AlarmKind.PANIC, {}
    if code == 121:
        return AlarmKind.PANIC, {"duress": True, "silent": True}
    if code == 122:
        return AlarmKind.PANIC, {"silent": True}
    if 130 <= code <= 139 and code != 137:
        return AlarmKind.BURGLARY, {}
    if code == 151:
        return AlarmKind.GAS, {}
    return None


CID_TROUBLES = {137: TAMPER, 144: TAMPER, 301: POWER_LOSS, 302: LOW_BATTERY, 309: LOW_BATTERY}
CID_TROUBLES |= {350: COMM_FAILURE, 354: COMM_FAILURE}
CID_HEARTBEATS = frozenset({602})
CID_IGNORED = frozenset({401, 407})  # opening and closing: the household's own business


def contact_id_signal(event: ContactIdEvent) -> DeviceSignal:
    """What a Contact ID event means: alarm, trouble, restore, heartbeat, ignored or unknown."""
    source = f"CID {event.qualifier.value}{event.code:03d}"
    zone = event.zone
    if event.code in CID_HEARTBEATS:  # whatever its qualifier: the panel is alive
        return DeviceSignal(SignalType.HEARTBEAT, source, zone=zone)
    if event.code in CID_IGNORED:
        return DeviceSignal(SignalType.IGNORED, source, zone=zone)
    if event.code in CID_TROUBLES:
        condition = CID_TROUBLES[event.code]
        if event.qualifier is Qualifier.RESTORE:
            return restore(condition, source, zone=zone)
        return trouble(condition, source, zone=zone)  # a status repeats it: opened once
    mapped = _cid_alarm(event.code)
    if mapped is None:
        return DeviceSignal(SignalType.UNKNOWN, source, zone=zone)
    if event.qualifier is not Qualifier.NEW:
        # The zone is back to normal, or still in alarm: the open alarm stays as it is.
        return DeviceSignal(SignalType.IGNORED, source, zone=zone)
    kind, flags = mapped
    return alarm(kind, source, zone=zone, **flags)


# SIA DCS codes for the same meanings (SIA DC-03 event codes).
SIA_ALARMS = {
    "MA": (AlarmKind.MEDICAL, {}),
    "FA": (AlarmKind.FIRE, {}),
    "KA": (AlarmKind.FIRE, {}),  # heat
    "PA": (AlarmKind.PANIC, {}),
    "HA": (AlarmKind.PANIC, {"duress": True, "silent": True}),  # hold-up
    "BA": (AlarmKind.BURGLARY, {}),
    "GA": (AlarmKind.GAS, {}),
}
SIA_TROUBLES = {
    "TA": TAMPER,
    "AT": POWER_LOSS,
    "YT": LOW_BATTERY,
    "YC": COMM_FAILURE,
    "WA": WATER_LEAK,
}
SIA_RESTORES = {"TR": TAMPER, "AR": POWER_LOSS, "YR": LOW_BATTERY, "YK": COMM_FAILURE}
SIA_RESTORES |= {"WH": WATER_LEAK}
SIA_HEARTBEATS = frozenset({"RP"})
# Opening, closing, and the restores of alarm zones (people stand an alarm down).
SIA_IGNORED = frozenset({"OP", "CL", "OQ", "CQ", "MH", "FH", "KH", "PH", "HH", "BH", "BR"})
SIA_IGNORED |= {"FR", "GH"}


def sia_signal(event: SiaEvent) -> DeviceSignal:
    """What one SIA DCS event means, as contact_id_signal does for Contact ID."""
    source = f"SIA {event.code}{event.address}"
    zone = event.address or None
    if event.code in SIA_ALARMS:
        kind, flags = SIA_ALARMS[event.code]
        return alarm(kind, source, zone=zone, **flags)
    if event.code in SIA_TROUBLES:
        return trouble(SIA_TROUBLES[event.code], source, zone=zone)
    if event.code in SIA_RESTORES:
        return restore(SIA_RESTORES[event.code], source, zone=zone)
    if event.code in SIA_HEARTBEATS:
        return DeviceSignal(SignalType.HEARTBEAT, source, zone=zone)
    if event.code in SIA_IGNORED:
        return DeviceSignal(SignalType.IGNORED, source, zone=zone)
    return DeviceSignal(SignalType.UNKNOWN, source, zone=zone)


def message_signals(msg: Dc09Message) -> list[DeviceSignal]:
    """The meanings of a DC-09 message's data; a NULL poll is a heartbeat; CodeError if unread."""
    if msg.token is Token.ADM_CID:
        return [contact_id_signal(parse_contact_id(msg.data))]
    if msg.token is Token.SIA_DCS:
        return [sia_signal(event) for event in parse_sia_dcs(msg.data).events]
    if msg.token is Token.NULL:
        return [DeviceSignal(SignalType.HEARTBEAT, "NULL")]
    raise CodeError(f"{msg.token.value} carries no event")
