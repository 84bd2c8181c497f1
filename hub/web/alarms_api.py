"""Alarms over HTTP: list with filters, one alarm whole, and the actions responders take.

A user sees and changes only alarms of its zones; any other alarm is answered 404, as if
it did not exist. Every action is on the alarm's timeline with the user's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from hub.accounts.account_store import User
from hub.alarms.alarm_service import ActionResult, AlarmService
from hub.alarms.alarm_store import Alarm, AlarmStore
from hub.alarms.outbox_store import OutboxStore
from hub.alarms.work import Responder
from hub.registry.model import Registry
from hub.web.alarm_views import OPEN_STATES, detail, summaries, urgency_key
from hub.web.auth import csrf_protect, current_user
from hub.web.contract import EpochMs, Limit, refusals
from hub.web.services import (
    AlarmActionsDep,
    AlarmStoreDep,
    OutboxStoreDep,
    RegistryDep,
    RejectsDep,
)

router = APIRouter(prefix="/api", tags=["alarms"], responses=refusals(401))
CurrentUser = Annotated[User, Depends(current_user)]
StateFilter = Literal["open", "raised", "acknowledged", "on_scene", "resolved", "cancelled"]

# As whom a dashboard user acts on the ladder: the admin sits at a desk.
_ROLE_ON_LADDER = {"admin": "police", "police": "police", "patrol": "patrol"}


def visible_units(registry: Registry, user: User, zone: str | None = None) -> list[str]:
    """Ids of the units the user may see (in `zone`, when given)."""
    return [
        u.id for u in registry.units if user.sees_zone(u.zone) and (zone is None or u.zone == zone)
    ]


async def visible_alarm(store: AlarmStore, registry: Registry, user: User, alarm_id: str) -> Alarm:
    """The alarm if the user may see it; 404 otherwise, never saying that it exists."""
    alarm = await store.get(alarm_id)
    unit = registry.unit(alarm.unit_id) if alarm else None
    if alarm is None or not user.sees_zone(unit.zone if unit else ""):
        raise HTTPException(404, f"no alarm {alarm_id!r}")
    return alarm


def responder(user: User) -> Responder:
    return Responder(f"user:{user.username}", _ROLE_ON_LADDER[user.role])


@router.get("/alarms", summary="Alarms of your zones, with filters")
async def list_alarms(
    user: CurrentUser,
    store: AlarmStoreDep,
    registry: RegistryDep,
    state: StateFilter | None = None,
    zone: str | None = None,
    unit: str | None = None,
    kind: str | None = None,
    since: Annotated[EpochMs | None, Query(description="raised at or after (epoch ms)")] = None,
    until: Annotated[EpochMs | None, Query(description="raised before (epoch ms)")] = None,
    limit: Annotated[Limit, Query(description="at most this many")] = 200,
) -> list[dict[str, Any]]:
    """`state=open` lists what still needs someone, most urgent first; else newest first."""
    units = visible_units(registry, user, zone)
    if unit is not None:
        units = [u for u in units if u == unit]
    if not units:
        return []
    states = OPEN_STATES if state == "open" else (state,) if state else None
    alarms = await store.search(
        states=states, unit_ids=units, kind=kind, since=since, until=until, limit=limit
    )
    found = await summaries(store, registry, alarms)
    if state == "open":
        found.sort(key=urgency_key)
    return found


@router.get(
    "/alarms/{alarm_id}",
    summary="One alarm: timeline, ladder steps, notifications",
    responses=refusals(404),
)
async def get_alarm(
    user: CurrentUser,
    store: AlarmStoreDep,
    outbox: OutboxStoreDep,
    registry: RegistryDep,
    alarm_id: str,
) -> dict[str, Any]:
    alarm = await visible_alarm(store, registry, user, alarm_id)
    return await detail(store, outbox, registry, alarm)


class Note(BaseModel):
    note: Annotated[str, Field(min_length=1, max_length=2000)]


class OptionalNote(BaseModel):
    note: Annotated[str, Field(max_length=2000)] = ""


# An action: 403 for a session's missing CSRF token, 404 outside the user's zones, 409
# when the alarm's state does not allow it; with a note, 400 for a body that is not JSON.
_ACTION_REFUSALS = refusals(403, 404, 409)
_NOTED_ACTION_REFUSALS = refusals(400, 403, 404, 409)


@dataclass(frozen=True)
class _Acting:
    """What an action on an alarm uses: the alarm (in the user's zones), the action, the answer."""

    store: AlarmStore
    outbox: OutboxStore
    registry: Registry
    actions: AlarmService

    async def check(self, user: User, alarm_id: str) -> None:
        """404 unless the user may see the alarm."""
        await visible_alarm(self.store, self.registry, user, alarm_id)

    async def answer(self, result: ActionResult) -> dict[str, Any]:
        """The alarm whole after the action; 409 when its state did not allow it."""
        if not result.ok or result.alarm is None:
            raise HTTPException(409, (result.error or "refused").split(": ", 1)[-1])
        return await detail(self.store, self.outbox, self.registry, result.alarm)


async def _acting(
    store: AlarmStoreDep, outbox: OutboxStoreDep, registry: RegistryDep, actions: AlarmActionsDep
) -> _Acting:
    return _Acting(store, outbox, registry, actions)


Acting = Annotated[_Acting, Depends(_acting)]


@router.post(
    "/alarms/{alarm_id}/acknowledge",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="Take the alarm: someone is coming",
)
async def acknowledge(user: CurrentUser, acting: Acting, alarm_id: str) -> dict[str, Any]:
    await acting.check(user, alarm_id)
    return await acting.answer(await acting.actions.acknowledge(alarm_id, responder(user), "web"))


@router.post(
    "/alarms/{alarm_id}/on_scene",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="A responder is there",
)
async def on_scene(user: CurrentUser, acting: Acting, alarm_id: str) -> dict[str, Any]:
    await acting.check(user, alarm_id)
    return await acting.answer(await acting.actions.on_scene(alarm_id, responder(user), "web"))


@router.post(
    "/alarms/{alarm_id}/resolve",
    dependencies=[Depends(csrf_protect)],
    responses=_NOTED_ACTION_REFUSALS,
    summary="The alarm is over; say how",
)
async def resolve(user: CurrentUser, acting: Acting, alarm_id: str, body: Note) -> dict[str, Any]:
    await acting.check(user, alarm_id)
    return await acting.answer(
        await acting.actions.resolve(alarm_id, responder(user), "web", body.note)
    )


@router.post(
    "/alarms/{alarm_id}/false_alarm",
    dependencies=[Depends(csrf_protect)],
    responses=_NOTED_ACTION_REFUSALS,
    summary="The alarm was false: resolve it as such",
)
async def false_alarm(
    user: CurrentUser, acting: Acting, alarm_id: str, body: OptionalNote | None = None
) -> dict[str, Any]:
    await acting.check(user, alarm_id)
    note = (body.note if body else "") or "false alarm"
    return await acting.answer(
        await acting.actions.resolve(alarm_id, responder(user), "web", note, "false_alarm")
    )


@router.post(
    "/alarms/{alarm_id}/escalate",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="Fire the next escalation step now",
)
async def escalate(user: CurrentUser, acting: Acting, alarm_id: str) -> dict[str, Any]:
    await acting.check(user, alarm_id)
    return await acting.answer(await acting.actions.escalate_now(alarm_id, responder(user), "web"))


@router.get(
    "/rejected", summary="The latest refused panel messages, newest first", responses=refusals(403)
)
async def rejected(
    user: CurrentUser, rejects: RejectsDep, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[dict[str, Any]]:
    if not user.is_admin:
        raise HTTPException(403, "this needs the role admin")
    return rejects.recent(limit)
