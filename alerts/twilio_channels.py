"""The `sms` and `voice` channels: Twilio, through the official `twilio` client.

The client blocks (it is built on requests), so every call runs in a worker thread. Its
errors are sorted by one question: can the request have reached Twilio? If it cannot, the
send is retried; if it may have, the outcome is unknown and it is never sent again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from alerts.channel import OutboxMessage, OutcomeUnknown, PermanentError, RetryableError


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
    """A twilio `Client` for these settings, pointed at `api_base` when it is set."""
    http = TwilioHttpClient(timeout=settings.timeout_s)
    if http.session is not None:
        # No retries inside the client: a POST retried after a lost answer sends twice.
        # Sends run in parallel; the default pool of 10 would discard sockets past that.
        for scheme in ("https://", "http://"):
            http.session.mount(scheme, HTTPAdapter(pool_maxsize=pool_size, max_retries=0))
    client = Client(settings.account_sid, settings.auth_token, http_client=http)
    if settings.api_base:
        # Messages and Calls both live on the Api domain (2010-04-01), which joins its
        # base_url with each path; the edge/region from TWILIO_EDGE/TWILIO_REGION would
        # rewrite the host name, so they are cleared.
        client.api.base_url = settings.api_base.rstrip("/")
        client.edge = client.region = None
    return client


def _payload(message: OutboxMessage) -> dict[str, Any]:
    try:
        payload = json.loads(message.payload)
    except ValueError as exc:
        raise PermanentError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise PermanentError("payload is not a JSON object")
    return payload


def sort_error(exc: Exception, timeout_s: float) -> Exception:
    """The channel error a failed twilio call means: retry, never, or unknown."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        text = exc.msg if isinstance(exc, TwilioRestException) else exc.detail or exc.title
        summary = f"Twilio HTTP {exc.status}, error {exc.code}: {text}"
        if exc.status == 429 or exc.status >= 500:
            return RetryableError(summary)
        if 400 <= exc.status < 500:
            return PermanentError(summary)
        return RetryableError(summary)
    if isinstance(exc, requests.ReadTimeout):
        return OutcomeUnknown(f"no answer from Twilio within {timeout_s} s after sending")
    if isinstance(exc, requests.ConnectionError):
        if _never_sent(exc):
            return RetryableError(f"cannot reach Twilio: {_reason(exc)}")
        # The connection broke after the request went out: Twilio may have acted on it.
        return OutcomeUnknown(f"connection to Twilio lost after sending: {_reason(exc)}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | json.JSONDecodeError):
        # Twilio answered but the answer was cut or not JSON: it may well have sent.
        return OutcomeUnknown(f"unreadable answer from Twilio: {exc}")
    return RetryableError(f"{type(exc).__name__}: {exc}")


def _never_sent(exc: requests.ConnectionError) -> bool:
    """True when the request cannot have left: no connection or no TLS session was made."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # urllib3's own test for "the server did not receive the request": refused,
    # unresolved (NewConnectionError and its subclasses) or connect timeout.
    return isinstance(reason, ConnectTimeoutError)


def _reason(exc: requests.ConnectionError) -> str:
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    return str(reason)


class _TwilioChannel:
    name: str
    idempotent = False  # an SMS or a call sent twice reaches the person twice

    def __init__(self, settings: TwilioSettings, client: Client | None = None) -> None:
        self.settings = settings
        self.client = client or twilio_client(settings)
        # The client blocks: its own threads, as many as the sender sends at once (the
        # default executor has cores + 4, and every SMS would queue behind six).
        self._pool = ThreadPoolExecutor(32, thread_name_prefix=f"twilio-{self.name}")

    async def _call(self, create: Callable[[], Any]) -> str:
        try:
            resource = await asyncio.get_running_loop().run_in_executor(self._pool, create)
        except Exception as exc:
            raise sort_error(exc, self.settings.timeout_s) from exc
        return str(resource.sid)


class SmsChannel(_TwilioChannel):
    """Sends the payload's `text` as an SMS to the recipient's phone; returns the message SID."""

    name = "sms"

    async def send(self, message: OutboxMessage) -> str | None:
        text = _payload(message).get("text")
        if not isinstance(text, str) or not text:
            raise PermanentError("SMS payload has no text")
        return await self._call(
            lambda: self.client.messages.create(
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

    async def send(self, message: OutboxMessage) -> str | None:
        twiml = call_twiml(_payload(message))
        return await self._call(
            lambda: self.client.calls.create(
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
