"""Alarms over HTTP: list with filters, one alarm whole, and the actions responders take.

A user sees and changes only alarms of its zones; any other alarm is answered 404, as if
it did not exist. Every action is on the alarm's timeline with the user's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from hub.account_store import User
from hub.alarm_service import ActionResult
from hub.alarm_store import Alarm
from hub.web.alarm_views import OPEN_STATES, detail, summaries, urgency_key
from hub.web.auth import csrf_protect, current_user
from hub.web.contract import EpochMs, Limit, refusals
from hub.work import Responder

if TYPE_CHECKING:
    from hub.app import Hub

router = APIRouter(prefix="/api", tags=["alarms"], responses=refusals(401))
CurrentUser = Annotated[User, Depends(current_user)]
StateFilter = Literal["open", "raised", "acknowledged", "on_scene", "resolved", "cancelled"]

# As whom a dashboard user acts on the ladder: the admin sits at a desk.
_ROLE_ON_LADDER = {"admin": "police", "police": "police", "patrol": "patrol"}


def _hub(request: Request) -> Hub:
    return request.app.state.hub


def visible_units(hub: Hub, user: User, zone: str | None = None) -> list[str]:
    """Ids of the units the user may see (in `zone`, when given)."""
    return [
        u.id
        for u in hub.registry.units
        if user.sees_zone(u.zone) and (zone is None or u.zone == zone)
    ]


async def visible_alarm(hub: Hub, user: User, alarm_id: str) -> Alarm:
    """The alarm if the user may see it; 404 otherwise, never saying that it exists."""
    alarm = await hub.alarms.get(alarm_id)
    unit = hub.registry.unit(alarm.unit_id) if alarm else None
    if alarm is None or not user.sees_zone(unit.zone if unit else ""):
        raise HTTPException(404, f"no alarm {alarm_id!r}")
    return alarm


def responder(user: User) -> Responder:
    return Responder(f"user:{user.username}", _ROLE_ON_LADDER[user.role])


@router.get("/alarms", summary="Alarms of your zones, with filters")
async def list_alarms(
    request: Request,
    user: CurrentUser,
    state: StateFilter | None = None,
    zone: str | None = None,
    unit: str | None = None,
    kind: str | None = None,
    since: Annotated[EpochMs | None, Query(description="raised at or after (epoch ms)")] = None,
    until: Annotated[EpochMs | None, Query(description="raised before (epoch ms)")] = None,
    limit: Annotated[Limit, Query(description="at most this many")] = 200,
) -> list[dict[str, Any]]:
    """`state=open` lists what still needs someone, most urgent first; else newest first."""
    hub = _hub(request)
    units = visible_units(hub, user, zone)
    if unit is not None:
        units = [u for u in units if u == unit]
    if not units:
        return []
    states = OPEN_STATES if state == "open" else (state,) if state else None
    alarms = await hub.alarms.search(
        states=states, unit_ids=units, kind=kind, since=since, until=until, limit=limit
    )
    found = await summaries(hub, alarms)
    if state == "open":
        found.sort(key=urgency_key)
    return found


@router.get(
    "/alarms/{alarm_id}",
    summary="One alarm: timeline, ladder steps, notifications",
    responses=refusals(404),
)
async def get_alarm(request: Request, user: CurrentUser, alarm_id: str) -> dict[str, Any]:
    hub = _hub(request)
    return await detail(hub, await visible_alarm(hub, user, alarm_id))


class Note(BaseModel):
    note: Annotated[str, Field(min_length=1, max_length=2000)]


class OptionalNote(BaseModel):
    note: Annotated[str, Field(max_length=2000)] = ""


# An action: 403 for a session's missing CSRF token, 404 outside the user's zones, 409
# when the alarm's state does not allow it; with a note, 400 for a body that is not JSON.
_ACTION_REFUSALS = refusals(403, 404, 409)
_NOTED_ACTION_REFUSALS = refusals(400, 403, 404, 409)


async def _answer(hub: Hub, result: ActionResult) -> dict[str, Any]:
    if not result.ok or result.alarm is None:
        raise HTTPException(409, (result.error or "refused").split(": ", 1)[-1])
    return await detail(hub, result.alarm)


@router.post(
    "/alarms/{alarm_id}/acknowledge",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="Take the alarm: someone is coming",
)
async def acknowledge(request: Request, user: CurrentUser, alarm_id: str) -> dict[str, Any]:
    hub = _hub(request)
    await visible_alarm(hub, user, alarm_id)
    return await _answer(hub, await hub.actions.acknowledge(alarm_id, responder(user), "web"))


@router.post(
    "/alarms/{alarm_id}/on_scene",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="A responder is there",
)
async def on_scene(request: Request, user: CurrentUser, alarm_id: str) -> dict[str, Any]:
    hub = _hub(request)
    await visible_alarm(hub, user, alarm_id)
    return await _answer(hub, await hub.actions.on_scene(alarm_id, responder(user), "web"))


@router.post(
    "/alarms/{alarm_id}/resolve",
    dependencies=[Depends(csrf_protect)],
    responses=_NOTED_ACTION_REFUSALS,
    summary="The alarm is over; say how",
)
async def resolve(request: Request, user: CurrentUser, alarm_id: str, body: Note) -> dict[str, Any]:
    hub = _hub(request)
    await visible_alarm(hub, user, alarm_id)
    return await _answer(
        hub, await hub.actions.resolve(alarm_id, responder(user), "web", body.note)
    )


@router.post(
    "/alarms/{alarm_id}/false_alarm",
    dependencies=[Depends(csrf_protect)],
    responses=_NOTED_ACTION_REFUSALS,
    summary="The alarm was false: resolve it as such",
)
async def false_alarm(
    request: Request, user: CurrentUser, alarm_id: str, body: OptionalNote | None = None
) -> dict[str, Any]:
    hub = _hub(request)
    await visible_alarm(hub, user, alarm_id)
    note = (body.note if body else "") or "false alarm"
    return await _answer(
        hub,
        await hub.actions.resolve(alarm_id, responder(user), "web", note, "false_alarm"),
    )


@router.post(
    "/alarms/{alarm_id}/escalate",
    dependencies=[Depends(csrf_protect)],
    responses=_ACTION_REFUSALS,
    summary="Fire the next escalation step now",
)
async def escalate(request: Request, user: CurrentUser, alarm_id: str) -> dict[str, Any]:
    hub = _hub(request)
    await visible_alarm(hub, user, alarm_id)
    return await _answer(hub, await hub.actions.escalate_now(alarm_id, responder(user), "web"))


@router.get(
    "/rejected", summary="The latest refused panel messages, newest first", responses=refusals(403)
)
async def rejected(
    request: Request, user: CurrentUser, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[dict[str, Any]]:
    if not user.is_admin:
        raise HTTPException(403, "this needs the role admin")
    return _hub(request).rejects.recent(limit)
