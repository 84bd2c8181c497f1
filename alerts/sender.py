"""The outbox sender: a job that sends queued notifications through their channels.

It knows no channel: each message names one, and the channel says "sent", "try again"
(RetryableError) or "never" (PermanentError). Retries back off exponentially.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from alerts.channel import (
    Channel,
    OutboxMessage,
    OutcomeUnknown,
    PermanentError,
    RetryableError,
)
from alerts.rate_limit import RateLimiter
from alerts.reconcile import DOUBT_SETTLE_MS

logger = logging.getLogger(__name__)


class OutboxQueue(Protocol):
    async def due(
        self, now: int, channels: Collection[str], limit: int = 200
    ) -> list[OutboxMessage]: ...
    async def next_due_at(self, channels: Collection[str]) -> int | None: ...
    async def claim(self, message_id: int, now: int) -> bool: ...
    async def mark_sent(
        self, message_id: int, now: int, provider_id: str | None = None, *, lazy: bool = True
    ) -> None: ...
    async def mark_retry(self, message_id: int, next_attempt_at: int, error: str) -> None: ...
    async def mark_failed(self, message_id: int, error: str) -> None: ...
    async def mark_unknown(self, message_id: int, error: str, look_at: int) -> None: ...
    async def mark_dropped(self, message_id: int, reason: str) -> None: ...
    async def hold(self, message_id: int, until: int, reason: str, now: int) -> None: ...


class ClockLike(Protocol):
    def now_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt n+1: initial × 2ⁿ, capped, with ±20 % jitter."""

    initial_ms: int = 500
    max_ms: int = 30_000

    def delay_ms(self, attempts: int) -> int:
        base = min(self.initial_ms * (2 ** min(attempts, 30)), self.max_ms)
        return int(base * random.uniform(0.8, 1.2))


