"""The server-rendered pages (desk, alarm, patrol, admin) and the patrol web app's files."""

from __future__ import annotations

import json
import math
import struct
import zlib
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from hub.accounts.account_store import User
from hub.settings import Settings
from hub.web.alarms_api import visible_alarm
from hub.web.auth import page_user
from hub.web.services import AlarmStoreDep, RegistryDep, SettingsDep

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)
PageUser = Annotated[User, Depends(page_user)]

HOME = {"police": "/desk", "admin": "/desk", "patrol": "/patrol"}
NAV = (
    ("/desk", "Desk", ("police", "admin")),
    ("/patrol", "Patrol", ("patrol", "admin")),
    ("/admin", "Admin", ("admin",)),
)
# Pages load nothing from elsewhere (but the map tiles the operator chose), and no inline
# script or style runs.
CSP = (
    "default-src 'self'; img-src 'self' data:{tiles}; style-src 'self'; script-src 'self';"
    " connect-src 'self'; worker-src 'self'; manifest-src 'self'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
ICON_SIZES = (192, 512)


def mount_static(app: FastAPI) -> None:
    """Serve the pages' CSS and JavaScript under /static."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _render(
    request: Request,
    settings: Settings,
    user: User,
    template: str,
    status: int = 200,
    **context: Any,
) -> Response:
    nav = [
        {"href": href, "label": label, "current": request.url.path == href}
        for href, label, roles in NAV
        if user.role in roles
    ]
    response = templates.TemplateResponse(
        request,
        template,
        {"user": user, "csrf": getattr(request.state, "csrf", None) or "", "nav": nav, **context},
        status_code=status,
    )
    tiles = settings.map_tile_origin
    response.headers["Content-Security-Policy"] = CSP.format(tiles=f" {tiles}" if tiles else "")
    response.headers["Cache-Control"] = "no-store"  # each page carries the session's CSRF token
    return response


def _forbidden(request: Request, settings: Settings, user: User) -> Response:
    return _render(
        request,
        settings,
        user,
        "error.html",
        403,
        title="Not for your role",
        message="This page is not open to your account.",
    )


def _page(
    request: Request, settings: Settings, user: User, template: str, roles: tuple[str, ...]
) -> Response:
    if user.role not in roles:
        return _forbidden(request, settings, user)
    return _render(request, settings, user, template)


@router.get("/")
async def home(user: PageUser) -> RedirectResponse:
    """Each role starts on its own page."""
    return RedirectResponse(HOME.get(user.role, "/desk"), status_code=303)


@router.get("/desk")
async def desk(request: Request, user: PageUser, settings: SettingsDep) -> Response:
    """The police desk: open alarms, countdowns, offline panels, the map of units."""
    if user.role not in ("police", "admin"):
        return _forbidden(request, settings, user)
    tiles = (
        {
            "url": settings.map_tile_url,
            "attribution": settings.map_tile_attribution,
            "max_zoom": settings.map_max_zoom,
        }
        if settings.map_tile_url
        else None
    )
    return _render(request, settings, user, "desk.html", tiles=tiles)


@router.get("/alarms/{alarm_id}")
async def alarm(
    request: Request,
    alarm_id: str,
    user: PageUser,
    settings: SettingsDep,
    alarms: AlarmStoreDep,
    registry: RegistryDep,
) -> Response:
    """One alarm: its story and the actions on it; 404 outside the user's zones."""
    if user.role not in ("police", "admin", "patrol"):
        return _forbidden(request, settings, user)
    try:
        await visible_alarm(alarms, registry, user, alarm_id)
    except HTTPException:
        return _render(
            request,
            settings,
            user,
            "error.html",
            404,
            title="No such alarm",
            message=f"There is no alarm {alarm_id} in your zones.",
        )
    return _render(request, settings, user, "alarm.html", alarm_id=alarm_id)


@router.get("/patrol")
async def patrol(request: Request, user: PageUser, settings: SettingsDep) -> Response:
    """The patrol's phone page: its zone's open alarms, big buttons."""
    return _page(request, settings, user, "patrol.html", ("patrol", "admin"))


@router.get("/admin")
async def admin(request: Request, user: PageUser, settings: SettingsDep) -> Response:
    """Registry import and export, and the accounts."""
    return _page(request, settings, user, "admin.html", ("admin",))


@router.get("/manifest.webmanifest")
async def manifest() -> Response:
    """The web app manifest that makes the patrol page installable."""
    body = {
        "name": "tenhub patrol",
        "short_name": "tenhub",
        "description": "Alarms of your zone: acknowledge, mark on scene.",
        "start_url": "/patrol",
        "scope": "/",
        "display": "standalone",
        "background_color": "#ffffff",
        "theme_color": "#b91c1c",
        "icons": [
            {
                "src": f"/icons/icon-{size}.png",
                "sizes": f"{size}x{size}",
                "type": "image/png",
                "purpose": "any maskable",
            }
            for size in ICON_SIZES
        ],
    }
    return Response(json.dumps(body), media_type="application/manifest+json")


@router.get("/sw.js")
async def service_worker() -> FileResponse:
    """The service worker, from the root so that its scope is the whole app."""
    return FileResponse(
        STATIC_DIR / "sw.js",
        media_type="text/javascript",
        headers={"Service-Worker-Allowed": "/", "Cache-Control": "no-cache"},
    )


@router.get("/favicon.ico")
async def favicon() -> Response:
    """The tab icon browsers ask for by themselves (the app icon, small)."""
    return Response(
        _icon_png(32), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/icons/icon-{size}.png")
async def icon(size: int) -> Response:
    """The app icon, drawn on first request."""
    if size not in ICON_SIZES:
        return Response(status_code=404)
    return Response(
        _icon_png(size),
        media_type="image/png",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@cache
def _icon_png(size: int) -> bytes:
    """A white ring and dot on alarm red, as a PNG, without an image library."""
    red, white = b"\xb9\x1c\x1c", b"\xff\xff\xff"
    centre = size / 2
    # The shapes keep inside the central 80 % so a maskable crop does not cut them.
    shapes = ((size * 0.30, white), (size * 0.21, red), (size * 0.09, white))
    rows = []
    for y in range(size):
        row = bytearray(red * size)
        dy = y + 0.5 - centre
        for radius, colour in shapes:
            if abs(dy) < radius:
                half = math.sqrt(radius * radius - dy * dy)
                x0, x1 = round(centre - half), round(centre + half)
                row[x0 * 3 : x1 * 3] = colour * (x1 - x0)
        rows.append(b"\x00" + bytes(row))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )
