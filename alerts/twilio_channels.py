"""The `sms` and `voice` channels: Twilio, through the official `twilio` client.

The client's async calls run on the hub's event loop over the project's own small HTTP
client (no thread per request: under load those threads took the GIL from the loop that
answers panels; aiohttp took twice the CPU per send).
Errors are sorted by one question: can the request have reached Twilio? If it cannot,
the send is retried; if it may have, the outcome is unknown and it is never sent again.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http import AsyncHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError
from alerts.http_client import AnswerLost, HttpClient, RequestNotSent


@dataclass(frozen=True)
class TwilioSettings:
    """The Twilio account the hub sends from, and where its API is."""

    account_sid: str
    auth_token: str
    from_number: str
    api_base: str | None = None  # e.g. a local gateway; None: api.twilio.com
    status_callback_url: str | None = None
    timeout_s: float = 10.0


def twilio_client(settings: TwilioSettings, pool_size: int = 32) -> Client:
    """A blocking twilio `Client` for these settings (for tools and tests; the hub sends
    with `async_twilio_client`)."""
    http = TwilioHttpClient(timeout=settings.timeout_s)
    if http.session is not None:
        # No retries inside the client: a POST retried after a lost answer sends twice.
        for scheme in ("https://", "http://"):
            http.session.mount(scheme, HTTPAdapter(pool_maxsize=pool_size, max_retries=0))
    return _pointed(Client(settings.account_sid, settings.auth_token, http_client=http), settings)


def async_twilio_client(settings: TwilioSettings, pool_size: int = 32) -> Client:
    """A twilio `Client` whose `*_async` calls go through `TwilioTransport`."""
    http = TwilioTransport(settings.timeout_s, pool_size)
    return _pointed(Client(settings.account_sid, settings.auth_token, http_client=http), settings)


def _pointed(client: Client, settings: TwilioSettings) -> Client:
    if settings.api_base:
        # Messages and Calls both live on the Api domain (2010-04-01), which joins its
        # base_url with each path; the edge/region from TWILIO_EDGE/TWILIO_REGION would
        # rewrite the host name, so they are cleared.
        client.api.base_url = settings.api_base.rstrip("/")
        client.edge = client.region = None
    return client


class TwilioTransport(AsyncHttpClient):
    """twilio's async HTTP interface over `HttpClient`.

    No retries (a POST repeated after a lost answer sends twice), and the connect and
    read timeouts kept apart, so a request that never left can be told from one that
    got no answer. (twilio's own async client retries on request and has one timeout.)
    """

    def __init__(self, timeout_s: float, pool_size: int = 32) -> None:
        super().__init__(logging.getLogger("twilio.http_client"), True, timeout_s)
        self.http = HttpClient(
            connect_timeout_s=timeout_s, read_timeout_s=timeout_s, pool_size=pool_size
        )

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        """One request; its errors go up as they are (see `sort_error`). Redirects are
        not followed: Twilio's API answers where it is asked."""
        headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        body: bytes | None = None
        if data:
            body = urlencode(data, doseq=True).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        response = await self.http.request(method, uri, headers=headers, body=body, params=params)
        return TwilioResponse(response.status, response.body.decode("utf-8", "replace"),
                              response.headers)  # fmt: skip

    async def close(self) -> None:
        """Close the connections (the hub's channels live as long as the hub)."""
        await self.http.close()


def _payload(message: OutboxMessage) -> dict[str, Any]:
    try:
        payload = json.loads(message.payload)
    except ValueError as exc:
        raise PermanentError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise PermanentError("payload is not a JSON object")
    return payload


def sort_error(exc: BaseException, timeout_s: float) -> Exception:
    """The channel error a failed twilio call means: retry, never, or unknown."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        text = exc.msg if isinstance(exc, TwilioRestException) else exc.detail or exc.title
        summary = f"Twilio HTTP {exc.status}, error {exc.code}: {text}"
        if exc.status == 429 or exc.status >= 500:
            return RetryableError(summary)
        if 400 <= exc.status < 500:
            return PermanentError(summary)
        return RetryableError(summary)
    # Before the request could leave: no connection (refused, unresolved, no TLS session).
    if isinstance(exc, RequestNotSent):
        return RetryableError(f"cannot reach Twilio: {exc}")
    # After it left: Twilio may have acted on it.
    if isinstance(exc, AnswerLost) and exc.timed_out:
        return OutcomeUnknown(f"no answer from Twilio within {timeout_s} s after sending")
    if isinstance(exc, AnswerLost | OSError):
        return OutcomeUnknown(f"connection to Twilio lost after sending: {exc}")
    if isinstance(exc, json.JSONDecodeError):
        # Twilio answered but the answer was not JSON: it may well have sent.
        return OutcomeUnknown(f"unreadable answer from Twilio: {exc}")
    return RetryableError(f"{type(exc).__name__}: {exc}")


# How far before a send's claim the provider's records are read: the provider's clock
# and the hub's may disagree, and Twilio's dates have whole seconds.
CLOCK_MARGIN_S = 300
# At most this many of a phone's records are read when looking for one send.
LOOK_BACK = 200


class _TwilioChannel:
    name: str
    idempotent = False  # an SMS or a call sent twice reaches the person twice
    remote = True

    def __init__(self, settings: TwilioSettings, client: Client | None = None) -> None:
        self.settings = settings
        self.client = client or async_twilio_client(settings)

    async def close(self) -> None:
        """Close the client's connections."""
        http = self.client.http_client
        if isinstance(http, TwilioTransport):
            await http.close()

    async def _call(self, create: Callable[[], Awaitable[Any]]) -> str:
        try:
            resource = await create()
        except Exception as exc:
            raise sort_error(exc, self.settings.timeout_s) from exc
        return str(resource.sid)

    async def _sids_since(
        self, records: Any, message: OutboxMessage, since_ms: int, same: Callable[[Any], bool]
    ) -> list[str]:
        """SIDs of the records (Messages or Calls) to the message's phone from the hub's
        number, created since `since_ms` (less CLOCK_MARGIN_S) and `same` as it; newest
        first. Raises RetryableError when Twilio cannot be asked."""
        since = datetime.fromtimestamp(since_ms / 1000 - CLOCK_MARGIN_S, UTC)
        found = []
        try:
            stream = await records.stream_async(
                to=message.recipient, from_=self.settings.from_number, limit=LOOK_BACK,
                page_size=50,
            )  # fmt: skip
            async for record in stream:
                if record.date_created is not None and record.date_created < since:
                    break  # newest first: the rest are older still
                if same(record):
                    found.append(str(record.sid))
        except Exception as exc:
            raise RetryableError(f"cannot ask Twilio what it holds: {exc}") from exc
        return found


class SmsChannel(_TwilioChannel):
    """Sends the payload's `text` as an SMS to the recipient's phone; returns the message SID."""

    name = "sms"

    async def sent_since(self, message: OutboxMessage, since_ms: int) -> list[str]:
        """SIDs of the messages Twilio holds that could be this one: to its phone, from
        the hub's number, with its text, created since `since_ms`; newest first."""
        text = _payload(message).get("text")
        return await self._sids_since(
            self.client.messages, message, since_ms, lambda record: record.body == text
        )

    async def send(self, message: OutboxMessage) -> str | None:
        text = _payload(message).get("text")
        if not isinstance(text, str) or not text:
            raise PermanentError("SMS payload has no text")
        return await self._call(
            lambda: self.client.messages.create_async(
                to=message.recipient,
                from_=self.settings.from_number,
                body=text,
                status_callback=self.settings.status_callback_url,
            )
        )


class VoiceChannel(_TwilioChannel):
    """Calls the recipient and plays the payload's `twiml` (or says its `text`); returns the
    call SID."""

    name = "voice"

    async def sent_since(self, message: OutboxMessage, since_ms: int) -> list[str]:
        """SIDs of the calls Twilio holds that could be this one: to its phone, from the
        hub's number, created since `since_ms`; newest first. (A call's TwiML is not in
        the list: calls are told apart only by whom and when.)"""
        return await self._sids_since(self.client.calls, message, since_ms, lambda _: True)

    async def send(self, message: OutboxMessage) -> str | None:
        twiml = call_twiml(_payload(message))
        return await self._call(
            lambda: self.client.calls.create_async(
                to=message.recipient,
                from_=self.settings.from_number,
                twiml=twiml,
                status_callback=self.settings.status_callback_url,
            )
        )


def call_twiml(payload: dict[str, Any]) -> str:
    """The TwiML of a call: the payload's own, or its text said once."""
    twiml = payload.get("twiml")
    if isinstance(twiml, str) and twiml:
        return twiml
    text = payload.get("text")
    if not isinstance(text, str) or not text:
        raise PermanentError("voice payload has neither twiml nor text")
    return f"<Response><Say>{escape(text, quote=False)}</Say></Response>"
