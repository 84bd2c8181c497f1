"""The live stream of the dashboards: alarm and panel changes as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from hub.accounts.account_store import User
from hub.events import EventBus
from hub.web.auth import current_user
from hub.web.contract import document, refusals
from hub.web.services import EventBusDep

router = APIRouter(prefix="/api", tags=["live events"], responses=refusals(401))
KEEPALIVE_S = 15.0


@router.get(
    "/events",
    response_class=Response,
    responses=document("text/event-stream", {"type": "string"}),
    summary="Server-Sent Events: `alarm` and `panel` changes of your zones",
)
async def events(request: Request, user: Annotated[User, Depends(current_user)], bus: EventBusDep):
    return StreamingResponse(
        _stream(bus, user, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(bus: EventBus, user: User, request: Request) -> AsyncIterator[str]:
    with bus.subscribe() as queue:
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            event = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE_S):
                    event = await queue.get()
                    if event is None:
                        return  # too slow and dropped: the browser reconnects
            if event is None:
                yield ": keepalive\n\n"
                continue
            zone = event.get("zone")
            if zone is not None and not user.sees_zone(zone):
                continue
            kind = event.get("type", "alarm")
            data = {k: v for k, v in event.items() if k != "type"}
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
