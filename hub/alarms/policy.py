"""Escalation policies: ladders of steps that tell more and more people about an open alarm.

Reading and checking policy files is in `hub.alarms.policy_file`; this module holds the policies
themselves, the rules every ladder keeps, and the built-in ladders.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from devices.protocol import AlarmKind
from hub.problems import format_path

Role = Literal["neighbors", "key_households", "patrol", "police", "command"]
UnlessState = Literal["acknowledged", "on_scene", "resolved"]

ROLES: tuple[Role, ...] = get_args(Role)
UNLESS_STATES: tuple[UnlessState, ...] = get_args(UnlessState)
LIFECYCLE = ("raised", *UNLESS_STATES)  # `cancelled` is outside it: it stops every step
KINDS = tuple(kind.value for kind in AlarmKind)
DEFAULT = "default"

MISSING_DEFAULT = (
    "there is no 'default' policy: alarms of a kind without a policy of their own follow it"
)


# --- durations -----------------------------------------------------------------------------

_UNITS = (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))
_DURATION = re.compile("".join(rf"(?:(\d+){unit})?" for unit, _ in _UNITS))


def parse_duration(text: str) -> int:
    """Milliseconds in a duration like 0s, 90s, 5m, 2h, 1h30m or 500ms; ValueError otherwise."""
    text = text.strip()
    if text.isdigit():
        raise ValueError(f"{text} has no unit: write {text}s (or use ms, m or h)")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(
            f"{text!r} is not a duration: write whole numbers with the units h, m, s or ms, "
            "largest first, like 90s, 5m or 1h30m"
        )
    counts = zip(match.groups(), _UNITS, strict=True)
    return sum(int(count) * size for count, (_, size) in counts if count)


def format_duration(ms: int) -> str:
    """A duration as parse_duration reads it back: 90000 -> "1m30s", 0 -> "0s"."""
    if ms < 0:
        raise ValueError(f"a duration cannot be negative: {ms} ms")
    parts = []
    for unit, size in _UNITS:
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# --- field types ---------------------------------------------------------------------------


def _invalid(message: str) -> PydanticCustomError:
    # No context given: the message is used as is, braces and all.
    return PydanticCustomError("tenhub_invalid", message)


def _check_role(value: Any) -> Any:
    if value not in ROLES:
        raise _invalid(f"unknown role {value!r}: the roles are {', '.join(ROLES)}")
    return value


def _check_state(value: Any) -> Any:
    if value in UNLESS_STATES:
        return value
    if value == "raised":
        reason = "'raised' cannot be an unless state: every alarm starts raised"
    elif value == "cancelled":
        reason = "'cancelled' needs no unless: a cancelled alarm stops every step"
    else:
        reason = f"unknown state {value!r}"
    raise _invalid(f"{reason}; use one of {', '.join(UNLESS_STATES)}")


def _no_repeats(roles: tuple[Role, ...]) -> tuple[Role, ...]:
    for index, role in enumerate(roles):
        if role in roles[:index]:
            # `index` lets a file checker point at the repeated entry, not the whole list.
            raise PydanticCustomError(
                "duplicate_role",
                f"'{role}' is listed twice: name each role once in a step",
                {"index": index},
            )
    return roles


RoleName = Annotated[Role, BeforeValidator(_check_role)]
Notify = Annotated[tuple[RoleName, ...], Field(min_length=1), AfterValidator(_no_repeats)]


# --- models --------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Unless(_Model):
    """Skip a step once the alarm has reached `state` or a later one.

    `by` (with `acknowledged` only) counts just the acknowledgements of these roles;
    a later state counts whoever brought the alarm there.
    """

    state: Annotated[UnlessState, BeforeValidator(_check_state)]
    by: Annotated[frozenset[RoleName], Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"state": data}
        if isinstance(data, int | float | list):
            raise _invalid(
                "expected a state (acknowledged, on_scene or resolved) or a mapping "
                "like {state: acknowledged, by: [patrol, police]}"
            )
        return data

    @field_validator("by")
    @classmethod
    def _by_needs_acknowledged(
        cls, by: frozenset[Role] | None, info: ValidationInfo
    ) -> frozenset[Role] | None:
        state = info.data.get("state", "acknowledged")  # absent: the state is refused already
        if by is not None and state != "acknowledged":
            raise _invalid(
                f"'by' only goes with state acknowledged: it names whose acknowledgement "
                f"counts, and an alarm is {state} whoever reported it"
            )
        return by

    @field_serializer("by")
    def _by_in_role_order(self, by: frozenset[Role] | None) -> list[Role] | None:
        # A set's order changes from run to run; a snapshot must not.
        return None if by is None else [role for role in ROLES if role in by]

    def is_met(self, state: str, acknowledged_by: Collection[str] = ()) -> bool:
        """Whether an alarm in `state`, acknowledged by these roles, skips the step."""
        if state == "cancelled":
            return True
        reached = LIFECYCLE.index(state) >= LIFECYCLE.index(self.state)
        if self.by is None or state != "acknowledged":
            return reached
        return not self.by.isdisjoint(acknowledged_by)


class Step(_Model):
    """One rung of a ladder: `after_ms` since the alarm was raised, tell these roles."""

    after_ms: int = Field(ge=0)
    notify: Notify
    unless: Unless | None = None
    name: str | None = None  # shown on timelines, e.g. "police handling"

    def label(self, index: int) -> str:
        """The step's name, else "step N" for the step at this index."""
        return self.name or f"step {index + 1}"


