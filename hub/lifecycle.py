"""What a panel event does to alarms: the lifecycle rules, run inside one write transaction.

`PanelEventHandler.apply` is called on the writer thread with the event already parsed.
It deduplicates on (panel_id, seq), applies the rules, appends to the timeline and
queues the unit alert in the outbox, all in the caller's transaction, and returns the
receipt to send once that transaction has committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from devices.protocol import (
    AckEvent,
    AlarmEvent,
    AlarmState,
    CancelEvent,
    PanelEvent,
    Reason,
    Receipt,
    ReceiptStatus,
    UnitAlert,
    encode,
)
from hub.alarm_store import Alarm, AlarmTx, StoredEvent
from hub.ids import new_alarm_id
from hub.outbox_store import OutboxTx
from hub.registry import PanelPlace

CLOSED_STATES = frozenset({AlarmState.RESOLVED, AlarmState.CANCELLED})

# Which states an alarm may move to from each state; anything else is refused.
TRANSITIONS: dict[AlarmState, frozenset[AlarmState]] = {
    AlarmState.RAISED: frozenset(
        {AlarmState.ACKNOWLEDGED, AlarmState.ON_SCENE, AlarmState.RESOLVED, AlarmState.CANCELLED}
    ),
    AlarmState.ACKNOWLEDGED: frozenset(
        {AlarmState.ON_SCENE, AlarmState.RESOLVED, AlarmState.CANCELLED}
    ),
    AlarmState.ON_SCENE: frozenset({AlarmState.RESOLVED}),
    AlarmState.RESOLVED: frozenset(),
    AlarmState.CANCELLED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """The tunable parts of the lifecycle."""

    cancel_window_ms: int = 120_000
    max_wrong_pins: int = 5


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What the hub answers, and whether notifications were queued."""

    receipt: Receipt
    alarm_id: str | None = None
    notifications_queued: int = 0
    new_alarm: bool = False


