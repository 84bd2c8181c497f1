"""A panel's event applied to the database: deduplicated, checked, recorded, answered.

`PanelEventHandler.apply` runs on the writer thread with the event already parsed, in
the transaction that stores it; it returns the receipt to send once that commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from alerts.channel import OutboxMessage
from devices.protocol import (
    AckEvent,
    AlarmEvent,
    CancelEvent,
    PanelEvent,
    Reason,
    Receipt,
    ReceiptStatus,
    TamperEvent,
    TroubleEvent,
)
from hub.alarms import lifecycle
from hub.alarms.alarm_store import Alarm, StoredEvent
from hub.alarms.work import AlarmChange, AlarmContext, Refused, Responder, Work
from hub.panels.supervision import open_trouble
from hub.registry.model import PanelPlace
from hub.storage.db import Conn


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What the hub answers, and what the change set in motion."""

    receipt: Receipt
    alarm_id: str | None = None
    notifications_queued: int = 0
    new_alarm: bool = False
    changes: tuple[AlarmChange, ...] = ()
    fast_sends: tuple[OutboxMessage, ...] = ()  # to send at once (the fast path)
    # The event as the database holds it (stored now, or found there for a repeat):
    # what a later copy of it is answered from.
    stored: StoredEvent | None = None


class PanelEventHandler:
    """Applies panel events inside the writer's transaction."""

    def __init__(self, context: AlarmContext) -> None:
        self.context = context

    def apply(
        self,
        conn: Conn,
        place: PanelPlace,
        event: PanelEvent,
        payload_text: str,
        now: int,
        *,
        signed: bool = False,
        duress: bool = False,
    ) -> EventOutcome:
        """Dedupe, apply and record one event; returns the receipt to send after commit.

        A signed event must carry a `ts` near the hub's time (a replay window): a repeat
        of a stored event is still a duplicate, however late it comes. `duress` raises an
        alarm under duress (a device's hold-up code): silent, straight to the police.
        """
        w = Work.begin(conn, self.context, now)
        panel_id = place.household.panel
        stored = w.alarms.find_panel_event(panel_id, event.seq)
        if stored is not None and not counter_was_reset(stored, event, payload_text):
            return answer_repeat(stored, event.seq, payload_text)
        new_alarm = False
        try:
            if signed:
                self._check_window(event.ts, now)
            if isinstance(event, AlarmEvent):
                # The ladder's first step is the engine's, woken by this commit: the
                # receipt and the buzzers wait only for the alarm itself to be stored.
                alarm = lifecycle.raise_alarm(
                    w, place, event.kind.value, event.ts, event.seq, fire_due=False, duress=duress
                )
                new_alarm = alarm.seq == event.seq  # else a repeat joined an open alarm
            elif isinstance(event, AckEvent):
                alarm = self._alarm_of_unit(w, place, event.alarm_id)
                if alarm.household_id == place.household.id:
                    raise Refused(
                        Reason.OWN_ALARM,
                        "a household cannot acknowledge its own alarm; cancel it with the PIN",
                        alarm.id,
                    )
                lifecycle.acknowledge(w, alarm, self._responder(place, alarm), "panel")
            elif isinstance(event, CancelEvent):
                alarm = self._alarm_of_unit(w, place, event.alarm_id)
                if alarm.household_id != place.household.id:
                    raise Refused(
                        Reason.NOT_OWN_ALARM,
                        "only the household that raised an alarm can cancel it",
                        alarm.id,
                    )
                lifecycle.cancel_with_pin(w, alarm, place, event.pin)
            elif isinstance(event, TamperEvent):
                open_trouble(w, place, "tamper", {"detail": event.detail} if event.detail else None)
                alarm = None
            elif isinstance(event, TroubleEvent):
                kind = event.condition or "trouble"
                open_trouble(w, place, kind, {"detail": event.detail} if event.detail else None)
                alarm = None
            else:
                alarm = None  # a panel test: stored and receipted
            receipt = Receipt(
                seq=event.seq,
                status=ReceiptStatus.ACCEPTED,
                alarm_id=alarm.id if alarm else None,
            )
        except Refused as refusal:
            receipt = Receipt(
                seq=event.seq,
                status=ReceiptStatus.REJECTED,
                alarm_id=refusal.alarm_id,
                error=refusal.error,
            )
        if stored is not None:
            # The panel lost its counter (replaced, reset): its new event takes the seq, the
            # old one is kept aside, and the operator sees a trouble, once.
            w.alarms.supersede_panel_event(stored, now)
            open_trouble(
                w, place, "seq_reset",
                {"seq": event.seq, "previous_ts": _ts_of(stored), "ts": event.ts},
                tell_household=False,
            )  # fmt: skip
        # Refusals are stored too: a repeat gets the same answer, and a wrong PIN counts once.
        stored = StoredEvent(
            panel_id=panel_id,
            seq=event.seq,
            type=event.type.value,
            payload=payload_text,
            alarm_id=receipt.alarm_id,
            status=receipt.status.value,
            error=receipt.error,
            received_at=now,
        )
        w.alarms.insert_panel_event(stored)
        return EventOutcome(
            receipt,
            alarm_id=receipt.alarm_id,
            notifications_queued=w.queued,
            new_alarm=new_alarm,
            changes=tuple(w.changes),
            fast_sends=tuple(w.fast_sends),
            stored=stored,
        )

    def _check_window(self, ts: int, now: int) -> None:
        rules = self.context.rules
        drift = ts - now
        if -rules.ts_behind_ms <= drift <= rules.ts_ahead_ms:
            return
        where = f"{-drift / 1000:.0f} s behind" if drift < 0 else f"{drift / 1000:.0f} s ahead of"
        raise Refused(
            Reason.TS_OUT_OF_WINDOW,
            f"ts is {where} the hub's clock (allowed {rules.ts_behind_ms // 1000} s behind,"
            f" {rules.ts_ahead_ms // 1000} s ahead); hub time {now}: send the event again"
            " with a new seq and the hub's time",
        )

    def _alarm_of_unit(self, w: Work, place: PanelPlace, alarm_id: str) -> Alarm:
        alarm = lifecycle.get_alarm(w, alarm_id)
        if alarm.unit_id != place.unit.id:
            # Say nothing about the other unit's alarm: not even that it exists.
            raise Refused(Reason.OTHER_UNIT, f"alarm {alarm_id!r} is not an alarm of this unit")
        return alarm

    def _responder(self, place: PanelPlace, alarm: Alarm) -> Responder:
        keys = self.context.registry.key_households_of(alarm.unit_id)
        is_key = any(u.id == place.unit.id and h.id == place.household.id for u, h in keys)
        return Responder(
            lifecycle.household_actor(place), "key_households" if is_key else "neighbors"
        )


