"""What an outside device's report means to tenhub, before it becomes a panel event.

Adapters for devices that do not speak tenhub's protocol (SIA DC-09 alarm panels,
Zigbee2MQTT buttons and sensors) turn each report into `DeviceSignal`s; the hub then
raises, opens or closes exactly as it does for a native panel's event.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from devices.protocol import AlarmKind, EventType

# Trouble names, as the hub's supervision opens and words them.
TAMPER = "tamper"
LOW_BATTERY = "low_battery"
POWER_LOSS = "power_loss"
COMM_FAILURE = "comm_failure"
WATER_LEAK = "water_leak"  # no alarm kind in protocol v1: a trouble for the household


class SignalType(StrEnum):
    ALARM = "alarm"  # raise an alarm of `kind`
    TAMPER = "tamper"  # the device was tampered with (the `tamper` trouble)
    TROUBLE = "trouble"  # open the trouble `condition`
    RESTORE = "restore"  # close the trouble `condition`
    HEARTBEAT = "heartbeat"  # a periodic test: the device is alive
    ONLINE = "online"
    OFFLINE = "offline"
    IGNORED = "ignored"  # understood and deliberately left alone (logged only)
    UNKNOWN = "unknown"  # well formed, but no meaning tenhub knows


@dataclass(frozen=True)
class DeviceSignal:
    """One meaning of a device report; `source` says what the device sent (e.g. `1130`)."""

    type: SignalType
    source: str
    kind: AlarmKind | None = None
    condition: str | None = None
    duress: bool = False  # goes straight to the police, as a duress PIN does
    silent: bool = False  # the household's own sounder stays quiet
    zone: str | None = None

    def as_event(self, seq: int, ts: int) -> dict[str, Any] | None:
        """The protocol v1 event this signal stands for, or None when it has none."""
        base: dict[str, Any] = {"seq": seq, "ts": ts}
        detail = f"{self.source} zone {self.zone}" if self.zone else self.source
        if self.type is SignalType.ALARM:
            return {"type": EventType.ALARM.value, "kind": self.kind.value, **base}
        if self.type is SignalType.TAMPER:
            return {"type": EventType.TAMPER.value, "detail": detail, **base}
        if self.type is SignalType.TROUBLE:
            return {
                "type": EventType.TROUBLE.value,
                "condition": self.condition,
                "detail": detail,
                **base,
            }
        return None


def alarm(kind: AlarmKind, source: str, **extra: Any) -> DeviceSignal:
    """A signal that raises an alarm of `kind`."""
    return DeviceSignal(SignalType.ALARM, source, kind=kind, **extra)


def trouble(condition: str, source: str, **extra: Any) -> DeviceSignal:
    """A signal that opens a trouble (`tamper` opens the tamper trouble)."""
    if condition == TAMPER:
        return DeviceSignal(SignalType.TAMPER, source, condition=TAMPER, **extra)
    return DeviceSignal(SignalType.TROUBLE, source, condition=condition, **extra)


def restore(condition: str, source: str, **extra: Any) -> DeviceSignal:
    """A signal that closes the open trouble `condition`."""
    return DeviceSignal(SignalType.RESTORE, source, condition=condition, **extra)
