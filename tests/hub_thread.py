"""A real hub in a thread of its own, for tests whose own thread blocks (a browser driver)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from tests.conftest import HubRunner

T = TypeVar("T")


class HubInThread:
    """Runs `HubRunner` on an event loop in a background thread; `call` runs coroutines there."""

    def __init__(self, broker_url: str, db_path, registry, **settings: Any) -> None:
        self.runner = HubRunner(broker_url, db_path, registry, **settings)
        self.hub = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hub", daemon=True)

    def start(self, timeout: float = 20.0):
        """Start the loop and the hub; the running Hub."""
        self._thread.start()
        self.hub = self.call(self.runner.start(), timeout)
        return self.hub

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the hub's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the hub in order, then the loop."""
        try:
            self.call(self.runner.stop(), 20)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
