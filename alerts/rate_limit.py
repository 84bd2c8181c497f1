"""Per-recipient rate limits in tiers: no phone gets more than N messages of a kind per window."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from alerts.channel import OutboxMessage


@dataclass(frozen=True, slots=True)
class Tier:
    """At most `count` messages in any `window_ms`."""

    count: int
    window_ms: int


DEFAULT_TIERS: Mapping[str, tuple[Tier, ...]] = {
    "sms": (Tier(5, 15 * 60_000),),
    "voice": (Tier(3, 15 * 60_000),),
    "push": (Tier(20, 15 * 60_000),),
}

RecentSends = Callable[[str, str, int], Awaitable[list[int]]]


@dataclass(slots=True)
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting for the lock


class RateLimiter:
    """Says how long a message must wait so that no tier of its channel is exceeded."""

    def __init__(
        self, recent_sends: RecentSends, tiers: Mapping[str, tuple[Tier, ...]] = DEFAULT_TIERS
    ) -> None:
        # (channel, recipient, since_ms) → when messages went out, oldest first
        self.recent_sends = recent_sends
        self.tiers = dict(tiers)
        self._turns: dict[tuple[str, str], _Turn] = {}

    @contextlib.asynccontextmanager
    async def turn(self, message: OutboxMessage) -> AsyncIterator[None]:
        """The message's recipient's turn on its channel: one message at a time per
        (channel, recipient), for channels with tiers.

        Asking `hold_until` and recording the send where `recent_sends` reads it must both
        happen within the turn. Sends in flight together would otherwise all read the same
        count before any of them is recorded, and all go: a storm would reach a phone as
        many times as it has alarms, whatever the limit.
        """
        if not self.tiers.get(message.channel):
            yield
            return
        key = (message.channel, message.recipient)
        turn = self._turns.setdefault(key, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:  # nobody waits: the next message makes a new one
                del self._turns[key]

    async def hold_until(self, message: OutboxMessage, now: int) -> tuple[int, str] | None:
        """(until, why) when the message must wait, None when it may go now."""
        tiers = self.tiers.get(message.channel)
        if not tiers:
            return None
        longest = max(t.window_ms for t in tiers)
        sends = await self.recent_sends(message.channel, message.recipient, now - longest)
        until, why = 0, ""
        for tier in tiers:
            in_window = [t for t in sends if t > now - tier.window_ms]
            if len(in_window) >= tier.count:
                free_at = in_window[-tier.count] + tier.window_ms
                if free_at > until:
                    minutes = tier.window_ms / 60_000
                    until = free_at
                    why = (
                        f"rate limit: {len(in_window)} {message.channel} to {message.recipient}"
                        f" in the last {minutes:g} min (at most {tier.count})"
                    )
        return (until, why) if until > now else None
