"""Registries of any size for load tests: valid YAML, no warnings, the same for the same seed."""

from __future__ import annotations

import math
import random

HOUSEHOLDS_PER_UNIT = 10
UNITS_PER_ZONE = 20
MAX_UNITS = 99_999  # households' phone numbers stay below the responders' block
# Units are spread in this box (lat, lon), zone by zone, around Wuhan's centre.
_LAT_MIN, _LAT_MAX = 30.45, 30.65
_LON_MIN, _LON_MAX = 114.15, 114.45
_STAFF_PHONES = 9_000_000


def _phone(n: int) -> str:
    # +1 555 and seven digits: a fictional NANP range, unique per number n.
    return f'"+1555{n:07d}"'


def default_zones(units: int) -> int:
    """Zones a registry of this many units gets by default: one per 20 units."""
    return math.ceil(units / UNITS_PER_ZONE)


def make_registry(
    units: int,
    *,
    zones: int | None = None,
    seed: int = 0,
    box: tuple[float, float, float, float] = (_LAT_MIN, _LAT_MAX, _LON_MIN, _LON_MAX),
) -> str:
    """Registry YAML with units of ten households, ~20 units a zone, each zone patrolled;
    units lie in `box` (lat_min, lat_max, lon_min, lon_max), zone by zone."""
    if not 1 <= units <= MAX_UNITS:
        raise ValueError(f"units must be between 1 and {MAX_UNITS}, not {units}")
    zones = zones if zones is not None else default_zones(units)
    if not 1 <= zones <= units:
        raise ValueError(f"zones must be between 1 and the number of units ({units}), not {zones}")
    rng = random.Random(seed)
    zone_ids = [f"z-{z:04d}" for z in range(1, zones + 1)]
    # Zone centres on a grid over the box; a zone's units lie close to its centre.
    columns = math.ceil(math.sqrt(zones))
    rows = math.ceil(zones / columns)
    lat_min, lat_max, lon_min, lon_max = box
    cell_lat = (lat_max - lat_min) / rows
    cell_lon = (lon_max - lon_min) / columns
    lines = [
        f"# Generated registry: {units} units, {zones} zones, seed {seed}.",
        "units:",
    ]
    for u in range(1, units + 1):
        z = (u - 1) * zones // units
        unit_id = f"u-{u:06d}"
        row, column = divmod(z, columns)
        lat = lat_min + (row + rng.random()) * cell_lat
        lon = lon_min + (column + rng.random()) * cell_lon
        key = rng.randrange(1, HOUSEHOLDS_PER_UNIT + 1)
        lines += [
            f"  - id: {unit_id}",
            f'    name: "Zone {z + 1}, Building {u}"',
            f"    zone: {zone_ids[z]}",
            f"    location: {{lat: {lat:.5f}, lon: {lon:.5f}}}",
            f"    key_households: [{unit_id}/h-{key:02d}]",
            "    households:",
        ]
        for h in range(1, HOUSEHOLDS_PER_UNIT + 1):
            pin = rng.randrange(10_000)
            duress = (pin + rng.randrange(1, 10_000)) % 10_000  # never equal to pin
            lines.append(
                f'      - {{id: h-{h:02d}, address: "{(h + 1) // 2}0{2 - h % 2}",'
                f" panel: p-{u:06d}-{h:02d}, phones: [{_phone((u - 1) * 10 + h)}],"
                f' pin: "{pin:04d}", duress_pin: "{duress:04d}"}}'
            )
    staff = _STAFF_PHONES
    lines.append("patrols:")
    for z, zone in enumerate(zone_ids, start=1):
        lines += [
            f"  - id: t-{zone[2:]}-1",
            f"    zone: {zone}",
            "    members:",
            f'      - {{name: "Patrol {z} A", phone: {_phone(staff + 1)}}}',
            f'      - {{name: "Patrol {z} B", phone: {_phone(staff + 2)}}}',
        ]
        staff += 2
    lines.append("police_desks:")
    for zone in zone_ids:
        staff += 1
        lines.append(f"  - {{id: d-{zone[2:]}, zones: [{zone}], phone: {_phone(staff)}}}")
    lines += ["command:", f"  - {{id: c-district, phone: {_phone(staff + 1)}}}", ""]
    return "\n".join(lines)
