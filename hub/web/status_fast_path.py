"""Twilio's delivery status callbacks, answered in front of the web app.

They come four per alarm (two SMS, each reported sent and delivered): hundreds a second
under load, on the event loop that also answers panels. FastAPI's routing, middleware
and dependency solving cost more than the work itself, so this ASGI layer answers them
with the same checks and the same record (`twilio_hooks`); every other request goes to
the app unchanged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hub.web.twilio_hooks import STATUS_PATH, is_from_twilio, parse_form, record_status

if TYPE_CHECKING:
    from hub.app import Hub

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # a status callback is a few hundred bytes
Scope = dict[str, Any]


class StatusFastPath:
    """ASGI: POST /twilio/status handled here, everything else passed to `app`."""

    def __init__(self, app: Any, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not (
            scope["type"] == "http" and scope["path"] == STATUS_PATH
            and scope["method"] == "POST" and _urlencoded(scope)
        ):  # fmt: skip
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, b"request body too large")
            return
        form = parse_form(body)
        signature = _header(scope, b"x-twilio-signature")
        if not is_from_twilio(self.hub, scope["path"], scope["query_string"], signature, form):
            await _answer(send, 403, b"invalid or missing X-Twilio-Signature")
            return
        try:
            await record_status(self.hub, form)
        except Exception:
            # Twilio is told it failed; the report is lost, the message itself is not.
            logger.exception("status callback not recorded")
            await _answer(send, 500, b"not recorded")
            return
        await _answer(send, 204, b"")


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _urlencoded(scope: Scope) -> bool:
    return _header(scope, b"content-type").startswith("application/x-www-form-urlencoded")


async def _body(receive: Any) -> bytes | None:
    """The whole request body; None past MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""  # nobody to answer: read as unsigned, it changes nothing
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = []  # a 204 carries no body and no Content-Length
    if body:
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
