"""The alarm lifecycle: raised → acknowledged → on_scene → resolved, or cancelled.

Every function here runs inside one write transaction (a `Work`), appends to the alarm's
timeline, queues the unit alert of each change of state and keeps the escalation ladder
in step, so a change and everything it causes commit together or not at all.
"""

from __future__ import annotations

from devices.protocol import AlarmState, Reason, UnitAlert, encode
from hub.alarms.alarm_store import Alarm
from hub.alarms.escalation import advance_ladder, close_ladder, go_to_police
from hub.alarms.policy import LIFECYCLE
from hub.alarms.work import Refused, Responder, Work
from hub.ids import new_alarm_id
from hub.registry.model import PanelPlace
from hub.registry.pins import PinMatch, match_pin

CLOSED_STATES = frozenset({AlarmState.RESOLVED, AlarmState.CANCELLED})
# A household may stand its alarm down only before anyone is on the scene.
CANCELLABLE_STATES = frozenset({AlarmState.RAISED, AlarmState.ACKNOWLEDGED})


def household_actor(place: PanelPlace) -> str:
    """The actor name of a household on timelines: `household:u-0001/h-01`."""
    return f"household:{place.unit.id}/{place.household.id}"


def raise_alarm(
    w: Work,
    place: PanelPlace,
    kind: str,
    panel_ts: int,
    seq: int,
    *,
    fire_due: bool = True,
    duress: bool = False,
) -> Alarm:
    """Store a new alarm, tell its unit, and fire the ladder's steps that are due at once.

    With `fire_due=False` the steps due at once are left to the escalation engine's next
    transaction: the alarm row already says they are due, so they fire even across a crash,
    and the panel's receipt need not wait for the first round of SMS to be composed.

    Storm guard: while the household has an open alarm of the same kind, pressing again
    adds to that alarm's timeline instead of starting a second ladder (a hundred presses
    must not become a hundred rounds of SMS).

    `duress` (a panel's hold-up or duress code) raises it as a duress PIN leaves it: no
    buzzer anywhere, and straight to its police step.
    """
    open_alarm = w.alarms.open_alarm_of(place.unit.id, place.household.id, kind)
    if open_alarm is not None and duress and not open_alarm.duress:
        _duress(w, open_alarm, place, shown="nothing")
        return w.reload(open_alarm)
    if open_alarm is not None:
        repeats = w.alarms.count_timeline(open_alarm.id, "repeated") + 1
        w.alarms.append_timeline(
            open_alarm.id,
            w.now,
            "repeated",
            open_alarm.state,
            actor=household_actor(place),
            channel="panel",
            detail={"seq": seq, "panel_ts": panel_ts, "repeats": repeats},
        )
        w.changed(open_alarm, "note")
        return open_alarm
    policy = w.context.policies.for_kind(kind)
    alarm = Alarm(
        id=new_alarm_id(w.now),
        unit_id=place.unit.id,
        household_id=place.household.id,
        panel_id=place.household.panel,
        kind=kind,
        state=AlarmState.RAISED.value,
        raised_at=w.now,
        panel_ts=panel_ts,
        seq=seq,
        updated_at=w.now,
        policy=policy.name,
        ladder=policy.to_json(),
        next_step=0,
        next_step_at=w.now + policy.steps[0].after_ms,
        duress=int(duress),
    )
    w.alarms.insert_alarm(alarm)
    neighbours = [p for p in w.registry.unit_panels(place.unit.id) if p != alarm.panel_id]
    # Whose buzzer the unit alert may not reach: the desk must not count on them.
    offline = w.troubles.offline_panels(neighbours) if neighbours else []
    entry = w.alarms.append_timeline(
        alarm.id,
        w.now,
        "raised",
        alarm.state,
        actor=household_actor(place),
        channel="panel",
        detail={
            "kind": kind,
            "panel": alarm.panel_id,
            "seq": seq,
            "panel_ts": panel_ts,
            "policy": policy.name,
            "offline_neighbours": offline,
        },
    )
    queue_unit_alert(w, alarm, AlarmState.RAISED, entry)  # none under duress
    w.changed(alarm, "raised")
    if duress:
        _duress(w, alarm, place, shown="nothing")
        return w.reload(alarm)
    if fire_due:
        advance_ladder(w, alarm)
    return alarm


def get_alarm(w: Work, alarm_id: str) -> Alarm:
    alarm = w.alarms.get_alarm(alarm_id)
    if alarm is None:
        raise Refused(Reason.UNKNOWN_ALARM, f"no alarm {alarm_id!r}")
    return alarm


def _change_state(
    w: Work,
    alarm: Alarm,
    to: AlarmState,
    entry: str,
    responder: Responder,
    channel: str,
    detail: dict | None = None,
) -> Alarm:
    """Move the alarm to `to`, or record the entry alone when it is already there."""
    state = AlarmState(alarm.state)
    if state in CLOSED_STATES:
        raise Refused(Reason.INVALID_STATE, f"alarm is already {state.value}", alarm.id)
    # Already there or past it (an acknowledgement after on_scene): recorded, state stays.
    moves = LIFECYCLE.index(to) > LIFECYCLE.index(state)
    new_state = to if moves else state
    if moves:
        w.alarms.set_state(alarm.id, new_state.value, w.now)
    entry_id = w.alarms.append_timeline(
        alarm.id,
        w.now,
        entry,
        new_state.value,
        actor=responder.actor,
        channel=channel,
        detail={"role": responder.role, **(detail or {})},
    )
    alarm = w.reload(alarm)
    w.changed(alarm, "state" if moves else "note")
    if moves:
        queue_unit_alert(w, alarm, new_state, entry_id)
        if new_state in CLOSED_STATES:
            close_ladder(w, alarm, f"alarm {new_state.value}")
    return alarm


