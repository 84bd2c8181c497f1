"""The routes of the local Twilio gateway: Messages and Calls of the 2010-04-01 REST API.

Answers are shaped like Twilio's, so the official `twilio` client parses them, and errors
carry Twilio's codes, so it raises `TwilioRestException` with the same status and code.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect

from hub.i18n.segments import sms_length
from simulator.twilio_store import (
    GatewayStore,
    PlacedCall,
    Record,
    SentMessage,
    is_e164,
    new_sid,
)

API = "/2010-04-01/Accounts/{account_sid}"
ERROR_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}
ERROR_TEXTS = {
    401: "Authenticate",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Twilio's events a call's StatusCallbackEvent can ask for, by the status that raises them.
CALL_EVENTS = {"initiated": "initiated", "ringing": "ringing", "in-progress": "answered"}


class TwilioError(Exception):
    """An error answer in Twilio's JSON shape."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, status)
        self.message = message

    def response(self) -> JSONResponse:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if self.status == 401 else {}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class GatewayConfig:
    """Who the gateway is and how it behaves."""

    account_sid: str
    auth_token: str
    callback_delay_s: float = 0.1


Schedule = Callable[[float, Callable[[], None], str], None]  # (due, job, record SID)
Post = Callable[[str, dict[str, str]], None]
Hang = Callable[[float], Awaitable[None]]
Step = tuple[str, dict[str, str]]  # a status, and the callback's form (empty: no callback)


async def _twilio_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TwilioError)
    return exc.response()


async def _client_gone(_request: Request, _exc: Exception) -> PlainTextResponse:
    # The client hung up mid-request (a hub stopping with sends in flight): as at Twilio,
    # nothing is created, and nobody is left to read this answer.
    return PlainTextResponse("client disconnected before the request was complete", 400)


