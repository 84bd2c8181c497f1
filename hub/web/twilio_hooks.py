"""Twilio's webhooks: inbound SMS replies, keypresses in calls, delivery status callbacks.

Every request must carry a valid `X-Twilio-Signature` for the URL Twilio called (the
configured public URL); anything else gets 403 and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from hub.alarms.alarm_store import AlarmStore
from hub.alarms.messages import kind_word, place_of
from hub.alarms.outbox_store import OutboxStore
from hub.alarms.recipients import alarm_notice
from hub.alarms.work import Responder
from hub.clock import Clock
from hub.i18n.catalogues import Translator, translator
from hub.registry.model import Registry
from hub.web.contract import PLAIN_TEXT, document
from hub.web.services import (
    AlarmActionsDep,
    AlarmStoreDep,
    ClockDep,
    ContactStoreDep,
    OutboxStoreDep,
    PublicUrlDep,
    RegistryDep,
    SettingsDep,
)

logger = logging.getLogger(__name__)
_UNSIGNED = {
    403: {
        "description": "No valid `X-Twilio-Signature`: nothing was changed",
        "content": PLAIN_TEXT,
    }
}
router = APIRouter(
    prefix="/twilio", tags=["twilio webhooks"], include_in_schema=True, responses=_UNSIGNED
)

_CODE = re.compile(r"^\s*(?:(?:ack|收到|确认)\s*)?#?(\d{1,4})\s*[.。]?\s*$", re.IGNORECASE)
# A word that takes the latest alarm, in English or Chinese ("got it", "confirm", "OK").
_BARE_ACK = re.compile(r"^\s*(ack|ok|yes|coming|收到|确认|好|好的)\s*[.!。！]*\s*$", re.IGNORECASE)
TWIML = "application/xml"
_TWIML_ANSWER = document(TWIML, {"type": "string"})


def parse_reply(body: str) -> int | str | None:
    """A reply's meaning: a code (int), "latest" for a bare ACK, None when not understood."""
    if match := _CODE.match(body):
        return int(match.group(1))
    if _BARE_ACK.match(body):
        return "latest"
    return None


async def _signed_form(
    request: Request, auth_token: str | None, public_url: str
) -> dict[str, str] | None:
    """The form parameters when the request is really from Twilio, else None."""
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_form(await request.body())
    else:
        form = {k: str(v) for k, v in (await request.form()).items()}
    path, query = request.scope["path"], request.scope.get("query_string", b"")
    signature = request.headers.get("X-Twilio-Signature", "")
    signed = is_from_twilio(auth_token, public_url, path, query, signature, form)
    return form if signed else None


def parse_form(body: bytes) -> dict[str, str]:
    """An urlencoded body, as Twilio posts it (parsed here: the general form parser
    costs several times more, and status callbacks come hundreds a second under load)."""
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def is_from_twilio(
    token: str | None,
    public_url: str,
    path: str,
    query: bytes,
    signature: str,
    form: dict[str, str],
) -> bool:
    """Whether `X-Twilio-Signature` signs this request for the URL Twilio was given
    (`public_url` + `path`), with the account's auth `token`."""
    if not token or not signature:
        return False
    url = public_url + path
    if query:
        url += "?" + query.decode("latin-1")
    if hmac.compare_digest(signature_of(token, url, form), signature.encode("utf-8", "replace")):
        return True
    # Twilio may have signed the URL with or without its port: the library tries both.
    if not RequestValidator(token).validate(url, form, signature):
        logger.warning("webhook with a bad signature refused", extra={"path": path})
        return False
    return True


