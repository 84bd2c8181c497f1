"""Policy files: YAML read into a PolicySet, every mistake reported at its line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from hub.alarms.policy import (
    DEFAULT,
    MISSING_DEFAULT,
    Notify,
    Policy,
    PolicySet,
    Step,
    Unless,
    format_duration,
    ladder_errors,
    parse_duration,
    policy_name_error,
)
from hub.problems import (
    ConfigError,
    Problem,
    Severity,
    format_path,
    load_checked,
    sort_problems,
)
from hub.registry.yaml_source import PathPart, YamlDocument

logger = logging.getLogger(__name__)

DataPath = tuple[PathPart, ...]


# --- the file's shape ----------------------------------------------------------------------


def _duration(value: Any) -> int:
    if value is None or isinstance(value, bool | list | dict):
        raise PydanticCustomError(
            "tenhub_invalid", f"expected a duration like 90s, 5m or 1h30m, got {_describe(value)}"
        )
    try:
        return parse_duration(str(value))  # a bare number is refused for lack of a unit
    except ValueError as exc:
        raise PydanticCustomError("tenhub_invalid", str(exc)) from None


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _StepEntry(_Entry):
    after: Annotated[int, BeforeValidator(_duration)]
    notify: Notify
    unless: Unless | None = None
    name: str | None = None


class _PolicyEntry(_Entry):
    steps: list[_StepEntry] = Field(min_length=1)


class _PolicyFile(_Entry):
    policies: dict[str, _PolicyEntry]


# Which model a mapping at this depth is read by, to list its keys when one is unknown:
# policies / <name> / steps / <index> / unless.
_MODEL_AT_DEPTH: dict[int, type[BaseModel]] = {
    0: _PolicyFile,
    2: _PolicyEntry,
    4: _StepEntry,
    5: Unless,
}


# --- loading -------------------------------------------------------------------------------


def load_policies(path: str | Path) -> PolicySet:
    """Read and check a policy file; ConfigError listing every problem (warnings are logged)."""
    return load_checked(path, "policy", parse_policies)


def parse_policies(text: str, file: str) -> tuple[PolicySet | None, list[Problem]]:
    """Check policy YAML text; the PolicySet is None when any problem is an error."""
    try:
        doc = YamlDocument.parse(text, file)
    except ConfigError as exc:
        return None, exc.problems
    if doc.data is None:
        message = "the policy file is empty: it needs 'policies' with at least a 'default' one"
        return None, [Problem(file, None, None, "", message)]
    problems = list(doc.problems)
    # Ladder checks read the raw data, so one run shows a step out of order next to a typo.
    problems += _Checker(doc).run()
    parsed = None
    try:
        parsed = _PolicyFile.model_validate(doc.data)
    except ValidationError as exc:
        problems += [
            _problem_from_error(error, doc)
            for error in exc.errors()
            # A list of only bad entries is "too short" once they are dropped; they are reported.
            if not (error["type"] == "too_short" and error.get("input"))
        ]
    problems = sort_problems(problems)
    if parsed is None or any(problem.is_error for problem in problems):
        return None, problems
    policies = PolicySet({name: _policy(name, entry) for name, entry in parsed.policies.items()})
    return policies, problems


def _policy(name: str, entry: _PolicyEntry) -> Policy:
    steps = tuple(
        Step(after_ms=step.after, notify=step.notify, unless=step.unless, name=step.name)
        for step in entry.steps
    )
    return Policy(name=name, steps=steps)


# --- checks across steps and policies, on raw data -----------------------------------------


class _Checker:
    """Checks no single value shows: policy names, the default policy, each ladder's order."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def run(self) -> list[Problem]:
        data = self.doc.data
        policies = data.get("policies") if isinstance(data, dict) else None
        if not isinstance(policies, dict):
            return []  # the model says what is wrong with the shape
        if DEFAULT not in policies:
            self._add(("policies",), MISSING_DEFAULT, key=True)
        for name, body in policies.items():
            error = policy_name_error(name)
            if error:
                self._add(("policies", name), error, key=True)
            steps = body.get("steps") if isinstance(body, dict) else None
            if isinstance(steps, list) and steps:
                self._check_ladder(("policies", name, "steps"), steps)
        return self.problems

    def _check_ladder(self, path: DataPath, steps: list[Any]) -> None:
        entries = [step if isinstance(step, dict) else {} for step in steps]
        afters = [_try_duration(entry.get("after")) for entry in entries]
        # `notify: police` is reported as not a list; it should not also count as no police.
        notifies = [n if isinstance(n := entry.get("notify"), list) else [n] for entry in entries]

        def step_ref(index: int) -> str:
            position = self.doc.locate((*path, index))
            return f"step {index + 1}" + (f" (line {position[0]})" if position else "")

        for where, message in ladder_errors(afters, notifies, step_ref):
            self._add((*path, *where), message, key=not where)
        if afters[0]:
            self._add(
                (*path, 0, "after"),
                f"the first step fires after {format_duration(afters[0])}: nobody is alerted "
                "until then; start the ladder with a step after 0s",
                "warning",
            )

    def _add(
        self, path: DataPath, message: str, severity: Severity = "error", *, key: bool = False
    ) -> None:
        position = self.doc.locate_key(path) if key else self.doc.locate(path)
        line, col = position or (None, None)
        self.problems.append(
            Problem(self.doc.file, line, col, format_path(path), message, severity)
        )


def _try_duration(value: Any) -> int | None:
    """Milliseconds of a duration, None when it is unreadable (the model reports that)."""
    if not isinstance(value, str):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


# --- pydantic errors as problems -----------------------------------------------------------


def _problem_from_error(error: Any, doc: YamlDocument) -> Problem:
    kind, loc = error["type"], tuple(error["loc"])
    at_key = kind == "extra_forbidden" or loc[-1:] == ("[key]",)
    loc = _existing(tuple(part for part in loc if part != "[key]"), doc.data, kind)
    if kind == "duplicate_role":
        loc = (*loc, error["ctx"]["index"])
    line, col = (doc.locate_key(loc) if at_key else doc.locate(loc)) or (None, None)
    return Problem(doc.file, line, col, format_path(loc), _message(error, loc))


def _existing(loc: DataPath, data: Any, kind: str) -> DataPath:
    """loc cut where the raw data ends, e.g. `unless: resolvd` reported at unless, not its state.

    A missing key keeps its name: it says what to add.
    """
    for depth, part in enumerate(loc):
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return loc if kind == "missing" or isinstance(data, dict) else loc[:depth]
        data = data[part]
    return loc


def _message(error: Any, loc: DataPath) -> str:
    """Pydantic's error in words an operator understands."""
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        model = _MODEL_AT_DEPTH.get(len(loc) - 1)
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key '{loc[-1]}'{allowed}"
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    if kind == "string_type":
        return f"expected text, got {_describe(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys to values, got {_describe(value)}"
    if kind in ("list_type", "tuple_type", "frozen_set_type", "set_type"):
        hint = f": write [{value}]" if isinstance(value, str) else ""
        return f"expected a list, got {_describe(value)}{hint}"
    if kind == "too_short":
        return "must not be empty: list at least one entry"
    return str(error["msg"])


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
