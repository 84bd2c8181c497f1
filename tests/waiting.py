"""Waiting in tests for state that other threads, tasks or processes change."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any


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


def settled(count: Callable[[], int], quiet_s: float = 1.0, timeout: float = 15) -> int:
    """`count()` once it is above zero and has stopped growing for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last == 0 or time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still growing after {timeout} s"
        time.sleep(0.05)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


class ProcessLogs:
    """A process's JSON log lines on stderr, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def wait_for(self, msg: str, timeout: float = 20) -> dict:
        """The first line saying `msg`, once it has come; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.lines:
                if entry["msg"] == msg:
                    return entry
            time.sleep(0.05)
        raise AssertionError(f"no {msg!r} in {[e['msg'] for e in self.lines]}")

    def messages(self) -> list[str]:
        """Every line's message, once the process has closed its stderr (exited)."""
        self._reader.join(timeout=10)
        return [entry["msg"] for entry in self.lines]
