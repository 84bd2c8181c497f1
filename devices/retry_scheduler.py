"""One thread that repeats unreceipted events when their backoff runs out."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class RetryScheduler:
    """Calls `fire(seq)` when a seq's due time comes; one daemon thread for every event."""

    def __init__(self, fire: Callable[[int], None], name: str) -> None:
        self._fire = fire
        self._due: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, seq: int, delay: float) -> None:
        """Fire seq after delay seconds, replacing any earlier schedule of it."""
        with self._cond:
            due = time.monotonic() + delay
            self._due[seq] = due
            heapq.heappush(self._heap, (due, seq))
            self._cond.notify()

    def cancel(self, seq: int) -> None:
        with self._cond:
            # Its heap entry stays and is skipped when it comes up: no O(n) removal.
            self._due.pop(seq, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _next(self) -> int | None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    due, seq = heapq.heappop(self._heap)
                    if self._due.get(seq) == due:
                        del self._due[seq]
                        return seq
                    continue
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _run(self) -> None:
        while (seq := self._next()) is not None:
            try:
                self._fire(seq)
            except Exception:
                logger.exception("event retry failed", extra={"seq": seq})
