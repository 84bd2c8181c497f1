"""Alarms as the desk and the patrol see them: JSON summaries and details, in urgency order."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hub.alarms.alarm_store import Alarm, AlarmStore
from hub.alarms.outbox_store import OutboxStore
from hub.alarms.policy import Policy
from hub.registry.model import Registry

OPEN_STATES = ("raised", "acknowledged", "on_scene")
_STATE_URGENCY = {"raised": 0, "acknowledged": 1, "on_scene": 2}


def urgency_key(summary: dict[str, Any]) -> tuple:
    """Duress first, then nobody-has-it-yet, then acknowledged, then on scene; oldest first."""
    return (
        not summary["duress"],
        _STATE_URGENCY.get(summary["state"], 9),
        summary["raised_at"],
    )


def _next_step_name(alarm: Alarm) -> str | None:
    if alarm.next_step is None or not alarm.ladder:
        return None
    steps = Policy.from_json(alarm.ladder).steps
    return steps[alarm.next_step].label(alarm.next_step) if alarm.next_step < len(steps) else None


def actor_name(registry: Registry, actor: str, unit_id: str) -> str:
    """Who an actor is, for people: a household's address (and unit, if another one), a
    patrol member's name, an account's name; the actor id itself when the registry has no
    better word."""
    kind, _, ref = actor.partition(":")
    if kind == "household":
        owner_id, _, household_id = ref.partition("/")
        household = registry.household(owner_id, household_id)
        unit = registry.unit(owner_id)
        if household is not None and unit is not None:
            return household.address if owner_id == unit_id else f"{household.address}, {unit.name}"
    elif kind == "phone":
        for patrol in registry.patrols:
            for member in patrol.members:
                if member.phone == ref:
                    return member.name
        for unit in registry.units:
            for household in unit.households:
                if ref in household.phones:
                    place = household.address
                    return place if unit.id == unit_id else f"{place}, {unit.name}"
    elif kind == "user" and ref:
        return ref
    return actor


async def summaries(
    store: AlarmStore, registry: Registry, alarms: list[Alarm]
) -> list[dict[str, Any]]:
    """One summary per alarm: where, what, how far, who was told, who answered."""
    ids = [a.id for a in alarms]
    answers = await store.answers(ids)
    notified = await store.notified_counts(ids)
    found = []
    for alarm in alarms:
        unit = registry.unit(alarm.unit_id)
        household = registry.household(alarm.unit_id, alarm.household_id)
        location = unit.location if unit else None
        found.append(
            {
                "id": alarm.id,
                "kind": alarm.kind,
                "state": alarm.state,
                "duress": bool(alarm.duress),
                "unit_id": alarm.unit_id,
                "unit_name": unit.name if unit else alarm.unit_id,
                "household_id": alarm.household_id,
                "address": household.address if household else "",
                "zone": unit.zone if unit else None,
                "raised_at": alarm.raised_at,
                "updated_at": alarm.updated_at,
                "next_step_at": alarm.next_step_at,
                "next_step_name": _next_step_name(alarm),
                "notified": notified.get(alarm.id, 0),
                "answered_by": [
                    {
                        "actor": e.actor,
                        "who": actor_name(registry, e.actor, alarm.unit_id),
                        "role": (e.detail or {}).get("role"),
                        "channel": e.channel,
                        "at": e.at,
                        "entry": e.entry,
                    }
                    for e in answers.get(alarm.id, [])
                ],
                "location": {"lat": location.lat, "lon": location.lon} if location else None,
            }
        )
    return found


async def detail(
    store: AlarmStore, outbox: OutboxStore, registry: Registry, alarm: Alarm
) -> dict[str, Any]:
    """The summary plus the whole timeline, every notification and every ladder step."""
    (summary,) = await summaries(store, registry, [alarm])
    notes = await outbox.for_alarm(alarm.id)
    return {
        **summary,
        "policy": alarm.policy,
        "timeline": [
            {
                **asdict(e),
                "who": actor_name(registry, e.actor, alarm.unit_id) if e.actor else None,
            }
            for e in await store.timeline(alarm.id)
        ],
        "steps": [asdict(s) for s in await store.steps(alarm.id)],
        "notifications": [
            {
                k: n[k]
                for k in (
                    "id",
                    "channel",
                    "recipient",
                    "status",
                    "delivery",
                    "sent_at",
                    "attempts",
                    "last_error",
                    "limited_at",
                )
            }
            for n in notes
        ],
    }


async def describe(store: AlarmStore, registry: Registry, alarm_id: str) -> str:
    """Where and what an alarm is, for replies to responders: `Block 3, 2-101 (fire)`."""
    alarm = await store.get(alarm_id)
    if alarm is None:
        return alarm_id
    unit = registry.unit(alarm.unit_id)
    household = registry.household(alarm.unit_id, alarm.household_id)
    where = f"{unit.name}, {household.address}" if unit and household else alarm.unit_id
    return f"{where} ({alarm.kind})"
