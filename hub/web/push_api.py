"""Web Push subscriptions of the logged-in user's browsers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field

from hub.accounts.account_store import User
from hub.web.auth import csrf_protect, current_user
from hub.web.contract import refusals
from hub.web.services import ChannelsDep, ClockDep, ContactStoreDep

router = APIRouter(prefix="/api/push", tags=["push"], responses=refusals(401))
CurrentUser = Annotated[User, Depends(current_user)]


class Keys(BaseModel):
    p256dh: Annotated[str, Field(min_length=20, max_length=200)]
    auth: Annotated[str, Field(min_length=8, max_length=100)]


class Subscription(BaseModel):
    """What `PushSubscription.toJSON()` gives in a browser."""

    endpoint: Annotated[str, Field(pattern=r"^https?://", max_length=2000)]
    keys: Keys


class Endpoint(BaseModel):
    endpoint: str


@router.get(
    "/key", summary="The hub's VAPID public key, for pushManager.subscribe", responses=refusals(503)
)
async def key(user: CurrentUser, channels: ChannelsDep) -> dict[str, str]:
    channel = channels.get("push")
    if channel is None:
        raise HTTPException(503, "push is not ready yet")
    return {"public_key": channel.public_key}  # type: ignore[attr-defined]


# 422 also for an account with no phone number to send the pushes of.
@router.post(
    "/subscriptions",
    status_code=201,
    dependencies=[Depends(csrf_protect)],
    responses=refusals(400, 403, 422),
    summary="Receive alarms as pushes in this browser",
)
async def subscribe(
    user: CurrentUser, contacts: ContactStoreDep, clock: ClockDep, body: Subscription
) -> dict[str, str]:
    if not user.phone:
        raise HTTPException(
            422, "your account has no phone number; an admin links it to a responder first"
        )
    sub_id = await contacts.add_subscription(
        user.phone, body.endpoint, body.keys.p256dh, body.keys.auth, clock.now_ms()
    )
    return {"id": sub_id}


@router.delete(
    "/subscriptions",
    status_code=204,
    dependencies=[Depends(csrf_protect)],
    responses=refusals(400, 403),
    summary="Stop pushes to this browser",
)
async def unsubscribe(user: CurrentUser, contacts: ContactStoreDep, body: Endpoint) -> Response:
    await contacts.forget_endpoint(user.phone or "", body.endpoint)
    return Response(status_code=204)
