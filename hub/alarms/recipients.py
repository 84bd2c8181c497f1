"""Who a step of the ladder reaches: roles resolved against the registry, and what they are told."""

from __future__ import annotations

import time
from dataclasses import dataclass

from hub.alarms.alarm_store import Alarm
from hub.registry.model import Registry

# How each role is reached; push joins when responders have subscriptions.
ROLE_CHANNELS: dict[str, tuple[str, ...]] = {
    "neighbors": ("sms",),
    "key_households": ("sms",),
    "patrol": ("sms",),
    "police": ("sms", "voice"),
    "command": ("sms", "voice"),
}

KIND_WORDS = {
    "panic": "PANIC",
    "burglary": "BURGLARY",
    "fire": "FIRE",
    "medical": "MEDICAL EMERGENCY",
    "gas": "GAS LEAK",
}


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person or desk to reach, by one channel at one address."""

    role: str
    name: str  # household u-0001/h-02, patrol member, desk or command post id
    channel: str
    address: str  # phone number; for push, the subscription id
    phone: str  # who it is: the person's phone, also for push


def with_push(recipients: list[Recipient], subscriptions_of) -> list[Recipient]:
    """The recipients, plus a push to every browser subscribed by a person among them."""
    extra = []
    seen: set[str] = set()
    for r in recipients:
        if r.phone in seen:
            continue
        seen.add(r.phone)
        extra += [
            Recipient(r.role, r.name, "push", sub_id, r.phone)
            for sub_id in subscriptions_of(r.phone)
        ]
    return recipients + extra


def resolve_recipients(registry: Registry, alarm: Alarm, roles: tuple[str, ...]) -> list[Recipient]:
    """Everyone the roles name for this alarm, each (channel, address) once, in role order.

    The household that raised the alarm is never among them: under duress an intruder may
    be holding its phone.
    """
    unit = registry.unit(alarm.unit_id)
    if unit is None:  # the unit left the registry since the alarm was raised
        return []
    people: list[tuple[str, str, list[str]]] = []  # (role, name, phones)
    for role in roles:
        if role == "neighbors":
            people += [
                (role, f"{unit.id}/{h.id}", list(h.phones))
                for h in unit.households
                if h.id != alarm.household_id
            ]
        elif role == "key_households":
            people += [
                (role, f"{u.id}/{h.id}", list(h.phones))
                for u, h in registry.key_households_of(unit.id)
                if not (u.id == alarm.unit_id and h.id == alarm.household_id)
            ]
        elif role == "patrol":
            people += [
                (role, f"{p.id}/{m.name}", [m.phone])
                for p in registry.patrols_in_zone(unit.zone)
                for m in p.members
            ]
        elif role == "police":
            people += [(role, d.id, [d.phone]) for d in registry.desks_for_zone(unit.zone)]
        elif role == "command":
            people += [(role, c.id, [c.phone]) for c in registry.command]
    seen: set[tuple[str, str]] = set()
    recipients = []
    for role, name, phones in people:
        for channel in ROLE_CHANNELS.get(role, ("sms",)):
            for phone in phones:
                if (channel, phone) not in seen:
                    seen.add((channel, phone))
                    recipients.append(Recipient(role, name, channel, phone, phone))
    return recipients


def alarm_text(registry: Registry, alarm: Alarm, step_label: str) -> str:
    """The short message a step sends: what, where, since when, which step."""
    unit = registry.unit(alarm.unit_id)
    household = registry.household(alarm.unit_id, alarm.household_id)
    where = f"{unit.name}, {household.address}" if unit and household else alarm.unit_id
    since = time.strftime("%H:%M", time.localtime(alarm.raised_at / 1000))
    kind = KIND_WORDS.get(alarm.kind, alarm.kind.upper())
    return (
        f"tenhub {kind} at {where} ({alarm.unit_id}/{alarm.household_id}) since {since}."
        f" {step_label}. Alarm {alarm.id}."
    )