def create_gateway_app(
    config: GatewayConfig, store: GatewayStore, schedule: Schedule, post: Post, hang: Hang
) -> FastAPI:
    """The gateway's app.

    `schedule(due, job, sid)` runs a status step later (each record's in order),
    `post(url, params)` sends a signed callback, `hang(seconds)` keeps a client waiting
    (and ends early when the gateway stops).
    """
    app = FastAPI(title="Local Twilio gateway", docs_url=None, redoc_url=None)
    app.add_exception_handler(TwilioError, _twilio_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)

    def check_account(header: str, account_sid: str, path: str) -> None:
        """Raise Twilio's 401 unless the Basic credentials are the account's, 404 unless
        the path names that account."""
        user, _, password = _basic_credentials(header)
        valid_user = secrets.compare_digest(user.encode(), config.account_sid.encode())
        valid_password = secrets.compare_digest(password.encode(), config.auth_token.encode())
        if not (valid_user and valid_password):
            raise TwilioError(401, "Authenticate")
        if account_sid != config.account_sid:
            raise TwilioError(404, f"The requested resource {path} was not found")

    # A coroutine: FastAPI runs a plain function dependency on a worker thread, a thread
    # hop for every request.
    async def authorize(request: Request, account_sid: str) -> None:
        check_account(request.headers.get("authorization", ""), account_sid, request.url.path)

    api = APIRouter(prefix=API, dependencies=[Depends(authorize)])

    def progress(record: Record, steps: list[Step]) -> None:
        """Walk a record through its statuses, a step (and callback) each `callback_delay_s`."""
        start = time.monotonic()
        for i, (status, params) in enumerate(steps, start=1):
            schedule(start + i * config.callback_delay_s, _step(record, status, params), record.sid)

    def _step(record: Record, status: str, params: dict[str, str]) -> Callable[[], None]:
        def run() -> None:
            error = params.get("ErrorCode")
            store.set_status(record.sid, status, int(error) if error else None)
            if record.status_callback and params:
                post(record.status_callback, params)

        return run

    async def accept(record: Record, gone: Callable[[], Awaitable[bool]]) -> None:
        fault = store.take_fault()
        if fault is not None and fault.fail_status is not None:
            raise TwilioError(fault.fail_status, ERROR_TEXTS.get(fault.fail_status, "Error"))
        if fault is not None and fault.stall_s:
            await stall(fault.stall_s, gone)
        store.add(record)
        if isinstance(record, SentMessage):
            progress(record, _message_steps(record, store, config.account_sid))
        else:
            progress(record, _call_steps(record, store, config.account_sid))
        if fault is not None and fault.hang_s:
            # Stored, so the send happened; the client just never hears about it.
            await hang(fault.hang_s)

    async def stall(seconds: float, gone: Callable[[], Awaitable[bool]]) -> None:
        """Wait `seconds` before taking a request; ClientDisconnect if its client hangs up."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await gone():
                raise ClientDisconnect()
            await hang(min(0.05, deadline - time.monotonic()))

    @api.post("/Messages.json", status_code=201)
    async def create_message(request: Request, account_sid: str) -> dict:
        # Stamped before the body is read and checked: the bench times an SMS to here,
        # and what the gateway does after that is not the sender's time.
        arrived = time.monotonic()
        form = dict(await _form_pairs(request))
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            raise TwilioError(400, "A 'To' phone number is required.", 21604)
        if not is_e164(to):
            raise TwilioError(400, f"The 'To' number {to} is not a valid phone number.", 21211)
        if not from_:
            raise TwilioError(400, "A 'From' phone number is required.", 21603)
        if not body:
            raise TwilioError(400, "A text message body or media urls must be specified.", 21619)
        message = SentMessage(
            new_sid("SM"),
            to,
            from_,
            body,
            status_callback=form.get("StatusCallback"),
            arrived=arrived,
        )
        answer = message_json(message, account_sid)  # "queued", however fast the steps run
        await accept(message, request.is_disconnected)
        return answer

    @api.get("/Messages.json")
    async def list_messages(request: Request, account_sid: str) -> dict:
        query = request.query_params
        found = [
            m for m in store.messages(query.get("To"))
            if query.get("From") in (None, m.from_)
            and _in_range(_date_sent(m), query.get("DateSent"), query.get("DateSent<"),
                          query.get("DateSent>"))
        ]  # fmt: skip
        return _page(request, account_sid, "Messages", "messages",
                     [message_json(m, account_sid) for m in found])  # fmt: skip

    @api.get("/Messages/{sid}.json")
    async def fetch_message(request: Request, account_sid: str, sid: str) -> dict:
        message = store.get(sid)
        if not isinstance(message, SentMessage):
            raise TwilioError(404, f"The requested resource {request.url.path} was not found")
        return message_json(message, account_sid)

    @api.post("/Calls.json", status_code=201)
    async def create_call(request: Request, account_sid: str) -> dict:
        pairs = await _form_pairs(request)
        form = dict(pairs)
        to, from_ = form.get("To", ""), form.get("From", "")
        if not to:
            raise TwilioError(400, "A 'To' phone number is required.", 21201)
        if not is_e164(to):
            raise TwilioError(400, f"The 'To' number {to} is not a valid phone number.", 21211)
        if not from_:
            raise TwilioError(400, "A 'From' phone number is required.", 21213)
        if not (form.get("Twiml") or form.get("Url")):
            raise TwilioError(400, "Either Url or Twiml is required.", 21205)
        call = PlacedCall(
            new_sid("CA"),
            to,
            from_,
            form.get("Twiml"),
            form.get("Url"),
            status_callback=form.get("StatusCallback"),
            status_callback_events=tuple(
                event
                for key, value in pairs
                if key == "StatusCallbackEvent"
                for event in value.split()
            ),
        )
        answer = call_json(call, account_sid)
        await accept(call, request.is_disconnected)
        return answer

    @api.get("/Calls.json")
    async def list_calls(request: Request, account_sid: str) -> dict:
        query = request.query_params
        found = [
            c for c in store.calls(query.get("To"))
            if query.get("From") in (None, c.from_)
            and query.get("Status") in (None, c.status)
            and _in_range(c.created_at, query.get("StartTime"), query.get("StartTime<"),
                          query.get("StartTime>"))
        ]  # fmt: skip
        return _page(request, account_sid, "Calls", "calls",
                     [call_json(c, account_sid) for c in found])  # fmt: skip

    @api.get("/Calls/{sid}.json")
    async def fetch_call(request: Request, account_sid: str, sid: str) -> dict:
        call = store.get(sid)
        if not isinstance(call, PlacedCall):
            raise TwilioError(404, f"The requested resource {request.url.path} was not found")
        return call_json(call, account_sid)

    app.include_router(api)
    return app


def _date_sent(m: SentMessage) -> float | None:
    """When Twilio would say the message was sent: none while it is queued."""
    return None if m.status == "queued" else m.created_at


def _in_range(ts: float | None, on: str | None, before: str | None, after: str | None) -> bool:
    """Twilio's date filters (`DateSent`, `DateSent<`, `DateSent>` …): a date (YYYY-MM-DD)
    compares days, a date and time compares instants; a record without the date matches
    only when no filter is given."""
    if on is None and before is None and after is None:
        return True
    if ts is None:
        return False
    at = datetime.fromtimestamp(ts, UTC)
    for value, keep in ((on, "eq"), (before, "le"), (after, "ge")):
        if value is None:
            continue
        day_only = len(value) == 10
        try:
            bound = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TwilioError(400, f"Invalid date filter: {value!r}", 20001) from None
        mine: Any = at.date() if day_only else at
        theirs: Any = bound.date() if day_only else bound.replace(tzinfo=bound.tzinfo or UTC)
        if (
            (keep == "eq" and mine != theirs)
            or (keep == "le" and mine > theirs)
            or (keep == "ge" and mine < theirs)
        ):
            return False
    return True


def _page(
    request: Request, account_sid: str, resource: str, key: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """One page of a list, newest first, in Twilio's shape (`Page`, `PageSize`, and the
    `next_page_uri` the twilio client follows)."""
    try:
        size = min(1000, max(1, int(request.query_params.get("PageSize", "50"))))
        page = max(0, int(request.query_params.get("Page", "0")))
    except ValueError:
        raise TwilioError(400, "PageSize and Page must be numbers", 20001) from None
    records = records[::-1]
    chosen = records[page * size : (page + 1) * size]
    path = f"/2010-04-01/Accounts/{account_sid}/{resource}.json"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("Page", "PageSize")]

    def uri(n: int) -> str:
        return f"{path}?{urlencode([*kept, ('PageSize', size), ('Page', n)])}"

    more = (page + 1) * size < len(records)
    return {
        key: chosen,
        "end": page * size + max(0, len(chosen) - 1),
        "first_page_uri": uri(0),
        "next_page_uri": uri(page + 1) if more else None,
        "page": page,
        "page_size": size,
        "previous_page_uri": uri(page - 1) if page > 0 else None,
        "start": page * size,
        "uri": uri(page),
    }


def _basic_credentials(header: str) -> tuple[str, str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", "", ""
    try:
        return base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", "", ""


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    return parse_qsl((await request.body()).decode(), keep_blank_values=True)


def _message_steps(message: SentMessage, store: GatewayStore, account_sid: str) -> list[Step]:
    base = {
        "MessageSid": message.sid,
        "SmsSid": message.sid,
        "AccountSid": account_sid,
        "From": message.from_,
        "To": message.to,
        "ApiVersion": "2010-04-01",
    }

    def params(status: str, error: int | None = None) -> dict[str, str]:
        extra = {"ErrorCode": str(error)} if error is not None else {}
        return {**base, "MessageStatus": status, "SmsStatus": status, **extra}

    failure = store.delivery_failure(message.to)
    if failure is None:
        return [("sent", params("sent")), ("delivered", params("delivered"))]
    status, error = failure
    if status == "failed":  # never left Twilio, so never "sent"
        return [(status, params(status, error))]
    return [("sent", params("sent")), (status, params(status, error))]


def _call_steps(call: PlacedCall, store: GatewayStore, account_sid: str) -> list[Step]:
    outcome = store.call_outcome(call.to)
    statuses = {
        "completed": ["initiated", "ringing", "in-progress", "completed"],
        "no-answer": ["initiated", "ringing", "no-answer"],
        "busy": ["initiated", "busy"],
    }.get(outcome, ["initiated", outcome])
    steps: list[Step] = []
    for n, status in enumerate(statuses):
        event = CALL_EVENTS.get(status, "completed")
        if call.status_callback_events and event not in call.status_callback_events:
            steps.append((status, {}))  # the status moves on, but nobody asked to hear it
            continue
        params = {
            "CallSid": call.sid,
            "AccountSid": account_sid,
            "From": call.from_,
            "To": call.to,
            "Caller": call.from_,
            "Called": call.to,
            "CallStatus": status,
            "Direction": "outbound-api",
            "ApiVersion": "2010-04-01",
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(n),
            "Timestamp": _rfc2822(time.time()),
        }
        if status == "completed":
            params |= {"CallDuration": "5", "Duration": "1"}
        steps.append((status, params))
    return steps


def _rfc2822(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def message_json(m: SentMessage, account_sid: str) -> dict[str, Any]:
    """A message resource as Twilio renders it."""
    uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{m.sid}"
    created = _rfc2822(m.created_at)
    return {
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": m.body,
        "date_created": created,
        "date_updated": created,
        "date_sent": created if m.status != "queued" else None,
        "direction": "outbound-api",
        "error_code": m.error_code,
        "error_message": None,
        "from": m.from_,
        "messaging_service_sid": None,
        "num_media": "0",
        # As Twilio counts them: GSM-7 or UCS-2 (any Chinese text), 160/153 or 70/67.
        "num_segments": str(sms_length(m.body).segments),
        "price": None,
        "price_unit": "USD",
        "sid": m.sid,
        "status": m.status,
        "to": m.to,
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "uri": f"{uri}.json",
    }


def call_json(c: PlacedCall, account_sid: str) -> dict[str, Any]:
    """A call resource as Twilio renders it."""
    uri = f"/2010-04-01/Accounts/{account_sid}/Calls/{c.sid}"
    created = _rfc2822(c.created_at)
    return {
        "account_sid": account_sid,
        "annotation": None,
        "answered_by": None,
        "api_version": "2010-04-01",
        "caller_name": None,
        "date_created": created,
        "date_updated": created,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": c.from_,
        "from_formatted": c.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": c.sid,
        "start_time": None,
        "status": c.status,
        "to": c.to,
        "to_formatted": c.to,
        "trunk_sid": None,
        "subresource_uris": {"notifications": f"{uri}/Notifications.json"},
        "uri": f"{uri}.json",
    }
