"""What a commercial panel's Contact ID and SIA DCS codes become in tenhub."""

from __future__ import annotations

import pytest
from pysiaalarm.data.adm_mapping import ADM_MAPPING

from devices.alarm_codes import (
    CodeError,
    ContactIdEvent,
    Qualifier,
    SiaEvent,
    contact_id_signal,
    parse_contact_id,
    parse_sia_dcs,
    sia_signal,
)
from devices.device_signal import SignalType
from devices.protocol import AlarmKind, EventType, ProtocolError, validate_event

ALARM, TAMPER, TROUBLE, RESTORE = (
    SignalType.ALARM,
    SignalType.TAMPER,
    SignalType.TROUBLE,
    SignalType.RESTORE,
)
HEARTBEAT, IGNORED, UNKNOWN = SignalType.HEARTBEAT, SignalType.IGNORED, SignalType.UNKNOWN

# Every Contact ID code the hub maps, with what a new event (qualifier 1) means.
NEW_EVENTS = {
    100: (ALARM, AlarmKind.MEDICAL, None),
    **{code: (ALARM, AlarmKind.FIRE, None) for code in range(110, 119)},
    120: (ALARM, AlarmKind.PANIC, None),
    121: (ALARM, AlarmKind.PANIC, None),
    122: (ALARM, AlarmKind.PANIC, None),
    123: (ALARM, AlarmKind.PANIC, None),
    **{code: (ALARM, AlarmKind.BURGLARY, None) for code in range(130, 140) if code != 137},
    137: (TAMPER, None, "tamper"),
    144: (TAMPER, None, "tamper"),
    151: (ALARM, AlarmKind.GAS, None),
    301: (TROUBLE, None, "power_loss"),
    302: (TROUBLE, None, "low_battery"),
    309: (TROUBLE, None, "low_battery"),
    350: (TROUBLE, None, "comm_failure"),
    354: (TROUBLE, None, "comm_failure"),
    602: (HEARTBEAT, None, None),
    401: (IGNORED, None, None),
    407: (IGNORED, None, None),
}
TROUBLE_CODES = [c for c, (t, _, _) in NEW_EVENTS.items() if t in (TAMPER, TROUBLE)]
ALARM_CODES = [c for c, (t, _, _) in NEW_EVENTS.items() if t is ALARM]


def event(code: int, qualifier: Qualifier = Qualifier.NEW) -> ContactIdEvent:
    return ContactIdEvent("1234", qualifier, code, "01", "005")


@pytest.mark.parametrize("code", sorted(NEW_EVENTS))
def test_every_mapped_contact_id_code_means_what_the_hub_needs(code: int) -> None:
    signal = contact_id_signal(event(code))
    assert (signal.type, signal.kind, signal.condition) == NEW_EVENTS[code]
    assert signal.source == f"CID 1{code:03d}" and signal.zone == "005"
    payload = signal.as_event(seq=7, ts=1_767_225_600_000)
    if signal.type in (ALARM, TAMPER, TROUBLE):
        # It becomes an event a native panel could have sent: the hub takes it as one.
        parsed = validate_event(payload)
        assert parsed.type is EventType(signal.type.value)
        assert getattr(parsed, "kind", None) == signal.kind
    else:
        assert payload is None


def test_duress_and_silent_panic_are_told_apart_from_an_audible_panic() -> None:
    flags = {
        c: (contact_id_signal(event(c)).duress, contact_id_signal(event(c)).silent)
        for c in (120, 121, 122, 123)
    }
    assert flags == {
        120: (False, False),
        121: (True, True),
        122: (False, True),
        123: (False, False),
    }


@pytest.mark.parametrize("code", TROUBLE_CODES)
def test_a_restore_ends_the_trouble_and_a_status_keeps_it(code: int) -> None:
    condition = NEW_EVENTS[code][2]
    restored = contact_id_signal(event(code, Qualifier.RESTORE))
    assert (restored.type, restored.condition) == (RESTORE, condition)
    assert restored.as_event(1, 1) is None  # closing a trouble has no protocol v1 event
    status = contact_id_signal(event(code, Qualifier.STATUS))
    assert status.condition == condition and status.type in (TAMPER, TROUBLE)


@pytest.mark.parametrize("code", ALARM_CODES)
def test_a_zone_restore_or_status_never_ends_or_raises_an_alarm(code: int) -> None:
    for qualifier in (Qualifier.RESTORE, Qualifier.STATUS):
        assert contact_id_signal(event(code, qualifier)).type is IGNORED


def test_a_code_without_a_meaning_is_unknown_not_guessed() -> None:
    assert contact_id_signal(event(373)).type is UNKNOWN  # fire loop trouble: not mapped
    assert contact_id_signal(event(999)).as_event(1, 1) is None


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        ("#1234|1130 01 003", ("1234", Qualifier.NEW, 130, "01", "003")),
        ("#12345A|3301 00 000", ("12345A", Qualifier.RESTORE, 301, "00", "000")),
        ("6602 00 000", (None, Qualifier.STATUS, 602, "00", "000")),
        ("1401 02 015", (None, Qualifier.NEW, 401, "02", "015")),  # user 015 opened
    ],
)
def test_contact_id_data_is_read(data: str, parsed: tuple) -> None:
    e = parse_contact_id(data)
    assert (e.account, e.qualifier, e.code, e.partition, e.zone) == parsed


