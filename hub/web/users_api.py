"""Accounts of the dashboard, for admins: list, add, disable."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from hub.accounts.account_store import AccountError, User
from hub.passwords import hash_password
from hub.web.auth import csrf_protect, require_role
from hub.web.contract import refusals
from hub.web.registry_api import check_zone
from hub.web.services import AccountStoreDep, ClockDep, RegistryDep

router = APIRouter(prefix="/api/users", tags=["users"], responses=refusals(401, 403))
Admin = Annotated[User, Depends(require_role("admin"))]


class NewUser(BaseModel):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=10, max_length=200)]
    role: Literal["admin", "police", "patrol"]
    zones: list[str] = []
    phone: str | None = None


def _public(user: User) -> dict[str, Any]:
    return {k: v for k, v in asdict(user).items() if k != "id"}


@router.get("", summary="Every account")
async def list_users(admin: Admin, accounts: AccountStoreDep) -> list[dict[str, Any]]:
    return [_public(u) for u in await accounts.list_users()]


@router.post(
    "",
    status_code=201,
    dependencies=[Depends(csrf_protect)],
    summary="Add an account",
    responses=refusals(400),
)
async def add_user(
    admin: Admin,
    accounts: AccountStoreDep,
    registry: RegistryDep,
    clock: ClockDep,
    body: NewUser,
) -> dict[str, Any]:
    for zone in body.zones:
        check_zone(registry, zone)
    try:
        password_hash = await asyncio.to_thread(hash_password, body.password)
        user = await accounts.add_user(
            body.username,
            password_hash,
            body.role,
            tuple(body.zones),
            body.phone or None,
            clock.now_ms(),
        )
    except (AccountError, ValueError) as exc:
        raise HTTPException(400, str(exc)) from None
    return _public(user)


@router.post(
    "/{username}/disable",
    dependencies=[Depends(csrf_protect)],
    responses=refusals(400, 404),
    summary="Lock an account out; its sessions and tokens stop working",
)
async def disable_user(admin: Admin, accounts: AccountStoreDep, username: str) -> dict[str, str]:
    if username.lower() == admin.username.lower():
        raise HTTPException(400, "you cannot disable your own account")
    try:
        await accounts.set_disabled(username, True)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    return {"detail": f"{username} disabled"}