class Policy(_Model):
    """A named ladder of steps, in the order they fire."""

    name: str
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_ladder(self) -> Policy:
        afters = [step.after_ms for step in self.steps]
        fault = next(ladder_errors(afters, [step.notify for step in self.steps]), None)
        if fault is not None:
            where, message = fault
            raise _invalid(f"{format_path(('steps', *where))}: {message}")
        return self

    def to_json(self) -> str:
        """A compact JSON snapshot that from_json turns back into an equal policy."""
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """The policy a to_json snapshot was taken of."""
        return _policy_from_json(text)

    def police_step(self) -> int | None:
        """Index of the first step that notifies police (where a duress alarm goes at once)."""
        return next((i for i, step in enumerate(self.steps) if "police" in step.notify), None)


@functools.lru_cache(maxsize=64)
def _policy_from_json(text: str) -> Policy:
    # Every alarm carries its ladder as JSON and every step reads it back: a handful of
    # policies, parsed once each instead of once per alarm and step. Policies are frozen.
    return Policy.model_validate_json(text)


@dataclass(frozen=True)
class PolicySet:
    """The policy of every alarm kind: its own if it has one, else the default one."""

    policies: Mapping[str, Policy]

    def __post_init__(self) -> None:
        if DEFAULT not in self.policies:
            raise ValueError(MISSING_DEFAULT)
        for name, policy in self.policies.items():
            error = policy_name_error(name)
            if error:
                raise ValueError(error)
            if policy.name != name:
                raise ValueError(f"policy {policy.name!r} is filed under {name!r}")
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))

    def __getitem__(self, name: str) -> Policy:
        return self.policies[name]

    def for_kind(self, kind: str) -> Policy:
        """The policy for alarms of this kind."""
        return self.policies.get(kind) or self.policies[DEFAULT]


# --- rules of a ladder, shared with the file checker ---------------------------------------


def ladder_errors(
    afters: Sequence[int | None],
    notifies: Sequence[Collection[object]],
    step_ref: Callable[[int], str] = lambda index: f"step {index + 1}",
) -> Iterator[tuple[tuple[int | str, ...], str]]:
    """What makes a ladder unusable: (place within `steps`, message) for each fault.

    An `after` of None (unreadable, reported elsewhere) is passed over, so that a file
    shows its other mistakes in the same run.
    """
    latest: tuple[int, int] | None = None  # (after, index) of the latest step so far
    for index, after in enumerate(afters):
        if after is None:
            continue
        if latest is not None and after < latest[0]:
            message = (
                f"steps out of order: after {format_duration(after)} is earlier than "
                f"after {format_duration(latest[0])} of {step_ref(latest[1])}; "
                "list the steps in the order they fire"
            )
            yield (index, "after"), message
        else:
            latest = after, index
    if not any("police" in notify for notify in notifies):
        message = (
            "no step notifies police: a duress PIN sends an alarm straight to its "
            "police step, so every policy needs one"
        )
        yield (), message


def policy_name_error(name: object) -> str | None:
    """Why a policy cannot have this name, or None when it can."""
    if name == DEFAULT or name in KINDS:
        return None
    return (
        f"unknown policy name {name!r}: name a policy 'default' or after an alarm kind "
        f"({', '.join(KINDS)})"
    )


# --- the built-in policies -----------------------------------------------------------------

_FIRST_ALERT: tuple[Role, ...] = ("neighbors", "key_households", "patrol")
# A neighbour's "I'm coming" does not hold the police back: a neighbour may not be able
# to help. Only those who answer for the alarm count.
_RESPONDERS: frozenset[Role] = frozenset({"key_households", "patrol", "police"})
# Fire, gas and panic put lives at risk: the police are told at once, not after 60 s.
_LIFE_AT_RISK = ("panic", "fire", "gas")


def _step(after: str, notify: tuple[Role, ...], name: str, unless: Unless | None = None) -> Step:
    return Step(after_ms=parse_duration(after), notify=notify, unless=unless, name=name)


def _builtin(name: str) -> Policy:
    """The shipped ladder: police handling within 5 minutes, region-wide within 2 hours."""
    at_once = name in _LIFE_AT_RISK
    first = _step("0s", (*_FIRST_ALERT, "police") if at_once else _FIRST_ALERT, "first alert")
    police = _step("60s", ("police",), "police", Unless(state="acknowledged", by=_RESPONDERS))
    later = (
        _step("5m", ("police", "command"), "police handling", Unless(state="on_scene")),
        _step("15m", ("command",), "support", Unless(state="resolved")),
        _step("30m", ("command",), "containment", Unless(state="resolved")),
        _step("2h", ("command",), "region-wide", Unless(state="resolved")),
    )
    return Policy(name=name, steps=(first, *(() if at_once else (police,)), *later))


# Used when no policy file is configured; config/policy.example.yaml spells out the same.
DEFAULT_POLICIES = PolicySet(
    {name: _builtin(name) for name in (DEFAULT, "panic", "fire", "gas", "medical")}
)