@pytest.mark.parametrize(
    "data", ["#1234|2130 01 003", "#1234|113 01 003", "#1234|1130 01", "NBA3", ""]
)
def test_what_is_not_contact_id_is_refused(data: str) -> None:
    with pytest.raises(CodeError):
        parse_contact_id(data)


@pytest.mark.parametrize(
    ("data", "events"),
    [
        ("#123456|NBA3", [SiaEvent("BA", "3")]),
        ("#123456|Nri1/BA3", [SiaEvent("BA", "3", area="1")]),
        ("#123456|Nri1BA3", [SiaEvent("BA", "3", area="1")]),  # my-dc09-spt's form
        ("Nid12/OP12/ri3/BA5/FA6", [
            SiaEvent("OP", "12", user="12"),
            SiaEvent("BA", "5", area="3", user="12"),
            SiaEvent("FA", "6", area="3", user="12"),
        ]),
        ("#123456|Nri1CL0^VX FRONTE ^", [SiaEvent("CL", "0", area="1")]),
        ("#AAA|Nti12:30/RP000", [SiaEvent("RP", "000")]),
    ],
)  # fmt: skip
def test_sia_dcs_data_is_read(data: str, events: list[SiaEvent]) -> None:
    assert list(parse_sia_dcs(data).events) == events


def test_sia_dcs_text_is_kept_and_a_block_without_a_code_refused() -> None:
    assert parse_sia_dcs("#1234|NPA1|AKitchen button").text == "Kitchen button"
    for data in ("#1234|Nri1", "#1234|BA3", "#1234|Nba3"):
        with pytest.raises(CodeError):
            parse_sia_dcs(data)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("MA", (ALARM, AlarmKind.MEDICAL, None)),
        ("FA", (ALARM, AlarmKind.FIRE, None)),
        ("PA", (ALARM, AlarmKind.PANIC, None)),
        ("HA", (ALARM, AlarmKind.PANIC, None)),
        ("BA", (ALARM, AlarmKind.BURGLARY, None)),
        ("GA", (ALARM, AlarmKind.GAS, None)),
        ("TA", (TAMPER, None, "tamper")),
        ("TR", (RESTORE, None, "tamper")),
        ("AT", (TROUBLE, None, "power_loss")),
        ("AR", (RESTORE, None, "power_loss")),
        ("YT", (TROUBLE, None, "low_battery")),
        ("YR", (RESTORE, None, "low_battery")),
        ("YC", (TROUBLE, None, "comm_failure")),
        ("YK", (RESTORE, None, "comm_failure")),
        ("WA", (TROUBLE, None, "water_leak")),
        ("WH", (RESTORE, None, "water_leak")),
        ("RP", (HEARTBEAT, None, None)),
        ("OP", (IGNORED, None, None)),
        ("CL", (IGNORED, None, None)),
        ("BH", (IGNORED, None, None)),
        ("ZZ", (UNKNOWN, None, None)),
    ],
)
def test_sia_dcs_codes_mean_what_their_contact_id_twins_mean(code: str, expected: tuple) -> None:
    signal = sia_signal(SiaEvent(code, "4"))
    assert (signal.type, signal.kind, signal.condition) == expected


def test_the_sia_and_contact_id_maps_agree_as_pysiaalarm_translates_codes() -> None:
    # pysiaalarm translates Contact ID to SIA codes on its own; both our maps must then
    # give one meaning. CID 113 (water flow, a sprinkler) is fire here, and 122 (silent
    # panic) is a hold-up there: both stay panic or fire alarms, flags aside.
    compared = 0
    for code in sorted(NEW_EVENTS):
        for qualifier in (Qualifier.NEW, Qualifier.RESTORE):
            sia_code = ADM_MAPPING.get(f"{code:03d}", {}).get(str(qualifier.value))
            if sia_code is None or code == 113:
                continue
            ours = contact_id_signal(event(code, qualifier))
            theirs = sia_signal(SiaEvent(sia_code, "005"))
            assert (ours.type, ours.kind, ours.condition) == (
                theirs.type,
                theirs.kind,
                theirs.condition,
            ), (code, qualifier, sia_code)
            compared += 1
    assert compared >= 40


def test_an_ignored_or_unknown_signal_is_not_an_event_the_hub_could_refuse() -> None:
    for signal in (contact_id_signal(event(401)), contact_id_signal(event(602))):
        assert signal.as_event(1, 1) is None
    with pytest.raises(ProtocolError):  # as_event is only what validate_event takes
        validate_event({"type": "alarm", "kind": "water_leak", "seq": 1, "ts": 1})
