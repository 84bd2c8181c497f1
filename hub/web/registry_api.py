"""The registry over HTTP: units and panels (with online state) for everyone in their zones;
import and export (YAML, households CSV) for admins, checked like `tenhub check-config`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from hub.accounts.account_store import User
from hub.registry.model import Registry, parse_registry
from hub.registry.pins import seal_pins
from hub.registry.registry_io import (
    households_csv,
    merge_households_csv,
    registry_file_yaml,
    registry_yaml,
    write_atomically,
)
from hub.web.auth import csrf_protect, current_user, require_role
from hub.web.contract import ImportRefusal, document, raw_body, refusals
from hub.web.services import (
    AlarmStoreDep,
    LiveRegistry,
    LiveRegistryDep,
    PresenceDep,
    RegistryDep,
    SettingsDep,
)

router = APIRouter(prefix="/api", tags=["registry"], responses=refusals(401))
CurrentUser = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(require_role("admin"))]


@router.get("/units", summary="Units of your zones, with their open alarms")
async def units(
    user: CurrentUser, registry: RegistryDep, alarms: AlarmStoreDep
) -> list[dict[str, Any]]:
    mine = [u for u in registry.units if user.sees_zone(u.zone)]
    open_alarms = (
        await alarms.search(
            states=("raised", "acknowledged", "on_scene"), unit_ids=[u.id for u in mine], limit=1000
        )
        if mine
        else []
    )
    per_unit: dict[str, int] = {}
    for alarm in open_alarms:
        per_unit[alarm.unit_id] = per_unit.get(alarm.unit_id, 0) + 1
    return [
        {
            "id": u.id,
            "name": u.name,
            "zone": u.zone,
            "location": {"lat": u.location.lat, "lon": u.location.lon} if u.location else None,
            "households": len(u.households),
            "open_alarms": per_unit.get(u.id, 0),
        }
        for u in mine
    ]


@router.get("/households", summary="Households of your zones (PINs never leave the hub)")
async def households(user: CurrentUser, registry: RegistryDep) -> list[dict[str, Any]]:
    key_of: dict[tuple[str, str], list[str]] = {}
    for unit in registry.units:
        for owner, household in registry.key_households_of(unit.id):
            key_of.setdefault((owner.id, household.id), []).append(unit.id)
    return [
        {
            "unit_id": u.id,
            "household_id": h.id,
            "address": h.address,
            "panel": h.panel,
            "phones": list(h.phones),
            "zone": u.zone,
            "key_household_of": key_of.get((u.id, h.id), []),
        }
        for u in registry.units
        if user.sees_zone(u.zone)
        for h in u.households
    ]


@router.get("/patrols", summary="Patrols of your zones")
async def patrols(user: CurrentUser, registry: RegistryDep) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in registry.patrols if user.sees_zone(p.zone)]


@router.get("/desks", summary="Police desks covering your zones, and the command posts")
async def desks(user: CurrentUser, registry: RegistryDep) -> dict[str, list[dict[str, Any]]]:
    return {
        "police_desks": [
            d.model_dump(mode="json")
            for d in registry.police_desks
            if any(user.sees_zone(z) for z in d.zones)
        ],
        "command": [c.model_dump(mode="json") for c in registry.command],
    }


@router.get("/panels", summary="Panels of your zones with their online state and last seen")
async def panels(
    user: CurrentUser,
    registry: RegistryDep,
    presence: PresenceDep,
    state: Literal["online", "offline"] | None = None,
) -> list[dict[str, Any]]:
    """`state=offline` lists every panel not known to be online (offline or never heard)."""
    found = []
    for unit in registry.units:
        if not user.sees_zone(unit.zone):
            continue
        for h in unit.households:
            seen = presence.get(h.panel)
            panel_state = seen.state if seen else "unknown"
            if state == "online" and panel_state != "online":
                continue
            if state == "offline" and panel_state == "online":
                continue
            found.append(
                {
                    "panel_id": h.panel,
                    "unit_id": unit.id,
                    "household_id": h.id,
                    "address": h.address,
                    "zone": unit.zone,
                    "state": panel_state,
                    "last_seen": seen.last_seen if seen and seen.last_seen else None,
                    "battery": seen.battery if seen else None,
                }
            )
    return found


@router.get(
    "/registry",
    summary="The whole registry as YAML (PINs only marked as set)",
    response_class=Response,
    responses={**refusals(403), **document("application/yaml", {"type": "object"})},
)
async def export_registry(user: Admin, registry: RegistryDep) -> PlainTextResponse:
    return PlainTextResponse(registry_yaml(registry), media_type="application/yaml")


@router.get(
    "/registry/households.csv",
    summary="Every household as CSV (PINs only marked)",
    response_class=Response,
    responses={**refusals(403), **document("text/csv", {"type": "string"})},
)
async def export_households(user: Admin, registry: RegistryDep) -> PlainTextResponse:
    return PlainTextResponse(households_csv(registry), media_type="text/csv")


_IMPORT_REFUSALS = {
    **refusals(403),
    422: {"model": ImportRefusal, "description": "Refused: the registry was not changed"},
}


async def _install(
    live: LiveRegistry, saved_path: str | None, registry: Registry | None, problems: list
) -> JSONResponse:
    if registry is not None and not any(p.is_error for p in problems):
        # PINs marked as set keep the hub's; new ones are hashed (off the event loop).
        registry, sealing = await asyncio.to_thread(seal_pins, registry, live.current())
        problems = [*problems, *sealing]
    errors = [p for p in problems if p.is_error]
    if registry is None or errors:
        return JSONResponse(
            {"detail": "the registry was not changed", "problems": [p.format() for p in problems]},
            status_code=422,
        )
    saved_to = None
    if saved_path:
        saved_to = saved_path
        text = registry_file_yaml(registry)  # the hashes, so the PINs outlive a restart
        await asyncio.to_thread(write_atomically, Path(saved_to), text)
    live.replace(registry)
    return JSONResponse(
        {
            "detail": "registry replaced",
            "counts": registry.counts(),
            "saved_to": saved_to,
            "problems": [p.format() for p in problems],  # warnings
        }
    )


@router.put(
    "/registry",
    summary="Replace the registry with a YAML document",
    dependencies=[Depends(csrf_protect)],
    responses=_IMPORT_REFUSALS,
    openapi_extra=raw_body(
        "application/yaml", {"type": "object"}, "The registry, as `tenhub check-config` reads it"
    ),
)
async def import_registry(
    request: Request, user: Admin, live: LiveRegistryDep, settings: SettingsDep
) -> JSONResponse:
    text = (await request.body()).decode("utf-8", errors="replace")
    registry, problems = parse_registry(text, "registry.yaml")
    return await _install(live, settings.registry, registry, problems)


@router.put(
    "/registry/households.csv",
    summary="Replace the households of the units in a CSV",
    dependencies=[Depends(csrf_protect)],
    responses=_IMPORT_REFUSALS,
    openapi_extra=raw_body(
        "text/csv", {"type": "string"}, "Households with the columns of the export"
    ),
)
async def import_households(
    request: Request, user: Admin, live: LiveRegistryDep, settings: SettingsDep
) -> JSONResponse:
    text = (await request.body()).decode("utf-8-sig", errors="replace")
    registry, problems = merge_households_csv(live.current(), text)
    return await _install(live, settings.registry, registry, problems)


def check_zone(registry: Registry, zone: str) -> None:
    """400 unless the zone is one the registry knows."""
    if zone not in {u.zone for u in registry.units}:
        raise HTTPException(400, f"no zone {zone!r} in the registry")
