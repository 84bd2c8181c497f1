"""Which of its unit's alarms a panel sounds for: neighbours' active alarms, never its own."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from devices.protocol import ACTIVE_STATES, AlarmState, UnitAlert

logger = logging.getLogger(__name__)

_REMEMBERED_ALARMS = 1024  # per map below; a unit sees a handful of alarms a year


def _remember(mapping: OrderedDict[str, Any], key: str, value: Any) -> None:
    mapping[key] = value
    mapping.move_to_end(key)
    while len(mapping) > _REMEMBERED_ALARMS:
        mapping.popitem(last=False)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A neighbour's alert; `started` / `stopped` say whether it switched the alarm on or off."""

    alert: UnitAlert
    started: bool
    stopped: bool


class UnitAlarms:
    """The unit's alarms sounding here: neighbours' active ones, never this household's own."""

    def __init__(self, household_id: str | None) -> None:
        self.household_id = household_id
        self.sounding: dict[str, UnitAlert] = {}
        self._last_ts: OrderedDict[str, int] = OrderedDict()
        self._applied: OrderedDict[str, frozenset[AlarmState]] = OrderedDict()
        self._own: OrderedDict[str, None] = OrderedDict()

    def mark_own(self, alarm_id: str) -> UnitAlert | None:
        """Note an alarm of this household; return its alert if it was sounding as a neighbour's."""
        _remember(self._own, alarm_id, None)
        # The hub may announce our alarm to the unit before our receipt arrives.
        return self.sounding.pop(alarm_id, None)

    def update(self, alert: UnitAlert) -> AlertChange | None:
        """Apply an alert; None for our own alarm's, a stale one, or a repeat (alarm_id, state)."""
        if alert.alarm_id in self._own or alert.household_id == self.household_id:
            return None
        last_ts = self._last_ts.get(alert.alarm_id)
        if last_ts is not None and alert.ts < last_ts:
            # A late copy of an older state must not restart a buzzer that was stopped.
            logger.debug("stale unit alert ignored", extra={"alarm_id": alert.alarm_id})
            return None
        applied = self._applied.get(alert.alarm_id, frozenset())
        if alert.state in applied:
            # Alerts come at least once: a hub killed between publishing one and recording
            # it sends it again. An alarm reaches each state once, so this is that repeat,
            # and it may carry the same ts as a later state (a raise cancelled within 1 ms).
            logger.debug("repeated unit alert ignored", extra={"alarm_id": alert.alarm_id})
            return None
        _remember(self._applied, alert.alarm_id, applied | {alert.state})
        _remember(self._last_ts, alert.alarm_id, alert.ts)
        was_active = alert.alarm_id in self.sounding
        active = alert.state in ACTIVE_STATES
        if active:
            self.sounding[alert.alarm_id] = alert
        else:
            self.sounding.pop(alert.alarm_id, None)
        return AlertChange(
            alert, started=active and not was_active, stopped=was_active and not active
        )