def acknowledge(w: Work, alarm: Alarm, responder: Responder, channel: str) -> Alarm:
    """A responder takes the alarm: raised → acknowledged; later acks are recorded too."""
    return _change_state(w, alarm, AlarmState.ACKNOWLEDGED, "acknowledged", responder, channel)


def mark_on_scene(w: Work, alarm: Alarm, responder: Responder, channel: str) -> Alarm:
    """A responder is at the door."""
    return _change_state(w, alarm, AlarmState.ON_SCENE, "on_scene", responder, channel)


def resolve(
    w: Work,
    alarm: Alarm,
    responder: Responder,
    channel: str,
    note: str,
    outcome: str = "handled",
) -> Alarm:
    """The alarm is over; the note says how (outcome `handled` or `false_alarm`).

    Pending steps are skipped.
    """
    return _change_state(
        w,
        alarm,
        AlarmState.RESOLVED,
        "resolved",
        responder,
        channel,
        {"note": note, "outcome": outcome},
    )


def cancel_with_pin(w: Work, alarm: Alarm, place: PanelPlace, pin: str | PinMatch) -> Alarm:
    """The household stands its own alarm down with its PIN, within the cancel window.

    `pin` is the PIN entered, or what it was already found to be (`match_pin`). The
    duress PIN gets exactly what the real PIN would get (receipt, unit alert, even a
    refusal), so an intruder watching the panel learns nothing; behind that, the alarm
    goes straight to its police step.
    """
    rules = w.context.rules
    # The household's PINs are hashes: checking one costs a fraction of a millisecond.
    entered = pin if isinstance(pin, PinMatch) else match_pin(place.household, pin)
    duress = entered == PinMatch.DURESS
    state = AlarmState(alarm.state)
    try:
        if state == AlarmState.CANCELLED:
            return alarm
        if state not in CANCELLABLE_STATES:
            raise Refused(
                Reason.INVALID_STATE,
                f"alarm is {state.value} and can no longer be cancelled",
                alarm.id,
            )
        wrong = w.alarms.count_timeline(alarm.id, "cancel_refused")
        if wrong >= rules.max_wrong_pins:
            raise Refused(
                Reason.CANCEL_LOCKED,
                f"cancelling is locked after {wrong} wrong PINs; the alarm goes on",
                alarm.id,
            )
        if w.now - alarm.raised_at > rules.cancel_window_ms:
            raise Refused(
                Reason.CANCEL_WINDOW_CLOSED,
                f"the cancel window of {rules.cancel_window_ms // 1000} s has passed;"
                " ask the patrol or the police desk to stand the alarm down",
                alarm.id,
            )
        if entered in (PinMatch.WRONG, PinMatch.NONE_SET):
            wrong += 1
            w.alarms.append_timeline(
                alarm.id,
                w.now,
                "cancel_refused",
                state.value,
                actor=household_actor(place),
                channel="panel",
                detail={"wrong_pins": wrong},
            )
            w.changed(alarm, "note")
            left = rules.max_wrong_pins - wrong
            none_set = entered == PinMatch.NONE_SET
            detail = "no PIN is set for this household" if none_set else "wrong PIN"
            detail += f"; {left} tries left" if left else "; cancelling is now locked"
            raise Refused(Reason.WRONG_PIN, detail, alarm.id)
    except Refused:
        if duress and not alarm.duress:
            _duress(w, alarm, place, shown="refused")
        raise
    if duress:
        if not alarm.duress:
            _duress(w, alarm, place, shown="cancelled")
        return w.reload(alarm)
    entry_id = w.alarms.append_timeline(
        alarm.id,
        w.now,
        "cancelled",
        AlarmState.CANCELLED.value,
        actor=household_actor(place),
        channel="panel",
        detail={"by": "pin"},
    )
    w.alarms.set_state(alarm.id, AlarmState.CANCELLED.value, w.now)
    alarm = w.reload(alarm)
    w.changed(alarm, "state")
    queue_unit_alert(w, alarm, AlarmState.CANCELLED, entry_id)
    close_ladder(w, alarm, "alarm cancelled")
    return alarm


def _duress(w: Work, alarm: Alarm, place: PanelPlace, shown: str) -> None:
    w.alarms.set_duress(alarm.id)
    entry_id = w.alarms.append_timeline(
        alarm.id,
        w.now,
        "duress",
        alarm.state,
        actor=household_actor(place),
        channel="panel",
        detail={"shown_to_panel": shown},
    )
    if shown == "cancelled":
        # The unit sees what a real cancel shows; from now on it sees nothing of this alarm.
        queue_unit_alert(w, alarm, AlarmState.CANCELLED, entry_id, force=True)
    w.changed(w.reload(alarm), "note")
    go_to_police(w, w.reload(alarm))


def queue_unit_alert(
    w: Work, alarm: Alarm, state: AlarmState, entry_id: int, *, force: bool = False
) -> None:
    """Queue the unit alert for a change of state (never for an alarm under duress).

    Behind an alert of the unit still waiting it goes the slow way, so the unit hears
    them in order; else it is published as soon as the transaction commits.
    """
    if alarm.duress and not force:
        return
    alert = UnitAlert(
        alarm_id=alarm.id,
        household_id=alarm.household_id,
        kind=alarm.kind,
        state=state,
        ts=w.now,
    )
    w.queue_message(
        alarm_id=alarm.id,
        alarm_state=state.value,
        channel="panel",
        recipient=alarm.unit_id,
        payload=encode(alert).decode(),
        key=f"panel:{alarm.id}:{entry_id}",
    )
