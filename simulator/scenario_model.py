"""The scenario file: a timeline of things that happen, and what must be true afterwards.

```yaml
name: Burglary answered by the patrol
speed: 60                       # hub time runs 60x faster than the wall clock
units: [u-0001]                 # whose panels run (default: every unit of the registry)
responders:                     # virtual phones: who answers the SMS they get, and when
  patrol: {answer: code, after: 40s}
steps:
  - {at: 0s, raise: {household: u-0001/h-03, kind: burglary}}
run_for: 3m                     # how long to watch after the last step
expect:
  - {alarm: 1, state: acknowledged}
  - {alarm: 1, step: police, outcome: skipped}
```

Times are hub time (`at: 40s` is 40 s of hub time, 0.67 s of wall time at speed 60).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from hub.alarms.policy import parse_duration
from hub.problems import ConfigError, Problem, format_path
from hub.registry.yaml_source import YamlDocument

Role = Literal["neighbors", "key_households", "patrol", "police", "command"]
State = Literal["raised", "acknowledged", "on_scene", "resolved", "cancelled"]
Kind = Literal["panic", "burglary", "fire", "medical", "gas"]


def _ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("a duration like 0s, 90s, 5m, 1h30m")
    return parse_duration(value) if isinstance(value, str) else parse_duration(f"{value}s")


Duration = Annotated[int, BeforeValidator(_ms)]  # milliseconds of hub time


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Household(_Model):
    """`household: u-0001/h-03` — one panel of the fleet."""

    household: str = Field(pattern=r"^[a-z0-9-]{1,64}/[a-z0-9-]{1,64}$")


class Raise(Household):
    kind: Kind = "burglary"


class Storm(_Model):
    """Many households raise at once: `share` of the fleet's panels (or `count` of them)."""

    share: Annotated[float, Field(gt=0, le=1)] | None = None
    count: Annotated[int, Field(ge=1)] | None = None
    kind: Kind = "panic"

    @model_validator(mode="after")
    def _one_size(self) -> Storm:
        if (self.share is None) == (self.count is None):
            raise ValueError("give exactly one of share (like 0.1) or count")
        return self


class Ack(Household):
    alarm: int = Field(1, ge=1)


class Cancel(_Model):
    alarm: int = Field(1, ge=1)
    pin: Literal["right", "wrong", "duress"] = "right"


class Reply(_Model):
    """An SMS sent back: by the first phone of `role` that was told about the alarm."""

    role: Role
    alarm: int = Field(1, ge=1)
    text: str = "code"  # code: the alarm's reply code; anything else is sent as written


class Press(_Model):
    """A keypress in the alarm call to the first phone of `role`."""

    role: Role
    alarm: int = Field(1, ge=1)
    digits: str = "1"


class Down(_Model):
    down_for: Duration = 0


class Step(_Model):
    at: Duration
    raise_: Raise | None = Field(None, alias="raise")
    storm: Storm | None = None
    ack: Ack | None = None
    cancel: Cancel | None = None
    reply: Reply | None = None
    press: Press | None = None
    offline: Household | None = None
    online: Household | None = None
    broker_restart: Down | None = None
    hub_kill: Down | None = None  # kill -9 now; started again after down_for

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [name for name in ACTIONS if getattr(self, name) is not None]
        if len(actions) != 1:
            found = [a.rstrip("_") for a in actions] or "none"
            raise ValueError(
                f"a step does one thing at its time; found {found}"
                f" (one of: {', '.join(a.rstrip('_') for a in ACTIONS)})"
            )
        return self

    @property
    def action(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) is not None)


ACTIONS = (
    "raise_",
    "storm",
    "ack",
    "cancel",
    "reply",
    "press",
    "offline",
    "online",
    "broker_restart",
    "hub_kill",
)


class Responder(_Model):
    answer: Literal["code", "ack", "never"] = "code"
    after: Duration = 30_000


