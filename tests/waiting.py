"""Waiting in tests for state that other threads, tasks or processes change."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


async def until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 5.0, every: float = 0.02
) -> None:
    """Wait until predicate() (plain or awaitable) holds, asking every `every` seconds;
    fail with TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            # Polling: the state lives in other threads, tasks or a database.
            await asyncio.sleep(every)
