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
        self._closed = False

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                _drop(self._subscribers, queue)
                logger.warning("live listener too slow; disconnected")

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue of events (None: you were dropped) for as long as the block runs."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self.queue_size)
        if self._closed:
            queue.put_nowait(None)
        else:
            self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every listener's stream, and any opened later at once: the hub is stopping.

        A live stream never ends of itself; the web server would wait for it to.
        """
        self._closed = True
        for queue in list(self._subscribers):
            _drop(self._subscribers, queue)

    def __len__(self) -> int:
        return len(self._subscribers)


def _drop(subscribers: set[asyncio.Queue[dict[str, Any] | None]], queue: asyncio.Queue) -> None:
    """Tell a listener it is dropped (None, in place of its oldest event if full)."""
    subscribers.discard(queue)
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(None)
