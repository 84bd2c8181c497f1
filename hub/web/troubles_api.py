"""Troubles over HTTP: panels offline, tampered, on battery — in the user's zones."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from hub.accounts.account_store import User
from hub.registry.model import Registry
from hub.web.auth import csrf_protect, current_user, require_role
from hub.web.contract import RowId, refusals
from hub.web.services import ClockDep, PanelStoreDep, RegistryDep

router = APIRouter(prefix="/api/troubles", tags=["troubles"], responses=refusals(401))
CurrentUser = Annotated[User, Depends(current_user)]


def _panels_of(registry: Registry, user: User) -> list[str]:
    return [h.panel for u in registry.units if user.sees_zone(u.zone) for h in u.households]


@router.get("", summary="Troubles of panels in your zones: open ones, or all with closed=true")
async def troubles(
    user: CurrentUser, panels: PanelStoreDep, registry: RegistryDep, closed: bool = False
) -> list[dict[str, Any]]:
    found = await panels.troubles(panel_ids=_panels_of(registry, user), open_only=not closed)
    answer = []
    for t in found:
        place = registry.panel_place(t.panel_id)
        answer.append(
            {
                **asdict(t),
                "unit_id": place.unit.id if place else None,
                "household_id": place.household.id if place else None,
                "address": place.household.address if place else None,
            }
        )
    return answer


@router.post(
    "/{trouble_id}/close",
    dependencies=[Depends(csrf_protect)],
    responses=refusals(403, 404, 409),
    summary="Close a trouble someone has dealt with (tamper, a fault)",
)
async def close(
    trouble_id: Annotated[RowId, Path(description="the trouble's number, as listed")],
    user: Annotated[User, Depends(require_role("admin", "police", "patrol"))],
    panels: PanelStoreDep,
    registry: RegistryDep,
    clock: ClockDep,
) -> dict[str, str]:
    trouble = await panels.get_trouble(trouble_id)
    if trouble is None or trouble.panel_id not in _panels_of(registry, user):
        raise HTTPException(404, f"no trouble {trouble_id}")
    if not await panels.close_trouble(trouble_id, clock.now_ms()):
        raise HTTPException(409, "the trouble is closed already")
    return {"detail": "closed"}
