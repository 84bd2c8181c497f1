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


@router.get("/alarms/{alarm_id}", summary="One alarm with its timeline")
async def get_alarm(request: Request, alarm_id: str) -> dict[str, Any]:
    store = request.app.state.hub.alarms
    alarm = await store.get(alarm_id)
    if alarm is None:
        raise HTTPException(404, f"no alarm {alarm_id!r}")
    timeline = await store.timeline(alarm_id)
    return {**asdict(alarm), "timeline": [asdict(e) for e in timeline]}


@router.get("/rejected", summary="The latest refused messages, newest first")
async def rejected(
    request: Request, limit: int = Query(100, ge=1, le=500)
) -> list[dict[str, Any]]:
    return request.app.state.hub.rejects.recent(limit)
