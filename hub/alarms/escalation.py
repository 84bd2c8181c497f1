"""The escalation engine: each alarm's ladder, stepped forward from database state.

A step is fired or skipped inside the transaction that records it (`alarm_steps` has one
row per alarm and step, so twice is impossible) and writes its outbox rows, so a step
fires at least once and at most once, across any crash. Timers are rows: a hub killed
and started again fires every step that came due meanwhile, at once, and the timeline
shows how late (due_at, fired_at).
"""

from __future__ import annotations

import logging
from typing import Protocol

from devices.protocol import AlarmState, Reason
from hub.alarms.alarm_store import Alarm, StepRecord
from hub.alarms.messages import compose
from hub.alarms.policy import Policy, Step, Unless
from hub.alarms.recipients import (
    AlarmNotice,
    Recipient,
    alarm_notice,
    resolve_recipients,
    with_push,
)
from hub.alarms.work import AfterCommit, AlarmContext, Refused, Responder, Work
from hub.storage.db import Conn, Database

logger = logging.getLogger(__name__)

SYSTEM = "system:escalation"


def _policy(alarm: Alarm) -> Policy:
    assert alarm.ladder is not None
    return Policy.from_json(alarm.ladder)


def unless_reason(w: Work, alarm: Alarm, unless: Unless | None) -> str | None:
    """Why a step's `unless` holds for the alarm now (the step is skipped), or None."""
    if unless is None:
        return None
    counts_who = unless.by is not None and alarm.state == AlarmState.ACKNOWLEDGED
    roles = w.alarms.ack_roles(alarm.id) if counts_who else set()
    if not unless.is_met(alarm.state, roles):
        return None
    if counts_who:
        return f"acknowledged by {', '.join(sorted(roles & set(unless.by or ())))}"
    return f"alarm {alarm.state}"


def advance_ladder(w: Work, alarm: Alarm) -> None:
    """Fire or skip every step of the alarm that is due now, then point at the next one."""
    alarm = w.reload(alarm)
    if alarm.next_step is None:
        return
    steps = _policy(alarm).steps
    index = alarm.next_step
    while index < len(steps):
        step = steps[index]
        due_at = alarm.raised_at + step.after_ms
        if due_at > w.now:
            w.alarms.set_next_step(alarm.id, index, due_at)
            return
        if alarm.state in (AlarmState.RESOLVED, AlarmState.CANCELLED):
            reason: str | None = f"alarm {alarm.state}"  # over: no step fires, unless or not
        else:
            reason = unless_reason(w, alarm, step.unless)
        if reason is None:
            _fire(w, alarm, index, step, due_at)
        else:
            _skip(w, alarm, index, step, due_at, reason)
        index += 1
    w.alarms.set_next_step(alarm.id, None, None)


def close_ladder(w: Work, alarm: Alarm, reason: str) -> None:
    """Skip every step not yet fired (the alarm is over)."""
    if alarm.next_step is None:
        return
    steps = _policy(alarm).steps
    for index in range(alarm.next_step, len(steps)):
        _skip(w, alarm, index, steps[index], alarm.raised_at + steps[index].after_ms, reason)
    w.alarms.set_next_step(alarm.id, None, None)


def go_to_police(w: Work, alarm: Alarm) -> None:
    """Duress: the police step fires now, whatever its delay or `unless`.

    Steps before it that have not fired are skipped; if it already fired (or was skipped)
    the police are told again, now that they know it is duress.
    """
    policy = _policy(alarm)
    steps = policy.steps
    police = policy.police_step()
    if police is not None and alarm.next_step is not None and alarm.next_step <= police:
        for index in range(alarm.next_step, police):
            step = steps[index]
            _skip(w, alarm, index, step, alarm.raised_at + step.after_ms, "duress")
        step = steps[police]
        _fire(w, alarm, police, step, alarm.raised_at + step.after_ms, forced="duress")
        following = police + 1
        if following < len(steps):
            w.alarms.set_next_step(alarm.id, following, alarm.raised_at + steps[following].after_ms)
        else:
            w.alarms.set_next_step(alarm.id, None, None)
        advance_ladder(w, alarm)
        return
    recipients = _recipients(w, alarm, ("police",))
    _queue(w, alarm, "duress", recipients, alarm_notice(w.registry, alarm, duress=True))
    w.alarms.append_timeline(
        alarm.id,
        w.now,
        "duress_alert",
        alarm.state,
        actor=SYSTEM,
        detail={"recipients": [_describe(r) for r in recipients]},
    )


def escalate_now(w: Work, alarm: Alarm, responder: Responder, channel: str) -> Alarm:
    """A responder sends the alarm up its ladder now: the next pending step fires at once."""
    if alarm.state in (AlarmState.RESOLVED, AlarmState.CANCELLED):
        raise Refused(Reason.INVALID_STATE, f"alarm is already {alarm.state}", alarm.id)
    if alarm.next_step is None:
        raise Refused(Reason.INVALID_STATE, "no escalation step is left", alarm.id)
    steps = _policy(alarm).steps
    index = alarm.next_step
    w.alarms.append_timeline(
        alarm.id,
        w.now,
        "escalated",
        alarm.state,
        actor=responder.actor,
        channel=channel,
        detail={"role": responder.role, "step": index, "name": steps[index].label(index)},
    )
    _fire(
        w, alarm, index, steps[index], alarm.raised_at + steps[index].after_ms, forced="escalated"
    )
    following = index + 1
    if following < len(steps):
        w.alarms.set_next_step(alarm.id, following, alarm.raised_at + steps[following].after_ms)
    else:
        w.alarms.set_next_step(alarm.id, None, None)
    advance_ladder(w, alarm)
    return w.reload(alarm)


