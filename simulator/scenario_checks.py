"""What a scenario expected, checked against what the hub and the fleet recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.alarms.alarm_store import Alarm, StepRecord, TimelineEntry
from hub.alarms.policy import LIFECYCLE, Policy, format_duration
from hub.alarms.trouble_store import Trouble
from simulator.scenario_model import Expectation


@dataclass
class AlarmFacts:
    """One raised alarm as the hub stored it, and as the panels lived it."""

    index: int
    household: str
    alarm: Alarm | None
    timeline: list[TimelineEntry] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    receipt_status: str | None = None
    buzzers: int = 0


@dataclass
class Facts:
    alarms: list[AlarmFacts]
    alarms_in_hub: int
    troubles: list[Trouble]
    panel_of: dict[str, str]  # household u/h → panel id
    sms_of: dict[str, list[str]]  # household u/h → bodies of the SMS its phones got


def _order(state: str) -> int:
    return LIFECYCLE.index(state) if state in LIFECYCLE else len(LIFECYCLE)


def _recipients(facts: AlarmFacts) -> list[tuple[str, str, str, int]]:
    """(role, channel, address, when) of everyone a ladder step told."""
    found = []
    for e in facts.timeline:
        if e.entry in ("step_fired", "duress_alert") and e.detail:
            for r in e.detail.get("recipients", []):
                found.append((r["role"], r["channel"], r["address"], e.at))
    return found


def check(expect: Expectation, facts: Facts) -> tuple[bool, str]:
    """(held, what was found), in words."""
    what = expect.what
    if what in ("lost", "alarms", "trouble", "no_trouble", "sms_to"):
        return _check_overall(expect, facts)
    if expect.alarm is None or expect.alarm > len(facts.alarms):
        return False, f"alarm {expect.alarm} was never raised ({len(facts.alarms)} were)"
    a = facts.alarms[expect.alarm - 1]
    if a.alarm is None:
        return False, f"alarm {expect.alarm} is not in the hub (receipt: {a.receipt_status})"
    alarm = a.alarm
    if what == "state":
        return alarm.state == expect.state, f"state {alarm.state}"
    if what == "duress":
        return bool(alarm.duress) == expect.duress, f"duress {bool(alarm.duress)}"
    if what == "buzzers":
        return a.buzzers == expect.buzzers, f"{a.buzzers} neighbour panels sounded"
    if what == "offline_neighbours":
        raised = next((e for e in a.timeline if e.entry == "raised"), None)
        panels = (raised.detail or {}).get("offline_neighbours", []) if raised else []
        household_of = {p: h for h, p in facts.panel_of.items()}
        named = sorted(household_of.get(p, p) for p in panels)
        return named == sorted(expect.offline_neighbours or []), (
            f"offline when alerted: {', '.join(named) or 'none'}"
        )
    if what == "reached":
        assert expect.reached is not None
        reached = [
            e
            for e in a.timeline
            if (
                e.state == expect.reached
                if expect.reached == "cancelled"
                else e.state != "cancelled" and _order(e.state) >= _order(expect.reached)
            )
        ]
        if not reached:
            return False, f"never {expect.reached} (final state {alarm.state})"
        took = reached[0].at - alarm.raised_at
        ok = expect.within is None or took <= expect.within
        return ok, f"{expect.reached} after {format_duration(took)}"
    if what in ("notified", "not_notified"):
        role = expect.notified or expect.not_notified
        told = [
            r
            for r in _recipients(a)
            if r[0] == role and (expect.channel is None or r[1] == expect.channel)
        ]
        if what == "not_notified":
            return not told, f"{len(told)} {role} notifications"
        if not told:
            roles = sorted({r[0] for r in _recipients(a)})
            return False, f"no {role} told; told: {', '.join(roles) or 'nobody'}"
        first = min(r[3] for r in told) - alarm.raised_at
        sent = [
            n
            for n in a.notifications
            if any(n["recipient"] == r[2] and n["channel"] == r[1] for r in told)
        ]
        gone = [n for n in sent if n["status"] == "sent"]
        ok = (expect.within is None or first <= expect.within) and (
            expect.channel in (None, "panel", "push") or bool(gone)
        )
        return ok, (
            f"{len(told)} {role} notifications, first after {format_duration(first)},"
            f" {len(gone)} sent"
        )
    if what == "step":
        policy = Policy.from_json(alarm.ladder or "{}")
        names = [s.label(i) for i, s in enumerate(policy.steps)]
        if expect.step not in names:
            return False, f"no step {expect.step!r} in its ladder ({', '.join(names)})"
        index = names.index(expect.step)
        record = next((s for s in a.steps if s.step == index), None)
        outcome = record.outcome if record else "pending"
        why = f" ({record.reason})" if record and record.reason else ""
        return outcome == expect.outcome, f"step {expect.step} {outcome}{why}"
    return False, f"cannot check {what}"


def _check_overall(expect: Expectation, facts: Facts) -> tuple[bool, str]:
    if expect.lost is not None:
        lost = [
            a
            for a in facts.alarms
            if a.alarm is None or a.receipt_status not in ("accepted", "duplicate")
        ]
        names = ", ".join(f"{a.index} ({a.household})" for a in lost[:5])
        return len(lost) == expect.lost, f"{len(lost)} lost" + (f": {names}" if lost else "")
    if expect.alarms is not None:
        return facts.alarms_in_hub == expect.alarms, f"{facts.alarms_in_hub} alarms in the hub"
    if expect.sms_to is not None:
        bodies = [
            b
            for b in facts.sms_of.get(expect.sms_to, [])
            if expect.containing is None or expect.containing in b
        ]
        wanted = 1 if expect.count is None else expect.count
        return len(bodies) == wanted, f"{len(bodies)} SMS" + (
            f" containing {expect.containing!r}" if expect.containing else ""
        )
    household = expect.trouble or expect.no_trouble
    panel = facts.panel_of.get(household or "")
    open_ones = [t.kind for t in facts.troubles if t.panel_id == panel]
    matching = [k for k in open_ones if expect.kind is None or k == expect.kind]
    if expect.trouble is not None:
        return bool(matching), f"open troubles: {', '.join(open_ones) or 'none'}"
    return not matching, f"open troubles: {', '.join(open_ones) or 'none'}"