class Expectation(_Model):
    """One thing that must be true at the end; `alarm` numbers alarms in the order raised."""

    at: Duration | None = None  # check at this time, not at the end
    alarm: int | None = Field(None, ge=1)
    state: State | None = None  # the alarm's final state
    reached: State | None = None  # ...reached at some point (with `within`: that fast)
    notified: Role | None = None  # this role was told (by `channel`, `within`)
    not_notified: Role | None = None
    channel: Literal["sms", "voice", "push", "panel"] | None = None
    within: Duration | None = None
    step: str | None = None  # the ladder step of that name ...
    outcome: Literal["fired", "skipped", "pending"] | None = None  # ... ended so
    buzzers: int | None = Field(None, ge=0)  # how many neighbour panels sounded
    duress: bool | None = None
    lost: int | None = Field(None, ge=0)  # alarms raised but not stored and receipted
    alarms: int | None = Field(None, ge=0)  # how many alarms the hub holds
    trouble: str | None = None  # household u/h has an open trouble of `kind`
    no_trouble: str | None = None
    kind: str | None = None
    offline_neighbours: list[str] | None = None  # households the alarm's unit alert may miss
    sms_to: str | None = None  # household u/h got `count` SMS (`containing` some words)
    count: int | None = Field(None, ge=0)
    containing: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Expectation:
        what = [k for k in CHECKS if getattr(self, k) is not None]
        if len(what) != 1:
            raise ValueError(f"an expectation checks one thing; found {what or 'none'}")
        needs_alarm = {
            "state",
            "reached",
            "notified",
            "not_notified",
            "step",
            "buzzers",
            "duress",
            "offline_neighbours",
        }
        if what[0] in needs_alarm and self.alarm is None:
            raise ValueError(f"'{what[0]}' needs 'alarm: N' (the Nth alarm raised)")
        if what[0] == "step" and self.outcome is None:
            raise ValueError("'step' needs 'outcome: fired, skipped or pending'")
        return self

    @property
    def what(self) -> str:
        return next(k for k in CHECKS if getattr(self, k) is not None)


CHECKS = (
    "state",
    "reached",
    "notified",
    "not_notified",
    "step",
    "buzzers",
    "duress",
    "lost",
    "alarms",
    "trouble",
    "no_trouble",
    "offline_neighbours",
    "sms_to",
)


class Scenario(_Model):
    name: str
    description: str = ""
    speed: Annotated[float, Field(ge=1, le=600)] = 60.0
    registry: str | None = None  # relative to the scenario file; default: the example
    policy: str | None = None
    units: list[str] | None = None
    heartbeat_s: Annotated[float, Field(gt=0)] = 30.0  # hub time, between panels' beats
    responders: dict[Role, Responder] = {}
    steps: list[Step]
    run_for: Duration = 60_000
    expect: list[Expectation]

    @model_validator(mode="after")
    def _in_order(self) -> Scenario:
        times = [s.at for s in self.steps]
        if times != sorted(times):
            raise ValueError("steps must be in time order (`at` never decreasing)")
        return self


def load_scenario(path: str | Path) -> tuple[Scenario, Path]:
    """Read and check a scenario file (and its directory, for relative paths); ConfigError
    listing every problem at its line otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem(str(path), None, None, "", f"cannot read scenario: {exc.strerror}")]
        ) from None
    doc = YamlDocument.parse(text, str(path))
    try:
        scenario = Scenario.model_validate(doc.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or "[" not in p)
            line, col = doc.locate(loc) or (None, None)
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown key {loc[-1]!r}"
            elif isinstance(err.get("input"), str | int | float) and err["type"] != "missing":
                message = f"{err['input']!r}: {message}"
            problems.append(Problem(str(path), line, col, format_path(loc), message))
        raise ConfigError([*doc.problems, *problems]) from None
    if doc.problems:
        raise ConfigError(doc.problems)
    return scenario, path.parent