def _fire(
    w: Work,
    alarm: Alarm,
    index: int,
    step: Step,
    due_at: int,
    *,
    forced: str | None = None,
) -> None:
    """Tell the step's people. `forced` says why it fires before its time or despite its
    `unless` (duress, escalated by a user); under duress the message says so."""
    name = step.label(index)
    recipients = _recipients(w, alarm, step.notify)
    notice = alarm_notice(w.registry, alarm, name, duress=forced == "duress")
    _queue(w, alarm, f"step{index}", recipients, notice)
    w.alarms.record_step(StepRecord(alarm.id, index, "fired", due_at, w.now, forced))
    w.alarms.append_timeline(
        alarm.id,
        w.now,
        "step_fired",
        alarm.state,
        actor=SYSTEM,
        detail={
            "step": index,
            "name": name,
            "notify": list(step.notify),
            "due_at": due_at,
            "fired_at": w.now,
            "late_ms": w.now - due_at,
            "recipients": [_describe(r) for r in recipients],
            **({"forced": forced} if forced else {}),
            **({"duress": True} if forced == "duress" else {}),
        },
    )
    w.changed(alarm, "step")
    if not recipients:
        logger.warning(
            "escalation step reached nobody",
            extra={"alarm_id": alarm.id, "step": name, "roles": ",".join(step.notify)},
        )


def _skip(w: Work, alarm: Alarm, index: int, step: Step, due_at: int, reason: str) -> None:
    w.changed(alarm, "step")
    w.alarms.record_step(StepRecord(alarm.id, index, "skipped", due_at, w.now, reason))
    w.alarms.append_timeline(
        alarm.id,
        w.now,
        "step_skipped",
        alarm.state,
        actor=SYSTEM,
        detail={"step": index, "name": step.label(index), "due_at": due_at, "reason": reason},
    )


def _recipients(w: Work, alarm: Alarm, roles: tuple[str, ...]) -> list[Recipient]:
    return with_push(resolve_recipients(w.registry, alarm, roles), w.contacts.subscription_ids)


def _queue(
    w: Work, alarm: Alarm, key: str, recipients: list[Recipient], notice: AlarmNotice
) -> None:
    for r in recipients:
        key_of_message = f"{alarm.id}:{key}:{r.channel}:{r.address}"
        if w.outbox.exists(key_of_message):
            continue  # queued before: never twice, and no second reply code or token
        w.queue_message(
            alarm_id=alarm.id,
            alarm_state=alarm.state,
            channel=r.channel,
            recipient=r.address,
            payload=compose(
                w.contacts,
                notice,
                r,
                w.context.public_url,
                w.now,
                w.context.language,
                w.context.timezone,
            ),
            key=key_of_message,
        )


def _describe(r: Recipient) -> dict[str, str]:
    return {"role": r.role, "name": r.name, "channel": r.channel, "address": r.address}


def fire_due_steps(w: Work, limit: int = 100) -> int:
    """Advance every alarm with a step due now (at most `limit` alarms); returns how many."""
    alarms = w.alarms.due_alarms(w.now, limit)
    for alarm in alarms:
        advance_ladder(w, alarm)
    return len(alarms)


class ClockLike(Protocol):
    def now_ms(self) -> int: ...


class EscalationEngine:
    """The named job `escalation-engine`: steps every alarm's ladder when it falls due."""

    name = "escalation-engine"

    def __init__(
        self,
        db: Database,
        context: AlarmContext,
        clock: ClockLike,
        on_commit: AfterCommit,
        batch: int = 100,
    ) -> None:
        self.db = db
        self.context = context
        self.clock = clock
        self.on_commit = on_commit  # after commit: wake the sender, tell watchers
        self.batch = batch

    async def run_once(self) -> float | None:
        """Advance what is due; seconds until the next step falls due (None: none pending)."""
        while True:
            now = self.clock.now_ms()

            def work(conn: Conn, now: int = now) -> tuple[int, Work, int | None]:
                w = Work.begin(conn, self.context, now)
                advanced = fire_due_steps(w, self.batch)
                # Asked in the same transaction: a read of its own, on the reader pool,
                # held up the engine's next run by a thread hop at every alarm.
                return advanced, w, w.alarms.next_step_due_at()

            # Urgent: the people of the ladder's next step are waiting on this commit.
            advanced, w, next_at = await self.db.write(work, urgent=True)
            if w.queued or w.changes:
                self.on_commit(w.queued, tuple(w.changes), tuple(w.fast_sends))
            if advanced < self.batch:
                break
        if next_at is None:
            return None
        return max(0.0, (next_at - self.clock.now_ms()) / 1000)
