"""Zigbee2MQTT devices a household already owns: what their payloads mean to tenhub.

The payloads are shaped as Zigbee2MQTT publishes them for the named device models (from
zigbee-herdsman-converters: the converters each model uses and the attributes they set).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from devices.device_signal import SignalType
from devices.protocol import AlarmKind, ProtocolError, validate_event
from devices.zigbee2mqtt import DeviceStates, DeviceTopic, TopicKind, action_alarm, parse_topic
from tests.mqtt_probe import MqttProbe

# Tuya TS0215A_sos (BT400B, Woox R7052, Nedis ZBPB10BK): IAS ACE emergency + battery.
SOS_BUTTON = {"action": "emergency", "battery": 100, "voltage": 3000, "linkquality": 120}
# Climax KP-23EL-ZBS-ACE remote keypad: IAS ACE panic / emergency / arm, IAS zone flags.
KEYPAD_PANIC = {"action": "panic", "battery_low": False, "tamper": False, "linkquality": 90}
# Immax 07505L Neo smart keypad (Tuya datapoints): its SOS key.
IMMAX_SOS = {"action": "sos", "battery": 80, "linkquality": 70}
# Feibit SEB01ZB SOS button: an IAS zone whose alarm 2 bit is `sos`.
FEIBIT_SOS = {"sos": True, "tamper": False, "battery_low": False, "battery": 90}
# Climax SD-8SCZBS smoke detector: every IAS zone status bit, in each message.
SMOKE = {
    "smoke": True,
    "tamper": False,
    "battery_low": False,
    "supervision_reports": True,
    "restore_reports": True,
    "trouble": False,
    "ac_status": False,
    "test": False,
    "battery_defect": False,
    "battery": 100,
    "linkquality": 80,
}
# Heiman HS1CG-M combustible gas sensor.
GAS = {"gas": True, "tamper": False, "battery_low": False, "linkquality": 66}
# Climax WLS-15ZBS water leakage sensor.
WATER = {"water_leak": True, "tamper": False, "battery_low": False, "battery": 95}


def payload(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def meanings(signals) -> list[tuple]:
    return [(s.type, s.kind, s.condition) for s in signals]


ALARM, TAMPER, TROUBLE, RESTORE = (
    SignalType.ALARM,
    SignalType.TAMPER,
    SignalType.TROUBLE,
    SignalType.RESTORE,
)


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (SOS_BUTTON, AlarmKind.PANIC),
        (KEYPAD_PANIC, AlarmKind.PANIC),
        ({**KEYPAD_PANIC, "action": "emergency"}, AlarmKind.PANIC),
        (IMMAX_SOS, AlarmKind.PANIC),
        ({"action": "fire"}, AlarmKind.FIRE),
        (FEIBIT_SOS, AlarmKind.PANIC),
        (SMOKE, AlarmKind.FIRE),
        (GAS, AlarmKind.GAS),
    ],
    ids=["ts0215a-sos", "kp23-panic", "kp23-emergency", "immax-sos", "ace-fire", "feibit-sos",
         "climax-smoke", "heiman-gas"],
)  # fmt: skip
def test_a_device_calling_for_help_raises_an_alarm_of_its_kind(state: dict, kind) -> None:
    signals = DeviceStates().state_signals("hall button", payload(state))
    assert meanings(signals) == [(ALARM, kind, None)]
    # It is an event a native panel could have sent.
    assert validate_event(signals[0].as_event(seq=1, ts=1)).kind is kind


def test_every_press_of_a_button_is_an_alarm_and_a_bare_battery_report_is_not() -> None:
    states = DeviceStates()
    presses = [states.state_signals("sos", payload(SOS_BUTTON)) for _ in range(2)]
    assert [meanings(p) for p in presses] == [[(ALARM, AlarmKind.PANIC, None)]] * 2
    assert states.state_signals("sos", payload({"battery": 99, "linkquality": 80})) == []
    assert states.state_signals("sos", payload({"action": "", "battery": 99})) == []


@pytest.mark.parametrize(
    "action",
    ["arm_all_zones", "disarm", "arm_day_zones", "exit_delay", "single", "emergency_mode", 3],
)
def test_arming_and_other_actions_raise_nothing(action) -> None:
    assert action_alarm(action) is None
    assert DeviceStates().state_signals("keypad", payload({"action": action})) == []


def test_an_endpoint_suffixed_action_still_calls_for_help() -> None:
    assert action_alarm("panic_l1") is AlarmKind.PANIC
    assert action_alarm("emergency_2") is AlarmKind.PANIC
    assert action_alarm("sos_left") is AlarmKind.PANIC


def test_a_smoke_detector_raises_once_while_smoke_stays_and_again_after_it_cleared() -> None:
    states = DeviceStates()
    first = states.state_signals("kitchen smoke", payload(SMOKE))
    repeat = states.state_signals("kitchen smoke", payload({**SMOKE, "battery": 99}))
    cleared = states.state_signals("kitchen smoke", payload({**SMOKE, "smoke": False}))
    again = states.state_signals("kitchen smoke", payload(SMOKE))
    assert meanings(first) == [(ALARM, AlarmKind.FIRE, None)]
    assert repeat == [] and cleared == []  # people stand the alarm down, not the sensor
    assert meanings(again) == [(ALARM, AlarmKind.FIRE, None)]


def test_devices_are_tracked_apart() -> None:
    states = DeviceStates()
    assert states.state_signals("gas 1", payload(GAS))
    assert meanings(states.state_signals("gas 2", payload(GAS))) == [(ALARM, AlarmKind.GAS, None)]


@pytest.mark.parametrize(
    ("flag", "condition", "base"),
    [
        ("tamper", "tamper", SMOKE),
        ("battery_low", "low_battery", GAS),
        ("water_leak", "water_leak", WATER),
    ],
)
def test_a_trouble_opens_on_its_edge_and_closes_when_it_clears(flag, condition, base) -> None:
    quiet = {k: v for k, v in base.items() if k not in ("smoke", "gas", "water_leak")}
    states = DeviceStates()
    assert states.state_signals("sensor", payload({**quiet, flag: False})) == []
    opened = states.state_signals("sensor", payload({**quiet, flag: True}))
    held = states.state_signals("sensor", payload({**quiet, flag: True}))
    closed = states.state_signals("sensor", payload({**quiet, flag: False}))
    kind = TAMPER if flag == "tamper" else TROUBLE
    assert meanings(opened) == [(kind, None, condition)]
    assert held == []
    assert meanings(closed) == [(RESTORE, None, condition)]
    assert validate_event(opened[0].as_event(seq=2, ts=1)).type.value == kind.value


def test_a_water_leak_is_a_trouble_because_protocol_v1_has_no_water_kind() -> None:
    assert meanings(DeviceStates().state_signals("bath", payload(WATER))) == [
        (TROUBLE, None, "water_leak")
    ]


def test_a_smoke_and_a_tamper_in_one_message_are_both_told() -> None:
    signals = DeviceStates().state_signals("hall", payload({**SMOKE, "tamper": True}))
    assert meanings(signals) == [(ALARM, AlarmKind.FIRE, None), (TAMPER, None, "tamper")]


@pytest.mark.parametrize(
    ("sequence", "told"),
    [
        ([b'{"state":"online"}', b'{"state":"online"}'], ["online"]),
        ([b"online", b"offline", b"offline", b"online"], ["online", "offline", "online"]),
        ([b'{"state":"offline"}'], ["offline"]),
    ],
    ids=["json-repeated", "legacy", "first-offline"],
)
def test_availability_is_told_when_it_changes(sequence: list[bytes], told: list[str]) -> None:
    states = DeviceStates()
    signals = [states.availability_signal("button", p) for p in sequence]
    assert [s.type.value for s in signals if s] == told


@pytest.mark.parametrize("bad", [b'{"state":"maybe"}', b"[1]", b"onl", b'{"state":1}', b"\xff"])
def test_an_availability_that_is_neither_is_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        DeviceStates().availability_signal("button", bad)


@pytest.mark.parametrize("bad", [b"not json", b"[]", b'"emergency"', b"{" * 5000])
def test_a_state_that_is_not_a_json_object_is_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        DeviceStates().state_signals("button", bad)


@pytest.mark.parametrize(
    ("topic", "parsed"),
    [
        ("zigbee2mqtt/hall button", DeviceTopic("hall button", TopicKind.STATE)),
        ("zigbee2mqtt/2-101/sos", DeviceTopic("2-101/sos", TopicKind.STATE)),
        ("zigbee2mqtt/2-101/sos/availability", DeviceTopic("2-101/sos", TopicKind.AVAILABILITY)),
        ("zigbee2mqtt/0x00158d0001a2b3c4", DeviceTopic("0x00158d0001a2b3c4", TopicKind.STATE)),
        ("zigbee2mqtt/bridge/state", None),
        ("zigbee2mqtt/bridge/devices", None),
        ("zigbee2mqtt/hall button/set", None),
        ("zigbee2mqtt/hall button/set/warning", None),
        ("zigbee2mqtt/hall button/get", None),
        ("zigbee2mqtt", None),
        ("other/hall button", None),
    ],
)
def test_topics_name_the_device_and_what_it_tells(topic: str, parsed) -> None:
    assert parse_topic(topic) == parsed


def test_another_base_topic() -> None:
    assert parse_topic("z2m/home/button", base="z2m/home") == DeviceTopic("button", TopicKind.STATE)


async def test_payloads_replayed_through_mosquitto_give_each_meaning_once(mosquitto) -> None:
    """Zigbee2MQTT's messages as a broker delivers them, retained availability included."""
    sends = [
        ("zigbee2mqtt/2-101 sos/availability", b'{"state":"online"}', True),
        ("zigbee2mqtt/2-101 sos", payload(SOS_BUTTON), False),
        ("zigbee2mqtt/2-102 smoke", payload(SMOKE), False),
        ("zigbee2mqtt/2-102 smoke", payload({**SMOKE, "linkquality": 75}), False),
        ("zigbee2mqtt/2-102 smoke", payload({**SMOKE, "tamper": True}), False),
        ("zigbee2mqtt/bridge/state", b'{"state":"online"}', True),
        ("zigbee2mqtt/2-101 sos/availability", b'{"state":"offline"}', True),
    ]
    probe = MqttProbe("127.0.0.1", mosquitto.port, "z2m-replay", ["zigbee2mqtt/#"])
    try:
        for topic, body, retain in sends:
            probe.client.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)
        last = "zigbee2mqtt/2-101 sos/availability"
        await asyncio.to_thread(probe.wait_for, last, 2, 10.0)
        received = probe.raw_messages()
    finally:
        probe.close()
    assert len(received) == len(sends)
    states = DeviceStates()
    told: list[tuple[str, str, object]] = []
    for topic, body in received:
        where = parse_topic(topic)
        if where is not None:
            for s in states.signals(where, body):
                told.append((where.device, s.type.value, s.kind or s.condition))
    assert told == [
        ("2-101 sos", "online", None),
        ("2-101 sos", "alarm", AlarmKind.PANIC),
        ("2-102 smoke", "alarm", AlarmKind.FIRE),
        ("2-102 smoke", "tamper", "tamper"),
        ("2-101 sos", "offline", None),
    ]
