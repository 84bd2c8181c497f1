"""One event a panel has sent and repeats until its receipt comes."""

from __future__ import annotations

import threading
import time
from typing import Any

from devices.protocol import Receipt, canonical_json


class PendingEvent:
    """One event, repeated byte for byte until its receipt comes; `wait()` returns the receipt."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self._arm(payload)
        self.attempts = 0
        self.resent = 0  # times it went again under a new seq (the hub's clock disagreed)
        self.receipt: Receipt | None = None
        self.gave_up = False
        self.created_at = time.monotonic()
        self.first_sent_at: float | None = None
        self.receipt_at: float | None = None
        self._done = threading.Event()

    def _arm(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.seq: int = payload["seq"]
        self.body = canonical_json(payload).encode()

    @property
    def type(self) -> str:
        return str(self.payload.get("type"))

    @property
    def done(self) -> bool:
        """True once a receipt came or the panel gave up."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Receipt | None:
        """Block until the receipt (returned) or timeout / giving up (None)."""
        self._done.wait(timeout)
        return self.receipt

    def _finish(self, receipt: Receipt | None, at: float) -> None:
        self.receipt = receipt
        self.receipt_at = at if receipt is not None else None
        self.gave_up = receipt is None
        self._done.set()