class OutboxSender:
    """Sends every due outbox message; named job `outbox-sender`."""

    name = "outbox-sender"

    def __init__(
        self,
        queue: OutboxQueue,
        channels: Mapping[str, Channel],
        clock: ClockLike,
        *,
        backoff: Backoff | None = None,
        concurrency: int = 32,
        batch: int = 200,
        limiter: RateLimiter | None = None,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        self.queue = queue
        self.limiter = limiter
        self.channels = dict(channels)
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.on_result = on_result or (lambda channel, outcome: None)
        # Requests to providers in flight at once; unit alerts are not counted (see Channel).
        self._limit = asyncio.Semaphore(concurrency)
        # Sends run as tasks of their own: cancelling the job (the hub stopping) does not
        # cut a request off halfway, where nobody could tell whether it reached Twilio.
        # By message id: until its outcome is committed a message may still read as
        # queued, and must not be sent a second time meanwhile.
        self._inflight: dict[int, asyncio.Task[str | None]] = {}

    async def run_once(self) -> float | None:
        """Send what is due; seconds until the next message falls due (None: none queued)."""
        messages = await self.queue.due(self.clock.now_ms(), self.channels.keys(), self.batch)
        if messages:
            # due() offers one message per recipient, so sending them together keeps
            # each recipient's messages in order. One already being sent (the fast path's)
            # is waited for, not sent again.
            started = [self._start(m) for m in messages if m.id not in self._inflight]
            going = [self._inflight[m.id] for m in messages if m.id in self._inflight]
            await asyncio.wait(started + going)
            failures = [
                e for t in started if not t.cancelled() and (e := t.exception()) is not None
            ]
            if failures:
                raise failures[0]  # the runner logs it and tries again
            return 0.0  # a recipient's next message may be waiting behind this one
        next_at = await self.queue.next_due_at(self.channels.keys())
        if next_at is None:
            return None
        return max(0.0, (next_at - self.clock.now_ms()) / 1000)

    def send_now(
        self, messages: Collection[OutboxMessage], then: Callable[[bool], None] | None = None
    ) -> None:
        """Send these just-committed messages at once, without waiting for `run_once`.

        Their rows must not be due yet (`run_once` would offer them too); a send that
        fails is queued for retry like any other. `then(all_sent)` runs when all are done:
        all_sent is False when one did not go out now (held, to retry, failed, or its
        outcome not stored), so that `run_once` takes it over. Messages of a channel this
        sender does not have stay queued for one that has it.
        """
        messages = [m for m in messages if m.channel in self.channels]
        sends = [self._start(m) for m in messages]

        def all_done(_: asyncio.Future[object]) -> None:
            all_sent = True
            for m, task in zip(messages, sends, strict=True):
                if task.cancelled():
                    all_sent = False
                elif task.exception() is not None:
                    all_sent = False
                    # Its row stays queued and falls due shortly: the sender sends it then.
                    logger.warning(
                        "fast send not recorded; the outbox sender takes it over",
                        extra={"channel": m.channel, "id": m.id, "error": str(task.exception())},
                    )
                elif task.result() != "sent":
                    all_sent = False
            if then is not None:
                then(all_sent)

        if sends:
            asyncio.gather(*sends, return_exceptions=True).add_done_callback(all_done)
        elif then is not None:
            then(True)

    def _start(self, message: OutboxMessage) -> asyncio.Task[str | None]:
        task = asyncio.create_task(self._send(message))
        self._inflight[message.id] = task
        task.add_done_callback(lambda _: self._inflight.pop(message.id, None))
        return task

    @property
    def in_flight(self) -> int:
        """Sends started and not yet answered."""
        return sum(not task.done() for task in self._inflight.values())

    async def drain(self, timeout: float) -> int:
        """Wait for the sends in flight to finish (at most `timeout` s); how many did not."""
        if not self._inflight:
            return 0
        _, pending = await asyncio.wait(set(self._inflight.values()), timeout=timeout)
        return len(pending)

    async def abandon(self) -> int:
        """Cancel the sends still in flight and wait for them to end; how many there were.

        A claimed message stays claimed: the next start marks it unknown, never sends it
        again (nobody can tell whether the provider had it)."""
        tasks = [task for task in self._inflight.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    async def close(self) -> None:
        """Close the channels that hold connections (those with an async `close`)."""
        for channel in self.channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # stopping: one channel's failure must not stop the rest
                    logger.exception("closing a channel failed", extra={"channel": channel.name})

    async def _send(self, message: OutboxMessage) -> str | None:
        """Send one message and record what came of it; the outcome ("sent", "retry",
        "failed", "unknown", "dropped", "held"), or None when it was not queued any more."""
        outcome = await self._attempt(message)
        if outcome is not None:
            self.on_result(message.channel, outcome)
        return outcome

    async def _attempt(self, message: OutboxMessage) -> str | None:
        channel = self.channels[message.channel]  # due() offers only channels we have
        now = self.clock.now_ms()
        if message.alarm_over and not channel.idempotent:
            # Held back or retried past the alarm's end: telling people now only misleads.
            await self.queue.mark_dropped(message.id, f"alarm {message.alarm_state} first")
            return "dropped"
        claimed = not channel.idempotent
        async with contextlib.AsyncExitStack() as turn:
            if self.limiter is not None:
                await turn.enter_async_context(self.limiter.turn(message))
                now = self.clock.now_ms()  # the turn may have been waited for
                hold = await self.limiter.hold_until(message, now)
                if hold is not None:
                    await turn.aclose()  # a held message changes no count
                    await self.queue.hold(message.id, hold[0], hold[1], now)
                    return "held"
            if claimed:
                if not await self.queue.claim(message.id, now):
                    return None  # not queued any more
                # The claim recorded the send (its sent_at): the next message's count sees it.
                await turn.aclose()
            # An unclaimed message is recorded once sent: its turn lasts until then.
            return await self._deliver(message, channel, claimed)

    async def _deliver(self, message: OutboxMessage, channel: Channel, claimed: bool) -> str:
        """Send a message that may go now and record the outcome."""
        async with self._limit if channel.remote else contextlib.nullcontext():
            try:
                provider_id = await channel.send(message)
            except OutcomeUnknown as exc:
                # Not sent again blindly: the reconciler asks the provider once the
                # request's outcome has settled there.
                await self.queue.mark_unknown(
                    message.id, f"outcome unknown: {exc}", self.clock.now_ms() + DOUBT_SETTLE_MS
                )
                logger.error(
                    "notification may or may not have gone out; the provider will be asked",
                    extra={"channel": message.channel, "id": message.id, "error": str(exc)},
                )
                return "unknown"
            except PermanentError as exc:
                await self.queue.mark_failed(message.id, str(exc))
                logger.error(
                    "notification failed for good",
                    extra={"channel": message.channel, "id": message.id, "error": str(exc)},
                )
                return "failed"
            except (RetryableError, Exception) as exc:
                # Anything unforeseen is retried too: a bug must not drop an alert.
                delay = self.backoff.delay_ms(message.attempts)
                await self.queue.mark_retry(message.id, self.clock.now_ms() + delay, str(exc))
                logger.warning(
                    "notification not sent; will retry",
                    extra={
                        "channel": message.channel,
                        "id": message.id,
                        "error": str(exc),
                        "retry_in_ms": delay,
                    },
                )
                return "retry"
        # A claimed message left its line at the claim; one sent unclaimed (a unit alert)
        # holds the next one of its line back until this is committed: not lazily, then.
        await self.queue.mark_sent(message.id, self.clock.now_ms(), provider_id, lazy=claimed)
        return "sent"
