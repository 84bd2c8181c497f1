"""The acknowledge link of a push notification: one tap (or the notification's action)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from hub.alarms.work import Responder
from hub.web.alarm_views import describe
from hub.web.services import AlarmActionsDep, AlarmStoreDep, ContactStoreDep, RegistryDep

router = APIRouter(tags=["acknowledge links"])


class AckAnswer(BaseModel):
    """The answer to `Accept: application/json`: whether the alarm is taken now."""

    ok: bool
    alarm_id: str | None = None
    error: str | None = None


# A page, or with `Accept: application/json` an AckAnswer.
_HTML = {"text/html": {"schema": {"type": "string"}}}

_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>tenhub alarm</title>
<style>body{{font:18px system-ui;margin:2em}}button{{font-size:1.4em;padding:.6em 1.4em}}</style>
</head><body><h1>{title}</h1><p>{text}</p>{form}</body></html>"""


@router.get(
    "/ack/{token}",
    summary="The page an acknowledge link opens",
    response_class=HTMLResponse,
    responses={404: {"description": "No such link", "content": _HTML}},
)
async def ack_page(
    token: str, contacts: ContactStoreDep, alarms: AlarmStoreDep, registry: RegistryDep
) -> Response:
    target = await contacts.by_token(token)
    if target is None:
        return HTMLResponse(_PAGE.format(title="Unknown link", text="", form=""), 404)
    where = escape(await describe(alarms, registry, target.alarm_id))
    if target.alarm_state in ("resolved", "cancelled"):
        text = f"The alarm at {where} is already {target.alarm_state}."
        return HTMLResponse(_PAGE.format(title="Alarm over", text=text, form=""))
    form = f'<form method="post" action="/ack/{escape(token)}"><button>I am coming</button></form>'
    return HTMLResponse(_PAGE.format(title="Alarm", text=f"Alarm at {where}.", form=form))


@router.post(
    "/ack/{token}",
    summary="Acknowledge the alarm this link was sent about",
    response_class=Response,  # so that the AckAnswers are declared as JSON
    responses={
        200: {"model": AckAnswer, "content": _HTML},
        404: {"model": AckAnswer, "content": _HTML, "description": "No such link"},
        409: {"model": AckAnswer, "description": "The alarm is over (JSON only; a page says so)"},
    },
)
async def ack(
    request: Request,
    token: str,
    contacts: ContactStoreDep,
    actions: AlarmActionsDep,
    alarms: AlarmStoreDep,
    registry: RegistryDep,
) -> Response:
    target = await contacts.by_token(token)
    wants_json = "application/json" in request.headers.get("accept", "")
    if target is None:
        body = {"ok": False, "error": "unknown link"}
        return JSONResponse(body, 404) if wants_json else HTMLResponse("Unknown link", 404)
    result = await actions.acknowledge(
        target.alarm_id, Responder(f"phone:{target.phone}", target.role), "push"
    )
    where = escape(await describe(alarms, registry, target.alarm_id))
    if wants_json:
        return JSONResponse(
            {"ok": result.ok, "alarm_id": target.alarm_id, "error": result.error},
            200 if result.ok else 409,
        )
    text = "Thank you: the others know you are coming." if result.ok else "The alarm is over."
    return HTMLResponse(_PAGE.format(title=f"Alarm at {where}", text=text, form=""))
