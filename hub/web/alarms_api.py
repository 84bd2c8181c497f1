"""Read-only JSON views of alarms and refused messages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

router = APIRouter(prefix="/api", tags=["alarms"])


@router.get("/alarms", summary="Recent alarms, newest first")
async def list_alarms(
    request: Request, limit: int = Query(100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    alarms = await request.app.state.hub.alarms.list_recent(limit)
    return [asdict(a) for a in alarms]


@router.get("/alarms/{alarm_id}", summary="One alarm: timeline, ladder steps, notifications")
async def get_alarm(request: Request, alarm_id: str) -> dict[str, Any]:
    hub = request.app.state.hub
    alarm = await hub.alarms.get(alarm_id)
    if alarm is None:
        raise HTTPException(404, f"no alarm {alarm_id!r}")
    body = asdict(alarm)
    body.pop("ladder")
    return {
        **body,
        "timeline": [asdict(e) for e in await hub.alarms.timeline(alarm_id)],
        "steps": [asdict(s) for s in await hub.alarms.steps(alarm_id)],
        "notifications": await hub.outbox.for_alarm(alarm_id),
    }


@router.get("/rejected", summary="The latest refused messages, newest first")
async def rejected(
    request: Request, limit: int = Query(100, ge=1, le=500)
) -> list[dict[str, Any]]:
    return request.app.state.hub.rejects.recent(limit)
