"""Named background jobs over database state, and the loop that runs each one.

A job does all work that is due when asked and says when more falls due; nothing it
needs lives only in memory, so a restart resumes where the database says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

logger = logging.getLogger(__name__)


class Job(Protocol):
    name: str

    async def run_once(self) -> float | None:
        """Do all work due now; hub seconds until more falls due (None: wait for a tick)."""
        ...


class JobRunner:
    """Runs a job when woken, when its next work falls due, and on a safety tick."""

    def __init__(self, job: Job, *, tick_s: float = 1.0, speed: float = 1.0) -> None:
        self.job = job
        self.tick_s = tick_s  # wall-clock seconds
        self.speed = speed  # hub seconds per wall-clock second (simulations run faster)
        self._wake = asyncio.Event()
        self.runs = 0

    def wake(self) -> None:
        """Ask for a run as soon as possible (something changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled; a failing run is logged and retried on the next tick."""
        while True:
            self._wake.clear()
            try:
                delay = await self.job.run_once()
            except Exception:
                logger.exception("job failed", extra={"job": self.job.name})
                delay = self.tick_s
            self.runs += 1
            # A job says when its next work falls due in hub time; we sleep in wall time.
            wait = self.tick_s if delay is None else max(0.0, min(delay / self.speed, self.tick_s))
            if wait > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # lands as the wait ends, and the job would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
