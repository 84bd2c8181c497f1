"""The `sms` and `voice` channels: Twilio, through the official `twilio` client.

The client's `*_async` calls run on the hub's event loop over twilio's own aiohttp client
(`TwilioHttp`), one pool of kept-alive connections per channel.
Errors are sorted by one question: can the request have reached Twilio? If it cannot,
the send is retried; if it may have, the outcome is unknown and it is never sent again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError

# A kept-alive connection idle longer is closed, not reused: the server may be closing it
# (uvicorn does after 5 s), and a POST written into a connection the server is closing is
# lost without telling whether it arrived: an SMS in doubt that was never sent.
IDLE_S = 4.0


@dataclass(frozen=True)
class TwilioSettings:
    """The Twilio account the hub sends from, and where its API is."""

    account_sid: str
    auth_token: str
    from_number: str
    api_base: str | None = None  # e.g. a local gateway; None: api.twilio.com
    status_callback_url: str | None = None
    timeout_s: float = 10.0


def rebased(url: str, api_base: str | None) -> str:
    """`url` sent to `api_base` instead of the Twilio host the client built it for."""
    if not api_base:
        return url
    # Messages and Calls both live on the Api domain (2010-04-01), whose paths the
    # gateway serves as Twilio does; an edge or region (TWILIO_EDGE, TWILIO_REGION) only
    # changes the host name, which is replaced here.
    parts = urlsplit(url)
    return api_base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


class PointedHttpClient(TwilioHttpClient):
    """twilio's blocking HTTP client, sending to `api_base` when one is given."""

    def __init__(self, api_base: str | None, timeout_s: float, pool_size: int) -> None:
        super().__init__(timeout=timeout_s)
        self.api_base = api_base
        if self.session is not None:
            # No retries inside the client: a POST retried after a lost answer sends twice.
            for scheme in ("https://", "http://"):
                adapter = HTTPAdapter(pool_maxsize=pool_size, max_retries=0)
                self.session.mount(scheme, adapter)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> TwilioResponse:
        """twilio's request, to `api_base`."""
        return super().request(method, rebased(url, self.api_base), *args, **kwargs)


def twilio_client(settings: TwilioSettings, pool_size: int = 32) -> Client:
    """A blocking twilio `Client` for these settings (for tools and tests; the hub sends
    with `async_twilio_client`)."""
    http = PointedHttpClient(settings.api_base, settings.timeout_s, pool_size)
    return Client(settings.account_sid, settings.auth_token, http_client=http)


def async_twilio_client(settings: TwilioSettings, pool_size: int = 32) -> Client:
    """A twilio `Client` whose `*_async` calls go through `TwilioHttp`."""
    http = TwilioHttp(settings.api_base, settings.timeout_s, pool_size)
    return Client(settings.account_sid, settings.auth_token, http_client=http)


class TwilioHttp(AsyncTwilioHttpClient):
    """twilio's aiohttp client, sending to `api_base` when one is given, with a pool of
    at most `pool_size` kept-alive connections made in the loop that first uses it.

    Its `request` differs from the parent's where a send's fate depends on it: the
    parent passes aiohttp one total timeout, or none at all when the resource call names
    none (so `timeout` was never applied and a send could wait forever), where here a
    connection not made within `timeout_s` (nothing left: ConnectionTimeoutError) is
    told from an answer not come within `timeout_s` of sending (it may have arrived);
    credentials go in the Authorization header (aiohttp deprecates its `auth` argument);
    nothing is retried, as a POST repeated after a lost answer sends twice.
    """

    def __init__(self, api_base: str | None, timeout_s: float, pool_size: int = 32) -> None:
        super().__init__(pool_connections=False, timeout=timeout_s)
        self.api_base = api_base
        self.pool_size = pool_size
        # The whole exchange is bounded too (an answer trickling in byte by byte); it
        # cannot end before the connect timeout, so it always means "after sending".
        self.client_timeout = aiohttp.ClientTimeout(
            total=2 * timeout_s, connect=timeout_s, sock_read=timeout_s
        )

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> TwilioResponse:
        """One request; its errors go up as aiohttp raises them (see `sort_error`)."""
        if self.session is None:
            # Made here, in the running loop, which its connections belong to.
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=IDLE_S),
                timeout=self.client_timeout,
            )
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = aiohttp.encode_basic_auth(*auth)
        body = None
        if data:
            body = urlencode(data, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        per_request = self.client_timeout
        if timeout is not None:  # a resource call's own timeout
            per_request = aiohttp.ClientTimeout(
                total=2 * timeout, connect=timeout, sock_read=timeout
            )
        async with self.session.request(
            method.upper(),
            rebased(url, self.api_base),
            params=params,
            data=body,
            headers=headers,
            timeout=per_request,
            allow_redirects=allow_redirects,
        ) as response:
            text = await response.text(errors="replace")
        return TwilioResponse(response.status, text, response.headers)


def _payload(message: OutboxMessage) -> dict[str, Any]:
    try:
        payload = json.loads(message.payload)
    except ValueError as exc:
        raise PermanentError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise PermanentError("payload is not a JSON object")
    return payload


# Raised before anything of the request was written: no connection could be made.
NEVER_LEFT = (
    aiohttp.ClientConnectorError,  # refused, unresolved, TLS refused or unverified
    aiohttp.ConnectionTimeoutError,  # no connection within the timeout
    aiohttp.InvalidURL,
    aiohttp.NonHttpUrlClientError,
)


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
    if isinstance(exc, NEVER_LEFT):
        return RetryableError(f"cannot reach Twilio: {why_unreachable(exc, timeout_s)}")
    # After it left: Twilio may have acted on it. Anything aiohttp raises past the
    # connection (no answer in time, the connection closed or reset, an answer that is
    # not HTTP) leaves the send in doubt, to be settled by asking Twilio.
    if isinstance(exc, TimeoutError):
        return OutcomeUnknown(f"no answer from Twilio within {timeout_s:g} s after sending")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return OutcomeUnknown(f"connection to Twilio lost after sending: {exc!r}")
    if isinstance(exc, json.JSONDecodeError):
        # Twilio answered but the answer was not JSON: it may well have sent.
        return OutcomeUnknown(f"unreadable answer from Twilio: {exc}")
    return RetryableError(f"{type(exc).__name__}: {exc}")


def why_unreachable(exc: BaseException, timeout_s: float) -> str:
    """What kept a request from leaving, in words."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connect timed out after {timeout_s:g} s"
    if not isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc)
    where = f"({exc.host}:{exc.port})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed {where}: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve the host {where}: {exc.os_error.strerror}"
    if exc.os_error.errno:
        return f"{os.strerror(exc.os_error.errno)} {where}"
    return str(exc)


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
        if isinstance(http, TwilioHttp):
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
