"""One event a panel has sent and repeats until its receipt comes."""

from __future__ import annotations

import threading
from typing import Any

from devices.protocol import Receipt, canonical_json


class EventInFlight:
    """What every panel keeps of an event it repeats until receipted: the exact bytes,
    the attempts, and the receipt once it came (both panels build on this)."""

    __slots__ = (
        "attempts", "body", "first_sent_at", "gave_up", "payload", "receipt", "receipt_at",
        "resent", "seq",
    )  # fmt: skip

    def __init__(self, payload: dict[str, Any]) -> None:
        self.arm(payload)
        self.attempts = 0
        self.resent = 0  # times it went again under a new seq (the hub's clock disagreed)
        self.receipt: Receipt | None = None
        self.gave_up = False
        self.first_sent_at: float | None = None  # time.monotonic()
        self.receipt_at: float | None = None

    def arm(self, payload: dict[str, Any]) -> None:
        """Carry `payload` from now on: its seq and its exact bytes (a resend under a new seq)."""
        self.payload = payload
        self.seq: int = payload["seq"]
        self.body = canonical_json(payload).encode()

    @property
    def type(self) -> str:
        return str(self.payload.get("type"))

    @property
    def latency_s(self) -> float | None:
        """Seconds from the first copy sent to the receipt; None without a receipt."""
        if self.receipt_at is None or self.first_sent_at is None:
            return None
        return self.receipt_at - self.first_sent_at


class PendingEvent(EventInFlight):
    """One event, repeated byte for byte until its receipt comes; `wait()` returns the receipt."""

    __slots__ = ("_done",)

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        """True once a receipt came or the panel gave up."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Receipt | None:
        """Block until the receipt (returned) or timeout / giving up (None)."""
        self._done.wait(timeout)
        return self.receipt

    def finish(self, receipt: Receipt | None, at: float) -> None:
        """Settle it: the receipt that came at `at`, or None when the panel gave up."""
        self.receipt = receipt
        self.receipt_at = at if receipt is not None else None
        self.gave_up = receipt is None
        self._done.set()
