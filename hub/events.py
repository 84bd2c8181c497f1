"""Live events for dashboards: alarm and panel changes, fanned out to every listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


class EventBus:
    """Publish once, every subscriber gets it; a listener too slow to keep up is cut off.

    Cutting off (not blocking, not growing without bound) keeps a stuck browser from
    slowing the alarm path; its EventSource reconnects and reloads the state.
    """

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)  # tells the listener it was dropped
                logger.warning("live listener too slow; disconnected")

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue of events (None: you were dropped) for as long as the block runs."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self.queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def __len__(self) -> int:
        return len(self._subscribers)