def signature_of(auth_token: str, url: str, form: dict[str, str]) -> bytes:
    """`X-Twilio-Signature` of a form POST to exactly `url`, as Twilio computes it.

    The library's validator parses the URL and computes it twice (with and without the
    port) for every request, and status callbacks come hundreds a second under load.
    This one is tried first; the library decides the rest.
    """
    data = url + "".join(name + value for name, value in sorted(form.items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest)


def _forbidden() -> Response:
    return Response("invalid or missing X-Twilio-Signature", status_code=403)


def _sms(text: str) -> Response:
    reply = MessagingResponse()
    reply.message(text)
    return Response(str(reply), media_type=TWIML)


@router.post(
    "/sms",
    summary="Inbound SMS: a responder's reply acknowledges an alarm",
    response_class=Response,
    responses=_TWIML_ANSWER,
)
async def inbound_sms(
    request: Request,
    settings: SettingsDep,
    public_url: PublicUrlDep,
    registry: RegistryDep,
    contacts: ContactStoreDep,
    actions: AlarmActionsDep,
    alarms: AlarmStoreDep,
) -> Response:
    form = await _signed_form(request, settings.twilio_auth_token, public_url)
    if form is None:
        return _forbidden()
    phone, body = form.get("From", ""), form.get("Body", "")
    t = translator(registry.language_of_phone(phone) or settings.language)
    if not registry.who_has_phone(phone):
        logger.info("SMS from an unknown number", extra={"phone": phone})
        return _sms(t.gettext("This number is not registered with tenhub; nothing was changed."))
    meaning = parse_reply(body)
    if meaning is None:
        return _sms(
            t.gettext(
                "Not understood. Reply with the number in the alarm message (for example 3),"
                " or ACK for the latest alarm."
            )
        )
    target = (
        await contacts.latest(phone)
        if meaning == "latest"
        else await contacts.by_code(phone, int(meaning))
    )
    if target is None:
        if meaning == "latest":
            return _sms(
                t.gettext(
                    "Nothing to acknowledge: no open alarm was sent to you. Nothing was changed."
                )
            )
        return _sms(
            t.gettext("Nothing to acknowledge: no alarm %(code)s. Nothing was changed.")
            % {"code": meaning}
        )
    result = await actions.acknowledge(
        target.alarm_id, Responder(f"phone:{phone}", target.role), "sms"
    )
    where = await _described(alarms, registry, target.alarm_id, t)
    if not result.ok:
        return _sms(
            t.gettext("The alarm at %(where)s is already over. Nothing was changed.")
            % {"where": where}
        )
    return _sms(t.gettext("Thank you: you acknowledged the alarm at %(where)s.") % {"where": where})


async def _described(store: AlarmStore, registry: Registry, alarm_id: str, t: Translator) -> str:
    """Where and what an alarm is, in the replier's language: `Block 3, 2-101 (FIRE)`."""
    alarm = await store.get(alarm_id)
    if alarm is None:
        return alarm_id
    where = place_of(alarm_notice(registry, alarm), t)
    return t.gettext("%(where)s (%(kind)s)") % {"where": where, "kind": kind_word(alarm.kind, t)}


@router.post(
    "/voice",
    summary="A keypress in an alarm call: 1 acknowledges",
    response_class=Response,
    responses=_TWIML_ANSWER,
)
async def voice_keypress(
    request: Request,
    settings: SettingsDep,
    public_url: PublicUrlDep,
    registry: RegistryDep,
    contacts: ContactStoreDep,
    actions: AlarmActionsDep,
) -> Response:
    form = await _signed_form(request, settings.twilio_auth_token, public_url)
    if form is None:
        return _forbidden()
    alarm_id = request.query_params.get("alarm_id", "")
    phone = form.get("Called") or form.get("To", "")
    t = translator(registry.language_of_phone(phone) or settings.language)
    reply = VoiceResponse()
    target = await contacts.by_phone_and_alarm(phone, alarm_id)
    if form.get("Digits") != "1" or target is None:
        reply.say(t.gettext("Nothing was acknowledged. Goodbye."), language=t.language)
        return Response(str(reply), media_type=TWIML)
    result = await actions.acknowledge(alarm_id, Responder(f"phone:{phone}", target.role), "voice")
    if result.ok:
        reply.say(t.gettext("Acknowledged. Thank you."), language=t.language)
    else:
        reply.say(t.gettext("This alarm is already over."), language=t.language)
    return Response(str(reply), media_type=TWIML)


# A status callback is a few hundred bytes; a body past this is refused unread.
MAX_STATUS_BODY = 64 * 1024
FORM = "application/x-www-form-urlencoded"


@router.post(
    "/status",
    summary="Delivery status of an SMS or a call",
    status_code=204,
    response_class=Response,
    responses={
        413: {"description": "A body past 64 KiB", "content": PLAIN_TEXT},
        415: {"description": "A body that is not form-encoded", "content": PLAIN_TEXT},
    },
)
async def status_callback(
    request: Request,
    settings: SettingsDep,
    public_url: PublicUrlDep,
    outbox: OutboxStoreDep,
    clock: ClockDep,
) -> Response:
    if not request.headers.get("content-type", "").startswith(FORM):
        return PlainTextResponse("status callbacks are form-encoded", status_code=415)
    body = await _body_within(request, MAX_STATUS_BODY)
    if body is None:
        return PlainTextResponse("request body too large", status_code=413)
    form = parse_form(body)
    query = request.scope.get("query_string", b"")
    signature = request.headers.get("X-Twilio-Signature", "")
    path = request.scope["path"]
    if not is_from_twilio(settings.twilio_auth_token, public_url, path, query, signature, form):
        return _forbidden()
    try:
        await record_status(outbox, clock, form)
    except Exception:
        # Twilio is told it failed; the report is lost, the message itself is not.
        logger.exception("status callback not recorded")
        return PlainTextResponse("not recorded", status_code=500)
    return Response(status_code=204)


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The request's body; None when it is (or says it is) longer than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def record_status(outbox: OutboxStore, clock: Clock, form: dict[str, str]) -> None:
    """Record the delivery word of a signed status callback (never moving backwards)."""
    sid = form.get("MessageSid") or form.get("CallSid") or ""
    status = form.get("MessageStatus") or form.get("CallStatus") or ""
    await outbox.record_delivery(sid, status, clock.now_ms(), form.get("ErrorCode") or None)
