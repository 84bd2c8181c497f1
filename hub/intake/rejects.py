"""A bounded log of refused messages, newest last: what an operator reads to find a bad panel."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from hub.intake.rate import TokenBuckets

logger = logging.getLogger(__name__)

# A refused cancel may carry the household's real PIN (the window had closed) or its
# duress PIN: the excerpt admins read keeps the key, never the value.
_PIN_VALUE = re.compile(r'("pin"\s*:\s*)("(?:[^"\\]|\\.)*"?|\[[^\]]*\]?|\{[^}]*\}?|[^,}\s]*)')


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    at: int
    topic: str
    panel_id: str | None
    reason: str
    error: str
    payload_excerpt: str


class RejectLog:
    """Keeps the last `size` refused messages in memory; a flood can never grow it.

    The log file hears of a few per panel and second, and how many were not written:
    writing every line of a flood would be what slows the hub down.
    """

    def __init__(self, size: int = 500) -> None:
        self._entries: deque[RejectedMessage] = deque(maxlen=size)
        self._log_budget = TokenBuckets(rate=2.0, burst=10)
        self._unlogged: dict[str, int] = {}

    def add(
        self, *, at: int, topic: str, panel_id: str | None, reason: str, error: str, payload: bytes
    ) -> None:
        excerpt = payload[:200].decode("utf-8", errors="backslashreplace")
        excerpt = _PIN_VALUE.sub(r'\1"(hidden)"', excerpt)
        entry = RejectedMessage(at, topic[:300], panel_id, reason, error, excerpt)
        self._entries.append(entry)
        key = panel_id or "?"
        if not self._log_budget.allow(key, time.monotonic()):
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return
        logger.warning(
            "message refused",
            extra={
                "topic": entry.topic,
                "panel_id": panel_id,
                "reason": reason,
                "error": error,
                "not_logged_before": self._unlogged.pop(key, None),
            },
        )

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest entries first."""
        return [asdict(e) for e in list(self._entries)[::-1][:limit]]

    def __len__(self) -> int:
        return len(self._entries)