def counter_was_reset(stored: StoredEvent, event: PanelEvent, payload_text: str) -> bool:
    """Whether an event reusing a stored seq is new: another payload, and a later `ts`.

    A panel that lost its counter starts again at 1; its events are never refused for
    that. A byte-identical copy is a repeat, and an older `ts` is no sign of a new event.
    """
    return stored.payload != payload_text and event.ts > _ts_of(stored)


def _ts_of(stored: StoredEvent) -> int:
    ts = json.loads(stored.payload).get("ts")
    # Stored events passed validation: ts is an int. Anything else never counts as older.
    return ts if isinstance(ts, int) else 2**63


def answer_repeat(stored: StoredEvent, seq: int, payload_text: str) -> EventOutcome:
    """The answer to an event whose seq the panel already used: stored is that first one."""
    if stored.payload != payload_text:
        return EventOutcome(
            Receipt(
                seq=seq,
                status=ReceiptStatus.REJECTED,
                error=f"{Reason.SEQ_REUSED.value}: seq {seq} was already used by another"
                " event of this panel; send new events with a higher seq",
            ),
            stored=stored,
        )
    if stored.status == ReceiptStatus.ACCEPTED:
        receipt = Receipt(seq=seq, status=ReceiptStatus.DUPLICATE, alarm_id=stored.alarm_id)
    else:
        receipt = Receipt(
            seq=seq, status=ReceiptStatus.REJECTED, alarm_id=stored.alarm_id, error=stored.error
        )
    return EventOutcome(receipt, alarm_id=stored.alarm_id, stored=stored)
