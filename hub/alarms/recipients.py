"""Who a step of the ladder reaches: roles resolved against the registry, in which
language, and what the step is about."""

from __future__ import annotations

from dataclasses import dataclass

from hub.alarms.alarm_store import Alarm
from hub.i18n.catalogues import N_
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
    "panic": N_("PANIC"),
    "burglary": N_("BURGLARY"),
    "fire": N_("FIRE"),
    "medical": N_("MEDICAL EMERGENCY"),
    "gas": N_("GAS LEAK"),
}

# The built-in ladder's step names, in the catalogue; a policy file's own names are
# shown as written.
STEP_NAMES = (
    N_("first alert"),
    N_("police"),
    N_("police handling"),
    N_("support"),
    N_("containment"),
    N_("region-wide"),
)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One person or desk to reach, by one channel at one address, in a language."""

    role: str
    name: str  # household u-0001/h-02, patrol member, desk or command post id
    channel: str
    address: str  # phone number; for push, the subscription id
    phone: str  # who it is: the person's phone, also for push
    language: str | None = None  # None: the deployment's


@dataclass(frozen=True, slots=True)
class AlarmNotice:
    """What a step tells about an alarm, before it is put in anyone's language."""

    alarm: Alarm
    place: str | None  # the unit's name; None when the unit left the registry
    address: str | None  # the household's address within it
    step: str | None  # the step's name; None under duress
    duress: bool = False


def with_push(recipients: list[Recipient], subscriptions_of) -> list[Recipient]:
    """The recipients, plus a push to every browser subscribed by a person among them."""
    extra = []
    seen: set[str] = set()
    for r in recipients:
        if r.phone in seen:
            continue
        seen.add(r.phone)
        extra += [
            Recipient(r.role, r.name, "push", sub_id, r.phone, r.language)
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
    people: list[tuple[str, str, list[str], str | None]] = []  # (role, name, phones, language)
    for role in roles:
        if role == "neighbors":
            people += [
                (role, f"{unit.id}/{h.id}", list(h.phones), h.language)
                for h in unit.households
                if h.id != alarm.household_id
            ]
        elif role == "key_households":
            people += [
                (role, f"{u.id}/{h.id}", list(h.phones), h.language)
                for u, h in registry.key_households_of(unit.id)
                if not (u.id == alarm.unit_id and h.id == alarm.household_id)
            ]
        elif role == "patrol":
            people += [
                (role, f"{p.id}/{m.name}", [m.phone], m.language)
                for p in registry.patrols_in_zone(unit.zone)
                for m in p.members
            ]
        elif role == "police":
            people += [
                (role, d.id, [d.phone], d.language) for d in registry.desks_for_zone(unit.zone)
            ]
        elif role == "command":
            people += [(role, c.id, [c.phone], c.language) for c in registry.command]
    seen: set[tuple[str, str]] = set()
    recipients = []
    for role, name, phones, language in people:
        for channel in ROLE_CHANNELS.get(role, ("sms",)):
            for phone in phones:
                if (channel, phone) not in seen:
                    seen.add((channel, phone))
                    recipients.append(Recipient(role, name, channel, phone, phone, language))
    return recipients


def alarm_notice(
    registry: Registry, alarm: Alarm, step: str | None = None, *, duress: bool = False
) -> AlarmNotice:
    """What a step sends about the alarm: what, where, since when, which step (or duress)."""
    unit = registry.unit(alarm.unit_id)
    household = registry.household(alarm.unit_id, alarm.household_id)
    return AlarmNotice(
        alarm,
        unit.name if unit else None,
        household.address if household else None,
        step,
        duress,
    )
