"""Requests the local Twilio gateway makes to the hub, signed as Twilio signs them.

Status callbacks go out from one background thread in due order, so a message's "sent"
always arrives before its "delivered" and the API never waits for the hub.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from simulator.twilio_store import PlacedCall, new_sid

logger = logging.getLogger(__name__)


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """The `X-Twilio-Signature` of a request: for a GET, `params` is empty and in the url."""
    return RequestValidator(auth_token).compute_signature(url, params)


def signed_request(
    method: str, url: str, params: dict[str, str], auth_token: str
) -> httpx.Request:
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
        "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": account_sid,
        "From": from_phone, "To": to, "Body": body, "NumMedia": "0", "NumSegments": "1",
        "SmsStatus": "received", "ApiVersion": "2010-04-01",
    }
    return signed_request("POST", url, params, auth_token)


def gather_request(
    url: str, method: str, call: PlacedCall, digits: str, account_sid: str, auth_token: str
) -> httpx.Request:
    """The webhook Twilio sends to a `<Gather action>` when the callee presses `digits`."""
    params = {
        "AccountSid": account_sid, "CallSid": call.sid,
        "From": call.from_, "Caller": call.from_, "To": call.to, "Called": call.to,
        "CallStatus": "in-progress", "Direction": "outbound-api", "Digits": digits,
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
    """Runs callback jobs at their due time on a few delivery threads, as Twilio does.

    Twilio sends the callbacks of different messages at once; one thread posting them in
    turn would wait on each answer and fall ever further behind a busy hub (a hundred
    in ten seconds where four thousand were due). The jobs of one key (a message's sid)
    go to the same thread, so its statuses still arrive in order.
    """

    def __init__(self, auth_token: str, timeout_s: float = 5.0, workers: int = 8) -> None:
        self._auth_token = auth_token
        self._timeout_s = timeout_s
        self._workers = workers
        self._cond = threading.Condition()
        self._jobs: list[tuple[float, int, str, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lanes: list[queue.SimpleQueue[Callable[[], None] | None]] = []
        self._deliverers: list[threading.Thread] = []
        self._local = threading.local()  # each delivery thread's own HTTP client

    def start(self) -> None:
        """Start the scheduling thread and the delivery threads."""
        self._stopping = False
        self._lanes = [queue.SimpleQueue() for _ in range(self._workers)]
        self._deliverers = [
            threading.Thread(target=self._deliver, args=(lane,), name=f"twilio-callbacks-{i}",
                             daemon=True)
            for i, lane in enumerate(self._lanes)
        ]  # fmt: skip
        for thread in self._deliverers:
            thread.start()
        self._thread = threading.Thread(target=self._run, name="twilio-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the threads; callbacks not yet due are dropped, those handed out finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        for lane in self._lanes:
            lane.put(None)
        for thread in self._deliverers:
            thread.join(10)
        self._thread, self._lanes, self._deliverers = None, [], []

    def at(self, due: float, job: Callable[[], None], key: str = "") -> None:
        """Run `job` on a delivery thread once `time.monotonic()` reaches `due`.

        Jobs with the same non-empty `key` run one after another, in due order.
        """
        with self._cond:
            heapq.heappush(self._jobs, (due, next(self._seq), key, job))
            self._cond.notify_all()

    def post(self, url: str, params: dict[str, str]) -> None:
        """POST one signed callback now; a failure is logged, never raised."""
        http = getattr(self._local, "http", None)
        if http is None:  # outside a delivery thread: a client for this call only
            with httpx.Client(timeout=self._timeout_s) as once:
                self._post(once, url, params)
        else:
            self._post(http, url, params)

    def _post(self, http: httpx.Client, url: str, params: dict[str, str]) -> None:
        try:
            response = http.send(signed_request("POST", url, params, self._auth_token))
            if response.status_code >= 400:
                logger.warning(
                    "status callback refused",
                    extra={"url": url, "status": response.status_code},
                )
        except httpx.HTTPError as exc:
            logger.warning("status callback failed", extra={"url": url, "error": str(exc)})

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
                _, seq, key, job = heapq.heappop(self._jobs)
            lane = hash(key) if key else seq
            self._lanes[lane % len(self._lanes)].put(job)

    def _deliver(self, lane: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        with httpx.Client(timeout=self._timeout_s) as http:
            self._local.http = http
            while (job := lane.get()) is not None:
                try:
                    job()
                except Exception:  # one bad job must not end the deliveries of all others
                    logger.exception("callback job failed")
