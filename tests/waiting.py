"""Waiting in tests for state that other threads, tasks or processes change."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

T = TypeVar("T")


async def until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    every: float = 0.02,
    message: str | None = None,
) -> None:
    """Wait until predicate() (plain or awaitable) holds, asking every `every` seconds;
    fail with TimeoutError saying what was awaited (`message`) after `timeout` seconds."""
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            while True:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                # Polling: the state lives in other threads, tasks or a database.
                await asyncio.sleep(every)
    except TimeoutError:
        if limit.expired():
            what = message or _named(predicate)
            raise TimeoutError(f"{what}: not so after {timeout} s") from None
        raise


async def within(awaitable: Awaitable[T], what: str, timeout: float = 20.0) -> T:
    """The awaitable's result; fail with TimeoutError naming `what` if it takes longer
    than `timeout` seconds."""
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await awaitable
    except TimeoutError:
        if limit.expired():
            raise TimeoutError(f"{what}: not within {timeout} s") from None
        raise


def wait_until(
    predicate: Callable[[], T],
    message: str | Callable[[], str],
    timeout: float = 20.0,
    every: float = 0.05,
) -> T:
    """predicate()'s first truthy value, asked every `every` seconds from a thread that
    may block; fail with AssertionError saying `message` (or what it returns, then) after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"{said}: not so after {timeout} s")
        time.sleep(every)
    return result


def _named(predicate: Callable[..., Any]) -> str:
    """Where a predicate was written, for a failure that names no wait of its own."""
    code = getattr(predicate, "__code__", None)
    if code is None:
        return repr(predicate)
    where = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"
    return f"{predicate.__qualname__} at {where}"


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


class ProcessOutput:
    """A process's text output (its stdout, say), line by line as it comes."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first line holding `text`, once it has come; fail after `timeout` seconds,
        or at once if the output ends without it."""

        def found() -> str | None:
            ended = not self._reader.is_alive()  # before looking: its last line is in
            line = next((line for line in self.lines if text in line), None)
            if line is None and ended:
                raise AssertionError(f"the output ended without {text!r}:\n{self.text()}")
            return line

        def missing() -> str:
            return f"no line with {text!r} in:\n{''.join(self.lines)}"

        return wait_until(found, missing, timeout)

    def text(self) -> str:
        """All of it, once the process has closed the stream (exited)."""
        self._reader.join(timeout=10)
        return "".join(self.lines)
