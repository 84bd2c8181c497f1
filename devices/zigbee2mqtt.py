"""Zigbee2MQTT device payloads, read for what they mean to tenhub.

Zigbee2MQTT publishes a device's state as a JSON object on `<base>/<friendly_name>` and
its availability on `<base>/<friendly_name>/availability` (`{"state": "online"}`, or a bare
`online` in the legacy form). A button press is an `action` (`emergency`, `panic`, `sos`,
`fire`, with `_<endpoint>` appended on some multi-endpoint devices); a sensor reports
booleans (`smoke`, `gas`, `water_leak`, `tamper`, `battery_low`, `sos`) in every message,
so only a change from false (or never seen) to true raises, and a change back to false
ends a trouble.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from devices.device_signal import (
    LOW_BATTERY,
    TAMPER,
    WATER_LEAK,
    DeviceSignal,
    SignalType,
    alarm,
    restore,
    trouble,
)
from devices.protocol import AlarmKind, ProtocolError, Reason, load_json_object

DEFAULT_BASE_TOPIC = "zigbee2mqtt"
MAX_PAYLOAD_BYTES = 16_384  # a device with many attributes publishes a few kilobytes

# Button and keypad actions that call for help (IAS ACE emergency/panic/fire commands,
# Tuya keypads' `sos`).
ACTION_ALARMS = {
    "emergency": AlarmKind.PANIC,
    "panic": AlarmKind.PANIC,
    "sos": AlarmKind.PANIC,
    "fire": AlarmKind.FIRE,
}
# An endpoint name as Zigbee2MQTT appends it (`panic_l1`, `emergency_2`, `sos_left`), and
# nothing longer: `emergency_mode` is another action.
_ACTION = re.compile(
    rf"(?P<name>{'|'.join(ACTION_ALARMS)})(?:_(?:[a-z]{{0,3}}[0-9]{{1,2}}|left|right|center))?"
)
# IAS zone booleans that raise an alarm when they turn true; false again changes nothing,
# since people stand an alarm down.
FLAG_ALARMS = {
    "smoke": AlarmKind.FIRE,
    "gas": AlarmKind.GAS,
    "carbon_monoxide": AlarmKind.GAS,
    "sos": AlarmKind.PANIC,
}
# IAS zone booleans that open a trouble when true and close it when false.
FLAG_TROUBLES = {"tamper": TAMPER, "battery_low": LOW_BATTERY, "water_leak": WATER_LEAK}


class TopicKind(StrEnum):
    STATE = "state"
    AVAILABILITY = "availability"


@dataclass(frozen=True)
class DeviceTopic:
    device: str  # the friendly name, which may itself contain `/`
    kind: TopicKind


def parse_topic(topic: str, base: str = DEFAULT_BASE_TOPIC) -> DeviceTopic | None:
    """The device and kind of a Zigbee2MQTT topic; None for the bridge's and commands."""
    prefix = f"{base}/"
    if not topic.startswith(prefix) or topic.startswith(f"{prefix}bridge/"):
        return None
    rest = topic[len(prefix) :]
    if rest.endswith("/availability"):
        return DeviceTopic(rest.removesuffix("/availability"), TopicKind.AVAILABILITY)
    parts = rest.split("/")
    if not rest or "set" in parts[1:] or "get" in parts[1:]:
        return None  # a command to the device (`/set`, `/get`, `/set/<attribute>`)
    return DeviceTopic(rest, TopicKind.STATE)


def action_alarm(action: object) -> AlarmKind | None:
    """The alarm kind an `action` value calls for, endpoint suffix allowed; None if none."""
    match = _ACTION.fullmatch(action) if isinstance(action, str) else None
    return ACTION_ALARMS[match["name"]] if match else None


def parse_availability(payload: bytes) -> bool:
    """True for online, False for offline, in the JSON or the legacy form; ProtocolError else."""
    text = payload.strip()
    if text in (b"online", b"offline"):
        return text == b"online"
    state = load_json_object(payload, 1024).get("state")
    if state not in ("online", "offline"):
        raise ProtocolError(Reason.INVALID_FIELD, "availability state is online or offline")
    return state == "online"


@dataclass
class DeviceStates:
    """What each device last reported, so a repeated state raises nothing twice."""

    flags: dict[str, dict[str, bool]] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)

    def state_signals(self, device: str, payload: bytes) -> list[DeviceSignal]:
        """The signals a state payload carries: an action each time, a flag on its edge."""
        state = load_json_object(payload, MAX_PAYLOAD_BYTES)
        signals: list[DeviceSignal] = []
        kind = action_alarm(state.get("action"))
        if kind is not None:
            signals.append(alarm(kind, f"action {state['action']}"))
        last = self.flags.setdefault(device, {})
        for name in (*FLAG_ALARMS, *FLAG_TROUBLES):
            value = state.get(name)
            if not isinstance(value, bool):
                continue  # not reported in this message: nothing changed
            was = last.get(name, False)
            last[name] = value
            if value and not was:
                if name in FLAG_ALARMS:
                    signals.append(alarm(FLAG_ALARMS[name], f"{name} true"))
                else:
                    signals.append(trouble(FLAG_TROUBLES[name], f"{name} true"))
            elif was and not value and name in FLAG_TROUBLES:
                signals.append(restore(FLAG_TROUBLES[name], f"{name} false"))
        return signals

    def availability_signal(self, device: str, payload: bytes) -> DeviceSignal | None:
        """ONLINE or OFFLINE when the device's availability changed; None when it did not."""
        online = parse_availability(payload)
        if self.online.get(device) == online:
            return None
        self.online[device] = online
        kind = SignalType.ONLINE if online else SignalType.OFFLINE
        return DeviceSignal(kind, "availability")

    def signals(self, topic: DeviceTopic, payload: bytes) -> list[DeviceSignal]:
        """The signals of one message on a device's topic; ProtocolError if it does not parse."""
        if topic.kind is TopicKind.AVAILABILITY:
            signal = self.availability_signal(topic.device, payload)
            return [signal] if signal else []
        return self.state_signals(topic.device, payload)
