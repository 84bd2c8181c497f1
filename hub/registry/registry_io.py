"""The registry out and back in: YAML as operators write it, households as CSV for spreadsheets.

Whatever comes in goes through the same checks and messages as `tenhub check-config`.
No PIN goes out, nor a PIN's hash (a 4-digit PIN falls to 10,000 guesses): an export
says only that a PIN is set (`pin_set: true`; `set` in the CSV), and importing it back
keeps the PINs the hub holds. Only the registry file the hub writes for itself holds
the hashes (`pin_hash`, `duress_pin_hash`).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from hub.problems import Problem
from hub.registry.model import Registry, parse_registry

CSV_COLUMNS = ("unit_id", "household_id", "address", "panel", "phones", "pin", "duress_pin")
# A CSV cell saying a PIN is set: imported, the household keeps the PIN the hub holds.
PIN_SET = "set"
_PIN_KEYS = ("pin", "duress_pin")


def registry_yaml(registry: Registry) -> str:
    """The registry to export (defaults left out): PINs only marked as set, no PIN or hash."""
    data = registry.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    for unit in data["units"]:
        for household in unit["households"]:
            for key in _PIN_KEYS:
                given = [household.pop(k, None) for k in (key, f"{key}_hash", f"{key}_set")]
                if any(given):
                    household[f"{key}_set"] = True
    return _dump(data)


def registry_file_yaml(registry: Registry) -> str:
    """The registry as the hub stores it for itself: PINs as their hashes, never in clear."""
    data = registry.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    for unit in data["units"]:
        for household in unit["households"]:
            if any(household.get(k) for k in _PIN_KEYS):
                raise ValueError("the registry holds a PIN in clear: seal its PINs first")
    return _dump(data)


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def households_csv(registry: Registry) -> str:
    """One row per household; phones separated by spaces; `set` where a PIN is set."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for unit in registry.units:
        for h in unit.households:
            writer.writerow(
                [
                    unit.id,
                    h.id,
                    h.address,
                    h.panel,
                    " ".join(h.phones),
                    PIN_SET if h.has_pin else "",
                    PIN_SET if h.has_duress_pin else "",
                ]
            )
    return out.getvalue()


def merge_households_csv(
    registry: Registry, text: str, file: str = "households.csv"
) -> tuple[Registry | None, list[Problem]]:
    """The registry with the households of every unit named in the CSV replaced by its rows.

    Units the CSV does not name keep their households. A PIN cell holds the new PIN, or
    `set` to keep the PIN the hub holds (see `hub.registry.pins.seal_pins`), or nothing for no
    PIN. An optional `language` column sets a household's language; without it, a household
    keeps the one it had. Problems name the CSV line.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))  # csv reads \r, \n, \r\n itself
    try:
        fieldnames, rows = reader.fieldnames or [], list(reader)
    except csv.Error as exc:  # a cell past the csv module's size limit, say
        line = reader.line_num + 1  # where the record after the last one read starts
        return None, [Problem(file, line, None, "", f"not readable as CSV: {exc}")]
    missing = [c for c in ("unit_id", "household_id", "address", "panel") if c not in fieldnames]
    if missing:
        return None, [
            Problem(
                file,
                1,
                1,
                "",
                f"missing columns: {', '.join(missing)} (expected {', '.join(CSV_COLUMNS)})",
            )
        ]
    data = registry.model_dump(mode="json", exclude_none=True)
    units = {u["id"]: u for u in data["units"]}
    rows_by_unit: dict[str, list[dict[str, Any]]] = {}
    languages = {
        (u["id"], h["id"]): h["language"]
        for u in data["units"]
        for h in u["households"]
        if h.get("language")
    }
    problems: list[Problem] = []
    for line, row in enumerate(rows, start=2):
        unit_id = (row.get("unit_id") or "").strip()
        if unit_id not in units:
            problems.append(
                Problem(file, line, 1, "unit_id", f"no unit {unit_id!r} in the registry")
            )
            continue
        household: dict[str, Any] = {
            "id": (row.get("household_id") or "").strip(),
            "address": (row.get("address") or "").strip(),
            "panel": (row.get("panel") or "").strip(),
            "phones": (row.get("phones") or "").split(),
        }
        # A household's language: the CSV's optional column, else the one it had.
        language = (row.get("language") or "").strip() or languages.get((unit_id, household["id"]))
        if language:
            household["language"] = language
        for key in _PIN_KEYS:
            cell = (row.get(key) or "").strip()
            if cell.lower() == PIN_SET:
                household[f"{key}_set"] = True
            elif cell:
                household[key] = cell
        rows_by_unit.setdefault(unit_id, []).append({"line": line, "household": household})
    for unit_id, rows in rows_by_unit.items():
        # The CSV has no column for a DC-09 link: a household keeps the one it had.
        links = {h["id"]: h["dc09"] for h in units[unit_id]["households"] if h.get("dc09")}
        for r in rows:
            if r["household"]["id"] in links:
                r["household"]["dc09"] = links[r["household"]["id"]]
        units[unit_id]["households"] = [r["household"] for r in rows]
    if problems:
        return None, problems
    merged, found = parse_registry(yaml.safe_dump(data, sort_keys=False), file)
    # Positions in the merged document mean nothing to the CSV's author: keep the words.
    return merged, [Problem(file, None, None, p.path, p.message, p.severity) for p in found]


def write_atomically(path: Path, text: str) -> None:
    """Replace the file with `text` so that a crash leaves the old or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
