"""The event loop the hub's processes run on: uvloop where it is installed, else asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop, as `asyncio.run` does.

    uvloop's loop does the same work as asyncio's in C: with 10,000 panels heartbeating
    the hub's one thread spends a large share of its time in the loop itself.
    """
    try:
        import uvloop
    except ImportError:  # not on every platform (Windows): asyncio's loop works the same
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
