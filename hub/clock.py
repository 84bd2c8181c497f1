"""Time as the hub sees it: injected everywhere so tests can move it instead of sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Current time in epoch milliseconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to; starts at the wall clock's time."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = start_ms if start_ms is not None else time.time_ns() // 1_000_000
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> int:
        """Move the clock forward and return the new time in ms."""
        with self._lock:
            self._now += int(seconds * 1000)
            return self._now


class ScaledClock:
    """Hub time that runs `speed` times faster than the wall clock, from a fixed epoch.

    For simulations only: a ladder of minutes plays out in seconds. Anchored to an epoch
    on the wall clock (not to when this process started), so a hub killed and started
    again carries on at the same hub time instead of jumping back.
    """

    def __init__(self, speed: float, epoch_ms: int) -> None:
        self.speed = speed
        self.epoch_ms = epoch_ms

    def now_ms(self) -> int:
        wall = time.time_ns() // 1_000_000
        return self.epoch_ms + int((wall - self.epoch_ms) * self.speed)
