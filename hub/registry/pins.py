"""Household PINs as the hub holds them: salted hashes, never the PINs themselves.

A registry arrives with PINs as operators write them; `seal_pins` hashes them before the
hub serves it, and on an import keeps the hashes the hub holds for the PINs an export
only marks as set. `match_pin` says which of its PINs a household's cancel carried.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

from hub.passwords import hash_pin, verify_password
from hub.problems import Problem
from hub.registry.model import Household, Registry

# Below this many PINs to hash, threads cost more than they save.
_PARALLEL_FROM = 64


class PinMatch(StrEnum):
    """What a PIN entered on a household's panel is."""

    PIN = "pin"
    DURESS = "duress"
    WRONG = "wrong"
    NONE_SET = "none_set"  # the household has no (normal) PIN: nothing but duress matches


def match_pin(household: Household, entered: str) -> PinMatch:
    """Which of the household's PINs `entered` is; both are always checked, in the same time."""
    # Both checks run whatever the first one found: a cancel with the duress PIN must not
    # be told apart by how long its answer took.
    is_pin = _matches(entered, household.pin, household.pin_hash)
    is_duress = _matches(entered, household.duress_pin, household.duress_pin_hash)
    if is_duress:
        return PinMatch.DURESS
    if is_pin:
        return PinMatch.PIN
    return PinMatch.WRONG if household.pin or household.pin_hash else PinMatch.NONE_SET


def _matches(entered: str, clear: str | None, encoded: str | None) -> bool:
    if encoded is not None:
        return verify_password(entered, encoded)
    if clear is not None:  # a registry not sealed (tests of the lifecycle alone)
        return hmac.compare_digest(entered.encode(), clear.encode())
    return False


def is_sealed(registry: Registry) -> bool:
    """Whether the registry holds no PIN but as a hash (and no `pin_set` marker)."""
    return not any(
        h.pin or h.duress_pin or h.pin_set is not None or h.duress_pin_set is not None
        for unit in registry.units
        for h in unit.households
    )


def seal_pins(
    registry: Registry, previous: Registry | None = None, file: str = "registry.yaml"
) -> tuple[Registry | None, list[Problem]]:
    """The registry with every PIN held as a salted hash, and the problems met doing so.

    A PIN given is hashed. A PIN only marked as set (`pin_set: true`) takes the hash that
    `previous` holds for the same unit id and household id; without one the household has
    no such PIN (a warning). The registry is None when a PIN given is the same as the
    other PIN the hub keeps for that household (an error).
    """
    if is_sealed(registry):
        return registry, []
    data = registry.model_dump(mode="json", exclude_none=True)
    to_hash: list[tuple[dict[str, Any], str, str]] = []  # (household, key, PIN)
    problems: list[Problem] = []
    unheld: list[str] = []
    for u, unit in enumerate(registry.units):
        for i, household in enumerate(unit.households):
            raw = data["units"][u]["households"][i]
            old = previous.household(unit.id, household.id) if previous else None
            for key in ("pin", "duress_pin"):
                marked = raw.pop(f"{key}_set", None)
                clear = raw.pop(key, None)
                if clear is not None:
                    to_hash.append((raw, f"{key}_hash", clear))
                elif marked and f"{key}_hash" not in raw:
                    held = _held(old, key)
                    if held is not None:
                        raw[f"{key}_hash"] = held
                    else:
                        unheld.append(f"{key} of {unit.id}/{household.id}")
            problems += _same_as_kept(file, (u, i), unit.id, household, old)
    if any(p.is_error for p in problems):
        return None, problems
    hashed = _hash_all([pin for *_, pin in to_hash])
    for (raw, key, _), encoded in zip(to_hash, hashed, strict=True):
        raw[key] = encoded
    if unheld:
        more = f" and {len(unheld) - 1} more" if len(unheld) > 1 else ""
        problems.append(
            Problem(
                file,
                None,
                None,
                "units",
                f"the {unheld[0]}{more} are marked as set, but the hub holds no such PIN:"
                " these households have none now (give the PIN itself to set one)",
                "warning",
            )
        )
    return Registry.model_validate(data), problems


def _held(old: Household | None, key: str) -> str | None:
    """The hash of the PIN `key` a household held, if it held one."""
    if old is None:
        return None
    encoded = getattr(old, f"{key}_hash")
    clear = getattr(old, key)
    return encoded if encoded is not None else (hash_pin(clear) if clear else None)


def _same_as_kept(
    file: str, at: tuple[int, int], unit_id: str, new: Household, old: Household | None
) -> list[Problem]:
    """An error when a PIN given now is the other PIN kept from `old` (a marker)."""
    pairs = [("duress_pin", new.duress_pin, new.pin_set and _held(old, "pin"))]
    pairs.append(("pin", new.pin, new.duress_pin_set and _held(old, "duress_pin")))
    for key, clear, kept in pairs:
        if clear and kept and verify_password(clear, kept):
            return [
                Problem(
                    file,
                    None,
                    None,
                    f"units[{at[0]}].households[{at[1]}].{key}",
                    f"household {unit_id}/{new.id}: the new {key} is the same as the"
                    f" {'pin' if key == 'duress_pin' else 'duress_pin'} the hub keeps for it:"
                    " a disarm under duress would look like a normal one",
                )
            ]
    return []


def _hash_all(pins: list[str]) -> Iterable[str]:
    """The hashes of the PINs, in order; on every core when there are many."""
    if len(pins) < _PARALLEL_FROM:
        return [hash_pin(pin) for pin in pins]
    # hashlib's scrypt lets go of the GIL: the threads hash on every core at once.
    workers = max(1, min(8, os.cpu_count() or 1))
    chunks = [pins[n::workers] for n in range(workers)]
    with ThreadPoolExecutor(workers, thread_name_prefix="pin-hash") as pool:
        hashed = list(pool.map(lambda chunk: [hash_pin(pin) for pin in chunk], chunks))
    ordered: list[str] = [""] * len(pins)
    for n, chunk in enumerate(hashed):
        ordered[n::workers] = chunk
    return ordered


class PinDigest:
    """Stands in for a PIN typed on a panel wherever the hub keeps the event: a keyed digest.

    A cancel is stored as its panel sent it, to tell a repeat from a new event under the
    same seq; with the PIN in it, a copy of the database would give away every PIN and
    duress PIN a household ever typed. The same PIN gives the same digest (a repeat is
    still a repeat), and without the key, kept in a file of its own beside the database,
    trying all 10,000 four-digit PINs finds nothing.
    """

    PREFIX = "hmac-sha256:"

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> PinDigest:
        """The key kept at `path` (hex, mode 0600), made on the first call (blocking)."""
        if path.exists():
            return cls(bytes.fromhex(path.read_text(encoding="ascii").strip()))
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        return cls(key)

    def stored_form(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event as the hub keeps it: a `pin` replaced by its digest."""
        pin = event.get("pin")
        if not isinstance(pin, str):
            return event
        digest = hmac.new(self._key, pin.encode("utf-8"), hashlib.sha256).hexdigest()
        return {**event, "pin": self.PREFIX + digest[:32]}


def pin_key_path(db_path: str) -> Path:
    """Where the key of the PIN digests lives: beside the database, not in it."""
    path = Path(db_path)
    return path.with_name(path.stem + "-pin.key")
