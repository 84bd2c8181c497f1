"""What the local Twilio gateway holds: every message and call, and the faults to inject.

Thread-safe: the API answers in the server's thread, tests read from theirs.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

logger = logging.getLogger(__name__)

E164 = re.compile(r"\+[1-9]\d{1,14}")


def new_sid(prefix: str) -> str:
    """A Twilio-shaped id: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def is_e164(number: str) -> bool:
    """True for a phone number in E.164 form (`+` and up to 15 digits)."""
    return E164.fullmatch(number) is not None


def _to(to: str | None) -> str:
    return f" to {to}" if to is not None else ""


@dataclass
class SentMessage:
    """One SMS the gateway accepted."""

    sid: str
    to: str
    from_: str
    body: str
    status: str = "queued"
    status_callback: str | None = None
    error_code: int | None = None
    created_at: float = field(default_factory=time.time)
    # time.monotonic() when the request reached the gateway, before it was parsed.
    arrived: float | None = None


@dataclass
class PlacedCall:
    """One voice call the gateway accepted; `twiml` is the inline TwiML, `url` the TwiML URL."""

    sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None = None
    status: str = "queued"
    status_callback: str | None = None
    status_callback_events: tuple[str, ...] = ()
    created_at: float = field(default_factory=time.time)


Record = SentMessage | PlacedCall


@dataclass(frozen=True)
class Fault:
    """How to answer a create request instead of normally."""

    fail_status: int | None = None  # answer with this HTTP status, store nothing
    hang_s: float | None = None  # store, then keep the client waiting this long
    # Keep the client waiting this long before taking the request: one that hangs up
    # meanwhile created nothing (its request never reached the provider's books).
    stall_s: float | None = None


class GatewayStore:
    """Messages, calls and injected faults, shared between the server and its callers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: dict[str, SentMessage] = {}
        self._calls: dict[str, PlacedCall] = {}
        self._faults: list[Fault] = []
        self._delivery: dict[str, tuple[str, int]] = {}
        self._call_outcome: dict[str, str] = {}
        self._listeners: list[Callable[[Record], None]] = []

    # -- records ------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        """Keep a new message or call and tell the listeners."""
        with self._cond:
            book = self._messages if isinstance(record, SentMessage) else self._calls
            book[record.sid] = record
            listeners = list(self._listeners)
            self._cond.notify_all()
        for listener in listeners:
            try:
                listener(replace(record))
            except Exception:  # a broken listener must not fail the API request
                logger.exception("gateway listener failed")

    def get(self, sid: str) -> Record | None:
        """A copy of the message or call with that sid, or None."""
        with self._cond:
            record = self._messages.get(sid) or self._calls.get(sid)
            return replace(record) if record else None

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """Move a message or call to a new status."""
        with self._cond:
            record = self._messages.get(sid) or self._calls.get(sid)
            if record is None:
                return
            record.status = status
            if isinstance(record, SentMessage) and error_code is not None:
                record.error_code = error_code
            self._cond.notify_all()

    def messages(self, to: str | None = None) -> list[SentMessage]:
        """Copies of the accepted messages, oldest first, optionally only those to `to`."""
        with self._cond:
            return [replace(m) for m in self._messages.values() if to in (None, m.to)]

    def calls(self, to: str | None = None) -> list[PlacedCall]:
        """Copies of the accepted calls, oldest first, optionally only those to `to`."""
        with self._cond:
            return [replace(c) for c in self._calls.values() if to in (None, c.to)]

    def wait_for_messages(
        self, count: int, to: str | None = None, timeout: float = 5.0, *, strict: bool = False
    ) -> list[SentMessage]:
        """Block until at least `count` messages (to `to`) are held or the timeout; return them.

        On the timeout, return what is held; with `strict`, raise TimeoutError instead.
        """
        with self._cond:
            came = self._cond.wait_for(lambda: len(self.messages(to)) >= count, timeout)
            held = self.messages(to)
        if strict and not came:
            bodies = [m.body for m in held]
            raise TimeoutError(
                f"{len(held)} of {count} messages{_to(to)} after {timeout} s: {bodies}"
            )
        return held

    def wait_for_calls(
        self, count: int, to: str | None = None, timeout: float = 5.0, *, strict: bool = False
    ) -> list[PlacedCall]:
        """Block until at least `count` calls (to `to`) are held or the timeout; return them.

        On the timeout, return what is held; with `strict`, raise TimeoutError instead.
        """
        with self._cond:
            came = self._cond.wait_for(lambda: len(self.calls(to)) >= count, timeout)
            held = self.calls(to)
        if strict and not came:
            raise TimeoutError(f"{len(held)} of {count} calls{_to(to)} after {timeout} s")
        return held

    def wait_for_status(self, sid: str, status: str, timeout: float = 5.0) -> bool:
        """Block until the message or call `sid` has reached `status`; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (r := self.get(sid)) is not None and r.status == status, timeout
            )

    def subscribe(self, listener: Callable[[Record], None]) -> None:
        """Call `listener` (from the server's thread) with each new message or call."""
        with self._cond:
            self._listeners.append(listener)

    # -- faults -------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next `n` valid create requests with `status` and a Twilio error."""
        with self._cond:
            self._faults.extend(Fault(fail_status=status) for _ in range(n))

    def hang_next(self, n: int, seconds: float) -> None:
        """Accept and keep the next `n` valid create requests, but answer after `seconds`."""
        with self._cond:
            self._faults.extend(Fault(hang_s=seconds) for _ in range(n))

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next `n` valid create requests `seconds` before taking them; a client
        that hangs up meanwhile created nothing."""
        with self._cond:
            self._faults.extend(Fault(stall_s=seconds) for _ in range(n))

    def take_fault(self) -> Fault | None:
        """The fault for this create request, if one is queued."""
        with self._cond:
            return self._faults.pop(0) if self._faults else None

    def fail_delivery(self, to: str, status: str = "undelivered", error_code: int = 30003) -> None:
        """Messages to `to` end in `status` with `error_code` instead of "delivered"."""
        with self._cond:
            self._delivery[to] = (status, error_code)

    def delivery_failure(self, to: str) -> tuple[str, int] | None:
        """The (status, error code) messages to `to` end in, or None when delivered."""
        with self._cond:
            return self._delivery.get(to)

    def fail_call(self, to: str, status: str = "no-answer") -> None:
        """Calls to `to` end in `status` ("no-answer", "busy", "failed") instead of "completed"."""
        with self._cond:
            self._call_outcome[to] = status

    def call_outcome(self, to: str) -> str:
        """How calls to `to` end."""
        with self._cond:
            return self._call_outcome.get(to, "completed")

    def reset_faults(self) -> None:
        """Forget every injected fault; the gateway answers and delivers normally again."""
        with self._cond:
            self._faults.clear()
            self._delivery.clear()
            self._call_outcome.clear()