class Refused(Exception):
    """The rules refuse the event; what was recorded before the refusal (a wrong PIN) stays."""

    def __init__(self, reason: Reason, detail: str, alarm_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.alarm_id = alarm_id


def household_ref(place: PanelPlace) -> str:
    """The actor name of a household on timelines: `household:u-0001/h-01`."""
    return f"household:{place.unit.id}/{place.household.id}"


class PanelEventHandler:
    """Applies panel events to the database inside the writer's transaction."""

    def __init__(self, rules: LifecycleRules | None = None) -> None:
        self.rules = rules or LifecycleRules()

    def apply(
        self,
        db: sqlite_utils.Database,
        place: PanelPlace,
        event: PanelEvent,
        payload_text: str,
        now: int,
    ) -> EventOutcome:
        """Dedupe, apply and record one event; returns the receipt to send after commit."""
        tx = AlarmTx(db)
        panel_id = place.household.panel
        stored = tx.find_panel_event(panel_id, event.seq)
        if stored is not None:
            return self._repeat(stored, event.seq, payload_text)
        outbox = OutboxTx(db)
        try:
            if isinstance(event, AlarmEvent):
                outcome = self._raise_alarm(tx, outbox, place, event, now)
            elif isinstance(event, AckEvent):
                outcome = self._acknowledge(tx, outbox, place, event, now)
            elif isinstance(event, CancelEvent):
                outcome = self._cancel(tx, outbox, place, event, now)
            else:
                # test, tamper, trouble: stored and receipted; supervision reads them.
                outcome = EventOutcome(Receipt(seq=event.seq, status=ReceiptStatus.ACCEPTED))
        except Refused as refusal:
            outcome = EventOutcome(
                Receipt(
                    seq=event.seq,
                    status=ReceiptStatus.REJECTED,
                    alarm_id=refusal.alarm_id,
                    error=f"{refusal.reason.value}: {refusal.detail}",
                ),
                alarm_id=refusal.alarm_id,
            )
        receipt = outcome.receipt
        # Refusals are stored too: a repeat gets the same answer, and a wrong PIN counts once.
        tx.insert_panel_event(
            StoredEvent(
                panel_id=panel_id, seq=event.seq, type=event.type.value, payload=payload_text,
                alarm_id=receipt.alarm_id, status=receipt.status.value, error=receipt.error,
                received_at=now,
            )
        )
        return outcome

    def _repeat(self, stored: StoredEvent, seq: int, payload_text: str) -> EventOutcome:
        if stored.payload != payload_text:
            return EventOutcome(
                Receipt(
                    seq=seq,
                    status=ReceiptStatus.REJECTED,
                    error=f"{Reason.SEQ_REUSED.value}: seq {seq} was already used by another"
                    " event of this panel; send new events with a higher seq",
                )
            )
        if stored.status == ReceiptStatus.ACCEPTED:
            receipt = Receipt(seq=seq, status=ReceiptStatus.DUPLICATE, alarm_id=stored.alarm_id)
        else:
            receipt = Receipt(
                seq=seq, status=ReceiptStatus.REJECTED, alarm_id=stored.alarm_id,
                error=stored.error,
            )
        return EventOutcome(receipt, alarm_id=stored.alarm_id)

    def _raise_alarm(
        self, tx: AlarmTx, outbox: OutboxTx, place: PanelPlace, event: AlarmEvent, now: int
    ) -> EventOutcome:
        alarm = Alarm(
            id=new_alarm_id(now), unit_id=place.unit.id, household_id=place.household.id,
            panel_id=place.household.panel, kind=event.kind.value, state=AlarmState.RAISED.value,
            raised_at=now, panel_ts=event.ts, seq=event.seq, updated_at=now,
        )
        tx.insert_alarm(alarm)
        entry_id = tx.append_timeline(
            alarm.id, now, "raised", alarm.state, actor=household_ref(place), channel="panel",
            detail={"kind": alarm.kind, "panel": alarm.panel_id, "seq": event.seq,
                    "panel_ts": event.ts},
        )
        queued = queue_unit_alert(outbox, alarm, AlarmState.RAISED, now, entry_id)
        return EventOutcome(
            Receipt(seq=event.seq, status=ReceiptStatus.ACCEPTED, alarm_id=alarm.id),
            alarm_id=alarm.id, notifications_queued=queued, new_alarm=True,
        )

    def _alarm_of_unit(self, tx: AlarmTx, place: PanelPlace, alarm_id: str) -> Alarm:
        alarm = tx.get_alarm(alarm_id)
        if alarm is None:
            raise Refused(Reason.UNKNOWN_ALARM, f"no alarm {alarm_id!r}")
        if alarm.unit_id != place.unit.id:
            # Say nothing about the other unit's alarm: not even that it exists.
            raise Refused(Reason.OTHER_UNIT, f"alarm {alarm_id!r} is not an alarm of this unit")
        return alarm

    def _acknowledge(
        self, tx: AlarmTx, outbox: OutboxTx, place: PanelPlace, event: AckEvent, now: int
    ) -> EventOutcome:
        alarm = self._alarm_of_unit(tx, place, event.alarm_id)
        if alarm.household_id == place.household.id:
            raise Refused(
                Reason.OWN_ALARM,
                "a household cannot acknowledge its own alarm; cancel it with the PIN",
                alarm.id,
            )
        state = AlarmState(alarm.state)
        if state in CLOSED_STATES:
            raise Refused(Reason.INVALID_STATE, f"alarm is already {state.value}", alarm.id)
        queued = 0
        new_state = state
        if state == AlarmState.RAISED:
            new_state = AlarmState.ACKNOWLEDGED
            tx.set_state(alarm.id, new_state.value, now)
        entry_id = tx.append_timeline(
            alarm.id, now, "acknowledged", new_state.value, actor=household_ref(place),
            channel="panel", detail={"role": "neighbors", "panel": place.household.panel},
        )
        if new_state != state:
            queued = queue_unit_alert(outbox, alarm, new_state, now, entry_id)
        return EventOutcome(
            Receipt(seq=event.seq, status=ReceiptStatus.ACCEPTED, alarm_id=alarm.id),
            alarm_id=alarm.id, notifications_queued=queued,
        )

    def _cancel(
        self, tx: AlarmTx, outbox: OutboxTx, place: PanelPlace, event: CancelEvent, now: int
    ) -> EventOutcome:
        alarm = self._alarm_of_unit(tx, place, event.alarm_id)
        if alarm.household_id != place.household.id:
            raise Refused(
                Reason.NOT_OWN_ALARM, "only the household that raised an alarm can cancel it",
                alarm.id,
            )
        state = AlarmState(alarm.state)
        accepted = Receipt(seq=event.seq, status=ReceiptStatus.ACCEPTED, alarm_id=alarm.id)
        if state == AlarmState.CANCELLED:
            return EventOutcome(accepted, alarm_id=alarm.id)
        if AlarmState.CANCELLED not in TRANSITIONS[state]:
            raise Refused(
                Reason.INVALID_STATE, f"alarm is {state.value} and can no longer be cancelled",
                alarm.id,
            )
        wrong = tx.count_timeline(alarm.id, "cancel_refused")
        if wrong >= self.rules.max_wrong_pins:
            raise Refused(
                Reason.CANCEL_LOCKED,
                f"cancelling is locked after {wrong} wrong PINs; the alarm goes on",
                alarm.id,
            )
        if now - alarm.raised_at > self.rules.cancel_window_ms:
            raise Refused(
                Reason.CANCEL_WINDOW_CLOSED,
                f"the cancel window of {self.rules.cancel_window_ms // 1000} s has passed;"
                " ask the patrol or the police desk to stand the alarm down",
                alarm.id,
            )
        household = place.household
        if household.pin is None or event.pin != household.pin:
            wrong += 1
            tx.append_timeline(
                alarm.id, now, "cancel_refused", state.value, actor=household_ref(place),
                channel="panel", detail={"wrong_pins": wrong},
            )
            left = self.rules.max_wrong_pins - wrong
            detail = "no PIN is set for this household" if household.pin is None else "wrong PIN"
            detail += f"; {left} tries left" if left else "; cancelling is now locked"
            raise Refused(Reason.WRONG_PIN, detail, alarm.id)
        entry_id = tx.append_timeline(
            alarm.id, now, "cancelled", AlarmState.CANCELLED.value, actor=household_ref(place),
            channel="panel", detail={"by": "pin"},
        )
        tx.set_state(alarm.id, AlarmState.CANCELLED.value, now)
        queued = queue_unit_alert(outbox, alarm, AlarmState.CANCELLED, now, entry_id)
        return EventOutcome(accepted, alarm_id=alarm.id, notifications_queued=queued)


def queue_unit_alert(
    outbox: OutboxTx, alarm: Alarm, state: AlarmState, now: int, entry_id: int
) -> int:
    """Queue the unit alert for a change of state; returns how many messages were queued."""
    alert = UnitAlert(
        alarm_id=alarm.id, household_id=alarm.household_id, kind=alarm.kind, state=state, ts=now
    )
    added = outbox.enqueue(
        alarm_id=alarm.id, channel="panel", recipient=alarm.unit_id,
        payload=encode(alert).decode(), idempotency_key=f"panel:{alarm.id}:{entry_id}", now=now,
    )
    return int(added)
