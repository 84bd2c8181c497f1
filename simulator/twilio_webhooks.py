"""Requests the local Twilio gateway makes to the hub, signed as Twilio signs them.

Status callbacks go out from a few background threads, each message's in due order, so
its "sent" always arrives before its "delivered" and the API never waits for the hub.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from urllib.parse import SplitResult, urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from simulator.twilio_store import PlacedCall, new_sid

logger = logging.getLogger(__name__)


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """The `X-Twilio-Signature` of a request: for a GET, `params` is empty and in the url."""
    return RequestValidator(auth_token).compute_signature(url, params)


def signed_request(method: str, url: str, params: dict[str, str], auth_token: str) -> httpx.Request:
    """A webhook request as Twilio sends it: form-encoded POST, or GET with a query string."""
    if method.upper() == "GET":
        full = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        return httpx.Request(
            "GET", full, headers={"X-Twilio-Signature": sign(auth_token, full, {})}
        )
    return httpx.Request(
        "POST",
        url,
        data=params,
        headers={
            "X-Twilio-Signature": sign(auth_token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )


def inbound_sms_request(
    url: str, from_phone: str, to: str, body: str, account_sid: str, auth_token: str
) -> httpx.Request:
    """The webhook Twilio posts when `from_phone` texts `body` to the number `to`."""
    sid = new_sid("SM")
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": account_sid,
        "From": from_phone,
        "To": to,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    return signed_request("POST", url, params, auth_token)


def gather_request(
    url: str, method: str, call: PlacedCall, digits: str, account_sid: str, auth_token: str
) -> httpx.Request:
    """The webhook Twilio sends to a `<Gather action>` when the callee presses `digits`."""
    params = {
        "AccountSid": account_sid,
        "CallSid": call.sid,
        "From": call.from_,
        "Caller": call.from_,
        "To": call.to,
        "Called": call.to,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
        "Digits": digits,
        "ApiVersion": "2010-04-01",
    }
    return signed_request(method, url, params, auth_token)


def gather_target(twiml: str) -> tuple[str, str]:
    """The (action URL, method) of the first `<Gather>` in a TwiML document."""
    gather = ET.fromstring(twiml).find(".//Gather")
    if gather is None or urlsplit(gather.get("action", "")).scheme not in ("http", "https"):
        # Twilio would resolve a relative action against the TwiML's own URL; inline
        # TwiML has none, so the caller must say where the keypress goes.
        raise ValueError("the call's TwiML has no absolute <Gather action=...>; pass to_url")
    return gather.get("action", ""), gather.get("method", "POST")


class CallbackScheduler:
    """Runs callback jobs at their due time on a few delivery threads.

    The jobs of one key (a message or call SID) run on one thread, in (due time,
    arrival) order, so a message's "sent" always comes before its "delivered"; other
    keys' jobs run meanwhile, as Twilio's callbacks do. One thread for all of them
    could not keep up with a hub that answers each callback once it is stored: under
    load it fell behind and spared the hub most of its callbacks.
    """

    def __init__(self, auth_token: str, timeout_s: float = 5.0, lanes: int = 8) -> None:
        self._auth_token = auth_token
        self._timeout_s = timeout_s
        self._lanes = [_Lane(f"twilio-callbacks-{i}") for i in range(lanes)]
        self._local = threading.local()  # each delivery thread's keep-alive connections

    def start(self) -> None:
        """Start the delivery threads."""
        for lane in self._lanes:
            lane.start()

    def stop(self) -> None:
        """Stop the threads; callbacks not yet due are dropped."""
        for lane in self._lanes:  # all told first: each may be finishing a post
            lane.request_stop()
        for lane in self._lanes:
            lane.join()

    def at(self, due: float, job: Callable[[], None], key: str = "") -> None:
        """Run `job` once `time.monotonic()` reaches `due`, after the earlier jobs of `key`."""
        self._lanes[zlib.crc32(key.encode()) % len(self._lanes)].add(due, job)

    def post(self, url: str, params: dict[str, str]) -> None:
        """POST one signed callback now, on the calling thread; a failure is logged, never
        raised."""
        body = urlencode(params)
        headers = {
            "X-Twilio-Signature": sign(self._auth_token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            status = self._send(parts, target, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("status callback failed", extra={"url": url, "error": str(exc)})
            return
        if status >= 400:
            logger.warning("status callback refused", extra={"url": url, "status": status})

    def _send(self, parts: SplitResult, target: str, body: str, headers: dict[str, str]) -> int:
        """The response status; a kept-alive connection the server closed is opened again."""
        try:
            connections: dict[tuple[str, str], http.client.HTTPConnection] = self._local.connections
        except AttributeError:
            connections = self._local.connections = {}
        key = (parts.scheme, parts.netloc)
        for attempt in (1, 2):
            conn = connections.get(key)
            reused = conn is not None
            if conn is None:
                kind = (
                    http.client.HTTPSConnection if parts.scheme == "https"
                    else http.client.HTTPConnection
                )  # fmt: skip
                conn = connections[key] = kind(parts.netloc, timeout=self._timeout_s)
            try:
                conn.request("POST", target, body, headers)
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
                    del connections[key]
                return response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                connections.pop(key, None)
                # A kept-alive connection the server closed while it sat idle fails so
                # on reuse: sent again on a new one. (Lost mid-answer instead, a callback
                # sent twice is harmless: the hub ignores a status it already has.)
                stale = reused and isinstance(exc, ConnectionResetError | BrokenPipeError)
                if attempt == 2 or not stale:
                    raise
        raise AssertionError("unreachable")


class _Lane:
    """One delivery thread and its jobs, in (due time, arrival) order."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._jobs: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def add(self, due: float, job: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._jobs, (due, next(self._seq), job))
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._jobs or self._jobs[0][0] > time.monotonic()
                ):
                    wait = self._jobs[0][0] - time.monotonic() if self._jobs else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                _, _, job = heapq.heappop(self._jobs)
            try:
                job()
            except Exception:  # one bad job must not end the deliveries of all others
                logger.exception("callback job failed")
