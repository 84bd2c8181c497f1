"""The registry: which households form which unit, who patrols and who answers in each zone."""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from devices.topics import ID_RE
from hub.i18n.catalogues import available_languages, language_tag
from hub.passwords import hash_cost, verify_password
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

PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
PIN_RE = re.compile(r"^[0-9]{4,8}$")
# A PIN hash is checked on every cancel: one that costs more (a password's hash pasted
# in) would hold the database writer for tens of milliseconds each time.
MAX_PIN_HASH_COST = 2**10 * 8  # n·r·p; the hub writes 2**6 · 8


# --- field types ---------------------------------------------------------------------------


def _invalid(message: str) -> PydanticCustomError:
    # No context given: the message is used as is, braces and all.
    return PydanticCustomError("tenhub_invalid", message)


def _check_id(value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise _invalid(
            f"{value!r} is not a valid id: use lower-case letters, digits and '-' (1-64 characters)"
        )
    return value


def _check_household_id(value: str) -> str:
    if "/" in value:
        raise _invalid(
            f"household id {value!r} must not contain '/': household ids are local to their "
            "unit, like h-01 (the full name unit/household, e.g. u-0001/h-01, "
            "is only written in key_households)"
        )
    return _check_id(value)


def _check_household_ref(value: str) -> str:
    unit_id, slash, household_id = value.partition("/")
    if not (slash and ID_RE.fullmatch(unit_id) and ID_RE.fullmatch(household_id)):
        raise _invalid(
            f"{value!r} is not a household reference: write unit_id/household_id, like u-0001/h-01"
        )
    return value


def _refuse_number(example: str, loss: str, secret: str | None = None) -> Callable[[Any], Any]:
    """A before-validator refusing numbers: YAML turns unquoted digits into ints.

    With `secret` (what the value is, e.g. "a PIN") the message does not repeat the value.
    """

    def check(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise _invalid(
                f'{secret or value} must be quoted, like "{example}": '
                f"without quotes YAML reads it as a number and {loss}"
            )
        return value

    return check


def _check_phone(value: str) -> str:
    if not PHONE_RE.fullmatch(value):
        raise _invalid(f"{value!r} is not an E.164 phone number like +15550000101")
    return value


def _check_pin(value: str) -> str:
    # The value is not repeated: problems are printed, logged and sent back to browsers.
    if not PIN_RE.fullmatch(value):
        raise _invalid("not a PIN: use 4 to 8 digits")
    return value


def _check_pin_hash(value: str) -> str:
    cost = hash_cost(value)
    if cost is None:
        raise _invalid(
            "not a PIN hash as the hub writes them (scrypt$n$r$p$salt$hash): "
            'to set a PIN, give it as pin or duress_pin, quoted, like "0123"'
        )
    n, r, p = cost
    if n * r * p > MAX_PIN_HASH_COST:
        raise _invalid(
            f"this hash costs too much to check on every cancel (n={n}, r={r}, p={p};"
            f" n·r·p may be at most {MAX_PIN_HASH_COST}): give the PIN itself as pin"
        )
    return value


def _check_language(value: str) -> str:
    tag = language_tag(value)
    if tag is None:
        raise _invalid(f"unknown language {value!r}: use one of {', '.join(available_languages())}")
    return tag


Id = Annotated[str, AfterValidator(_check_id)]
HouseholdId = Annotated[str, AfterValidator(_check_household_id)]
HouseholdRef = Annotated[str, AfterValidator(_check_household_ref)]
Phone = Annotated[
    str,
    BeforeValidator(_refuse_number("+15550000101", "the '+' is lost")),
    AfterValidator(_check_phone),
]
Pin = Annotated[
    str,
    BeforeValidator(_refuse_number("0123", "a leading zero would be lost", "a PIN")),
    AfterValidator(_check_pin),
]
PinHash = Annotated[str, AfterValidator(_check_pin_hash)]
Language = Annotated[str, AfterValidator(_check_language)]


# --- models --------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Model):
    """Where a unit is, for maps and for dispatching patrols."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


def _check_dc09_key(value: str) -> str:
    # The value is not repeated: problems are printed, logged and sent back to browsers.
    if not re.fullmatch(r"[0-9A-Fa-f]*", value):
        raise _invalid("a DC-09 key is written in hex (0-9, A-F)")
    if len(value) not in (32, 48, 64):
        raise _invalid(
            f"a DC-09 key is AES-128, -192 or -256: 32, 48 or 64 hex digits, not {len(value)}"
        )
    return value


def _check_dc09_account(value: str) -> str:
    if not re.fullmatch(r"[0-9A-F]{3,16}", value):
        raise _invalid(
            f"{value!r} is not a DC-09 account: 3 to 16 digits or capitals A-F, as the panel"
            " sends it after '#'"
        )
    return value


Dc09Account = Annotated[
    str,
    BeforeValidator(_refuse_number("1234", "its leading zeros would be lost")),
    AfterValidator(_check_dc09_account),
]
Dc09Key = Annotated[
    str,
    BeforeValidator(_refuse_number("00112233445566778899AABBCCDDEEFF", "it is no key", "a key")),
    AfterValidator(_check_dc09_key),
]


class Dc09Link(_Model):
    """The SIA DC-09 account a household's alarm panel reports under, and its AES key (in
    hex; absent when the panel sends in clear)."""

    account: Dc09Account
    key: Dc09Key | None = None

    def key_bytes(self) -> bytes | None:
        """The AES key as bytes, or None for an account that sends in clear."""
        return bytes.fromhex(self.key) if self.key else None


class Household(_Model):
    """One home of a unit and the alarm panel installed there.

    Each of its two PINs is given as the PIN itself (`pin`, as operators write it), as a
    salted hash (`pin_hash`, as the hub writes and holds it), or as `pin_set: true` (as
    an export says it: an import keeps the PIN the hub holds); the same for `duress_pin`.
    """

    id: HouseholdId
    address: str
    panel: Id
    phones: list[Phone] = []
    pin: Pin | None = None
    duress_pin: Pin | None = None
    pin_hash: PinHash | None = None
    duress_pin_hash: PinHash | None = None
    pin_set: bool | None = None
    duress_pin_set: bool | None = None
    language: Language | None = None  # None: the deployment's
    # The household's panel reports over SIA DC-09 (a commercial alarm panel) under this
    # account, instead of over tenhub's MQTT protocol.
    dc09: Dc09Link | None = None

    @property
    def has_pin(self) -> bool:
        """Whether a PIN is set (given, hashed or marked as set)."""
        return bool(self.pin or self.pin_hash or self.pin_set)

    @property
    def has_duress_pin(self) -> bool:
        """Whether a duress PIN is set (given, hashed or marked as set)."""
        return bool(self.duress_pin or self.duress_pin_hash or self.duress_pin_set)


class Unit(_Model):
    """About ten neighbouring households that alert each other."""

    id: Id
    name: str
    zone: Id
    location: Location | None = None
    key_households: list[HouseholdRef] = []
    households: list[Household] = Field(min_length=1)


class PatrolMember(_Model):
    """A person of a patrol team, reachable by phone."""

    name: str
    phone: Phone
    language: Language | None = None  # None: the deployment's


class Patrol(_Model):
    """A patrol team answering alarms in one zone."""

    id: Id
    zone: Id
    members: list[PatrolMember]


class PoliceDesk(_Model):
    """A police desk that alarms of its zones are escalated to."""

    id: Id
    zones: list[Id]
    phone: Phone
    language: Language | None = None  # None: the deployment's


class CommandPost(_Model):
    """A command post overseeing every zone."""

    id: Id
    phone: Phone
    language: Language | None = None  # None: the deployment's


@dataclass(frozen=True)
class PanelPlace:
    """Where a panel is installed."""

    unit: Unit
    household: Household


class Registry(_Model):
    """Everything the hub knows about units, patrols, police desks and command posts."""

    units: list[Unit]
    patrols: list[Patrol] = []
    police_desks: list[PoliceDesk] = []
    command: list[CommandPost] = []

    _units: dict[str, Unit] = PrivateAttr(default_factory=dict)
    _households: dict[tuple[str, str], Household] = PrivateAttr(default_factory=dict)
    _panels: dict[str, PanelPlace] = PrivateAttr(default_factory=dict)
    _patrols: dict[str, list[Patrol]] = PrivateAttr(default_factory=dict)
    _desks: dict[str, list[PoliceDesk]] = PrivateAttr(default_factory=dict)
    _phones: dict[str, list[str]] = PrivateAttr(default_factory=dict)
    _languages: dict[str, str] = PrivateAttr(default_factory=dict)
    _dc09: dict[str, PanelPlace] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        def phone(number: str, who: str, language: str | None = None) -> None:
            self._phones.setdefault(number, []).append(who)
            if language:
                self._languages.setdefault(number, language)

        for unit in self.units:
            self._units.setdefault(unit.id, unit)
            for household in unit.households:
                self._households.setdefault((unit.id, household.id), household)
                self._panels.setdefault(household.panel, PanelPlace(unit, household))
                if household.dc09 is not None:
                    self._dc09.setdefault(household.dc09.account, PanelPlace(unit, household))
                for number in household.phones:
                    phone(number, f"household {unit.id}/{household.id}", household.language)
        for patrol in self.patrols:
            self._patrols.setdefault(patrol.zone, []).append(patrol)
            for member in patrol.members:
                phone(member.phone, f"patrol {patrol.id} ({member.name})", member.language)
        for desk in self.police_desks:
            phone(desk.phone, f"police desk {desk.id}", desk.language)
            for zone in dict.fromkeys(desk.zones):
                self._desks.setdefault(zone, []).append(desk)
        for post in self.command:
            phone(post.phone, f"command post {post.id}", post.language)

    def who_has_phone(self, number: str) -> list[str]:
        """Who this phone number belongs to (households, patrol members, desks, command)."""
        return list(self._phones.get(number, []))

    def language_of_phone(self, number: str) -> str | None:
        """The language the registry gives this phone's owner (the first one given), if any."""
        return self._languages.get(number)

    def panel_places(self) -> Mapping[str, PanelPlace]:
        """Every panel's place, by panel id (read-only)."""
        return types.MappingProxyType(self._panels)

    def panel_place(self, panel_id: str) -> PanelPlace | None:
        """The unit and household of a panel; None for a panel not in the registry."""
        return self._panels.get(panel_id)

    def dc09_place(self, account: str) -> PanelPlace | None:
        """The unit and household whose panel reports under this DC-09 account, if any."""
        return self._dc09.get(account)

    def dc09_keys(self) -> dict[str, bytes]:
        """The AES key of every DC-09 account that has one, by account."""
        return {
            account: key
            for account, place in self._dc09.items()
            if place.household.dc09 and (key := place.household.dc09.key_bytes())
        }

    def unit(self, unit_id: str) -> Unit | None:
        """The unit with this id, if any."""
        return self._units.get(unit_id)

    def household(self, unit_id: str, household_id: str) -> Household | None:
        """A household by its unit id and its id within the unit."""
        return self._households.get((unit_id, household_id))

    def unit_panels(self, unit_id: str) -> list[str]:
        """Panel ids of every household of the unit ([] for an unknown unit)."""
        unit = self._units.get(unit_id)
        return [household.panel for household in unit.households] if unit else []

    def patrols_in_zone(self, zone: str) -> list[Patrol]:
        """Patrols answering alarms in zone."""
        return list(self._patrols.get(zone, []))

    def desks_for_zone(self, zone: str) -> list[PoliceDesk]:
        """Police desks covering zone."""
        return list(self._desks.get(zone, []))

    def key_households_of(self, unit_id: str) -> list[tuple[Unit, Household]]:
        """The unit's key households, each with the unit it belongs to (maybe another one)."""
        unit = self._units.get(unit_id)
        found = []
        for ref in unit.key_households if unit else []:
            owner_id, _, household_id = ref.partition("/")
            owner, household = self._units.get(owner_id), self.household(owner_id, household_id)
            if owner is not None and household is not None:
                found.append((owner, household))
        return found

    def counts(self) -> dict[str, int]:
        """How many of each thing the registry holds."""
        return {
            "units": len(self.units),
            "households": sum(len(unit.households) for unit in self.units),
            "panels": len(self._panels),
            "patrols": len(self.patrols),
            "police_desks": len(self.police_desks),
            "command": len(self.command),
        }


# --- loading -------------------------------------------------------------------------------


def load_registry(path: str | Path) -> Registry:
    """Read and check a registry file; ConfigError listing every problem (warnings are logged)."""
    return load_checked(path, "registry", parse_registry)


def parse_registry(text: str, file: str) -> tuple[Registry | None, list[Problem]]:
    """Check registry YAML text; the Registry is None when any problem is an error."""
    try:
        doc = YamlDocument.parse(text, file)
    except ConfigError as exc:
        return None, exc.problems
    if doc.data is None:
        message = "the registry is empty: it needs at least 'units'"
        return None, [Problem(file, None, None, "", message)]
    problems = list(doc.problems)
    # Cross-checks read the raw data, so one run shows a duplicate panel next to a typo.
    problems += _Checker(doc).run()
    registry = None
    try:
        registry = Registry.model_validate(doc.data)
    except ValidationError as exc:
        problems += [_problem_from_error(error, doc) for error in exc.errors()]
    problems = sort_problems(problems)
    if any(problem.is_error for problem in problems):
        return None, problems
    return registry, problems


# --- cross-checks on raw data --------------------------------------------------------------

DataPath = tuple[PathPart, ...]


def _mappings(data: Any, key: str) -> list[tuple[int, dict]]:
    """(index, item) of the mappings listed under data[key]; nothing if the shape is wrong."""
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _text(mapping: dict, key: str) -> str | None:
    value = mapping.get(key)
    return value if isinstance(value, str) else None


def _hashes_pin(encoded: str | None, pin: str | None) -> bool:
    """Whether a PIN hash (of a cost the model accepts) is the hash of this PIN."""
    if encoded is None or pin is None:
        return False
    cost = hash_cost(encoded)
    if cost is None or cost[0] * cost[1] * cost[2] > MAX_PIN_HASH_COST:
        return False  # the model says what is wrong with it
    return verify_password(pin, encoded)


class _Checker:
    """Checks that span several entries: uniqueness, references, coverage."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []
        self._marked_only: list[tuple[DataPath, str]] = []  # `pin_set` with no PIN given

    def run(self) -> list[Problem]:
        data = self.doc.data
        units = [(("units", i), unit) for i, unit in _mappings(data, "units")]
        unit_ids = self._unique_ids(units, "unit id")
        households = self._check_households(units, unit_ids)
        self._check_key_households(units, unit_ids, households)
        for key, what in (
            ("patrols", "patrol"),
            ("police_desks", "police desk"),
            ("command", "command post"),
        ):
            self._unique_ids([((key, i), item) for i, item in _mappings(data, key)], f"{what} id")
        self._check_coverage(units)
        self._check_pin_markers()
        return self.problems

    def _add(self, path: DataPath, message: str, severity: Severity = "error") -> None:
        line, col = self.doc.locate(path) or (None, None)
        self.problems.append(
            Problem(self.doc.file, line, col, format_path(path), message, severity)
        )

    def _line(self, path: DataPath) -> str:
        position = self.doc.locate(path)
        return f"line {position[0]}" if position else "another entry"

    def _unique_ids(
        self, entries: list[tuple[DataPath, dict]], what: str, where: str = ""
    ) -> dict[str, DataPath]:
        """Report repeated ids among entries; returns each id with the path of its first use."""
        first: dict[str, DataPath] = {}
        for path, entry in entries:
            value = _text(entry, "id")
            if value is None:
                continue
            if value in first:
                self._add(
                    (*path, "id"),
                    f"duplicate {what} '{value}'{where} (first used at {self._line(first[value])})",
                )
            else:
                first[value] = (*path, "id")
        return first

    def _check_households(
        self, units: list[tuple[DataPath, dict]], unit_ids: dict[str, DataPath]
    ) -> set[tuple[str, str]]:
        """Check every household; returns the (unit id, household id) pairs that exist."""
        existing: set[tuple[str, str]] = set()
        panels: dict[str, tuple[DataPath, str]] = {}
        accounts: dict[str, tuple[DataPath, str]] = {}
        for unit_path, unit in units:
            unit_id = _text(unit, "id")
            entries = [((*unit_path, "households", i), h) for i, h in _mappings(unit, "households")]
            where = f" in unit {unit_id}" if unit_id else ""
            self._unique_ids(entries, "household id", where)
            for path, household in entries:
                household_id = _text(household, "id")
                full_name = f"{unit_id or '?'}/{household_id or '?'}"
                if unit_id and household_id:
                    existing.add((unit_id, household_id))
                if household_id in unit_ids:
                    self._add(
                        (*path, "id"),
                        f"household id '{household_id}' names unit {household_id}: household ids "
                        "are local to their unit, like h-01 (the full name is unit/household)",
                    )
                self._check_panel(panels, path, household, full_name)
                self._check_dc09_account(accounts, path, household, full_name)
                self._check_pins(path, household, full_name)
                if not household.get("phones"):
                    self._add(
                        (*path, "phones"),
                        f"household {full_name} has no phones: nobody there can be called",
                        "warning",
                    )
        return existing

    def _check_panel(
        self,
        panels: dict[str, tuple[DataPath, str]],
        path: DataPath,
        household: dict,
        full_name: str,
    ) -> None:
        panel = _text(household, "panel")
        if panel is None:
            return
        if panel not in panels:
            panels[panel] = ((*path, "panel"), full_name)
            return
        first_path, owner = panels[panel]
        same_unit = first_path[:2] == path[:2]
        rule = (
            "each household has a panel of its own"
            if same_unit
            else "a household and its panel can be in one unit only"
        )
        self._add(
            (*path, "panel"),
            f"duplicate panel id '{panel}': it already belongs to household {owner} "
            f"({self._line(first_path)}): {rule}",
        )

    def _check_dc09_account(
        self,
        accounts: dict[str, tuple[DataPath, str]],
        path: DataPath,
        household: dict,
        full_name: str,
    ) -> None:
        link = household.get("dc09")
        account = _text(link, "account") if isinstance(link, dict) else None
        if account is None:
            return
        if account not in accounts:
            accounts[account] = ((*path, "dc09", "account"), full_name)
            return
        first_path, owner = accounts[account]
        self._add(
            (*path, "dc09", "account"),
            f"duplicate DC-09 account '{account}': it already belongs to household {owner}"
            f" ({self._line(first_path)}): the receiver could not tell whose alarm it is",
        )

    def _check_pins(self, path: DataPath, household: dict, full_name: str) -> None:
        for key in ("pin", "duress_pin"):
            given = [k for k in (key, f"{key}_hash") if household.get(k) is not None]
            if household.get(f"{key}_set") is True:
                given.append(f"{key}_set")
            if len(given) > 1:
                self._add(
                    (*path, given[1]),
                    f"{' and '.join(given)} both given: give the {key} once, as {key}"
                    f" (the PIN), {key}_hash (as the hub writes it) or {key}_set: true (keep"
                    " the one the hub holds)",
                )
            elif given == [f"{key}_set"]:
                self._marked_only.append(((*path, f"{key}_set"), full_name))
        pin, duress_pin = _text(household, "pin"), _text(household, "duress_pin")
        pin_hash, duress_hash = _text(household, "pin_hash"), _text(household, "duress_pin_hash")
        same = (
            (pin is not None and pin == duress_pin)
            or (pin_hash is not None and pin_hash == duress_hash)
            or _hashes_pin(duress_hash, pin)
            or _hashes_pin(pin_hash, duress_pin)
        )
        if same:
            self._add(
                (*path, "duress_pin_hash" if duress_pin is None else "duress_pin"),
                "duress_pin is the same as pin: a disarm under duress would look like a normal one",
            )

    def _check_pin_markers(self) -> None:
        """One warning for every household whose PIN is only marked as set."""
        if not self._marked_only:
            return
        path, first = self._marked_only[0]
        more = len({name for _, name in self._marked_only}) - 1
        who = (
            f"households {first} and {more} more only say"
            if more
            else (f"household {first} only says")
        )
        self._add(
            path,
            f"{who} a PIN is set (pin_set or duress_pin_set, as an export says it):"
            " imported through /admin or the API they keep the PINs the hub holds, but a"
            " hub started from this file has no such PIN for them",
            "warning",
        )

    def _check_key_households(
        self,
        units: list[tuple[DataPath, dict]],
        unit_ids: dict[str, DataPath],
        existing: set[tuple[str, str]],
    ) -> None:
        for unit_path, unit in units:
            refs = unit.get("key_households")
            for i, ref in enumerate(refs if isinstance(refs, list) else []):
                owner_id, slash, household_id = (
                    ref.partition("/") if isinstance(ref, str) else ("", "", "")
                )
                well_formed = slash and ID_RE.fullmatch(owner_id) and ID_RE.fullmatch(household_id)
                if not well_formed or (owner_id, household_id) in existing:
                    continue  # a malformed reference is reported by the model
                path = (*unit_path, "key_households", i)
                if owner_id not in unit_ids:
                    reason = f"there is no unit {owner_id}"
                else:
                    reason = f"unit {owner_id} has no household {household_id}"
                self._add(path, f"key household '{ref}' does not exist: {reason}")

    def _check_coverage(self, units: list[tuple[DataPath, dict]]) -> None:
        data = self.doc.data
        patrolled = {_text(p, "zone") for _, p in _mappings(data, "patrols")}
        policed = {
            zone
            for _, desk in _mappings(data, "police_desks")
            for zone in (desk["zones"] if isinstance(desk.get("zones"), list) else [])
            if isinstance(zone, str)
        }
        for unit_path, unit in units:
            zone, unit_id = _text(unit, "zone"), _text(unit, "id") or "?"
            if zone is None:
                continue
            if zone not in patrolled:
                self._add(
                    (*unit_path, "zone"),
                    f"no patrol covers zone {zone}: alarms of unit {unit_id} reach no patrol",
                    "warning",
                )
            if zone not in policed:
                self._add(
                    (*unit_path, "zone"),
                    f"no police desk covers zone {zone}: alarms of unit {unit_id} "
                    "cannot be escalated to the police",
                    "warning",
                )
        if isinstance(data, dict) and not data.get("command"):
            self._add(
                ("command",), "no command post: escalations stop at the police desks", "warning"
            )


# --- pydantic errors as problems -----------------------------------------------------------


def _problem_from_error(error: Any, doc: YamlDocument) -> Problem:
    loc = tuple(error["loc"])
    unknown_key = error["type"] == "extra_forbidden"
    line, col = (doc.locate_key(loc) if unknown_key else doc.locate(loc)) or (None, None)
    return Problem(doc.file, line, col, format_path(loc), _message(error, loc))


def _message(error: Any, loc: tuple[PathPart, ...]) -> str:
    """Pydantic's error in words an operator understands."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key '{loc[-1]}'{allowed}"
    if kind == "missing":
        return f"missing required key '{loc[-1]}'"
    if kind == "string_type":
        return f"expected text, got {_describe(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys to values, got {_describe(value)}"
    if kind == "list_type":
        return f"expected a list, got {_describe(value)}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"expected a number, got {_describe(value)}"
    if kind == "greater_than_equal":
        return f"{value} is too small: must be at least {ctx['ge']:g}"
    if kind == "less_than_equal":
        return f"{value} is too large: must be at most {ctx['le']:g}"
    if kind == "too_short" and ctx.get("min_length") == 1:
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


def _model_at(path: tuple[PathPart, ...]) -> type[BaseModel] | None:
    """The model class validating the data at path, following list items and optionals."""
    current: Any = Registry
    for part in path:
        if isinstance(part, int):
            current = get_args(current)[0] if get_origin(current) is list else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field else None
        else:
            current = None
        if get_origin(current) in (Union, types.UnionType):
            current = next(arg for arg in get_args(current) if arg is not type(None))
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None
