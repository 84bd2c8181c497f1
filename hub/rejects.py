"""A bounded log of refused messages, newest last: what an operator reads to find a bad panel."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    at: int
    topic: str
    panel_id: str | None
    reason: str
    error: str
    payload_excerpt: str


class RejectLog:
    """Keeps the last `size` refused messages in memory; a flood can never grow it."""

    def __init__(self, size: int = 500) -> None:
        self._entries: deque[RejectedMessage] = deque(maxlen=size)

    def add(
        self, *, at: int, topic: str, panel_id: str | None, reason: str, error: str, payload: bytes
    ) -> None:
        excerpt = payload[:200].decode("utf-8", errors="backslashreplace")
        entry = RejectedMessage(at, topic[:300], panel_id, reason, error, excerpt)
        self._entries.append(entry)
        logger.warning(
            "message refused",
            extra={"topic": entry.topic, "panel_id": panel_id, "reason": reason, "error": error},
        )

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest entries first."""
        return [asdict(e) for e in list(self._entries)[::-1][:limit]]

    def __len__(self) -> int:
        return len(self._entries)
