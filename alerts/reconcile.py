"""Sends whose outcome is unknown, made known by asking the provider what it has.

A hub that died mid-request, or got no answer in time, cannot tell whether an SMS or a
call went out, so it never simply sends it again (a neighbour would be told twice). This
job asks the provider instead: if it holds the message, the send is confirmed; if it
never got it, the message is queued again. Either way the alarm's timeline says which.
Nobody is told twice, and nobody is left untold because a request died with the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Protocol, runtime_checkable

from alerts.channel import Channel, OutboxMessage

logger = logging.getLogger(__name__)

# A send in doubt is looked at this long after the hub gave up on its request (or started
# again after dying with it): a request the provider received is on its books by then.
DOUBT_SETTLE_MS = 2_000


@runtime_checkable
class Reconcilable(Protocol):
    """A channel whose provider can say which messages it holds."""

    name: str

    async def sent_since(self, message: OutboxMessage, since_ms: int) -> list[str]:
        """Provider ids of the records that could be this message, sent since `since_ms`;
        raises when the provider cannot be asked."""
        ...


class InDoubtLike(Protocol):
    message: OutboxMessage
    claimed_at: int


class DoubtQueue(Protocol):
    async def in_doubt(
        self, channels: Collection[str], now: int, limit: int = 100
    ) -> list[InDoubtLike]: ...
    async def next_doubt_at(self, channels: Collection[str]) -> int | None: ...
    async def known_provider_ids(self, provider_ids: Collection[str]) -> set[str]: ...
    async def confirm_sent(self, message_id: int, provider_id: str, now: int) -> bool: ...
    async def resend(self, message_id: int, now: int) -> bool: ...
    async def recheck_later(self, message_id: int, at: int, error: str) -> None: ...


class ClockLike(Protocol):
    def now_ms(self) -> int: ...


class SendReconciler:
    """The named job `send-reconciler`: asks the provider about every unknown send."""

    name = "send-reconciler"

    def __init__(
        self,
        queue: DoubtQueue,
        channels: Mapping[str, Channel],
        clock: ClockLike,
        *,
        recheck_ms: int = 30_000,
        on_resend: Callable[[], None] = lambda: None,
    ) -> None:
        self.queue = queue
        self.channels = channels  # the sender's: channels join it as the hub starts
        self.clock = clock
        self.recheck_ms = recheck_ms
        self.on_resend = on_resend

    async def run_once(self) -> float | None:
        """Settle every unknown send that is due; seconds until the next falls due."""
        askable = {n: c for n, c in self.channels.items() if isinstance(c, Reconcilable)}
        if not askable:
            return None
        now = self.clock.now_ms()
        doubts = await self.queue.in_doubt(askable.keys(), now)
        resent = 0
        for doubt in doubts:
            resent += await self._settle(askable[doubt.message.channel], doubt, now)
        if resent:
            self.on_resend()
        if len(doubts) >= 100:
            return 0.0  # a crash left many: go on with the next batch
        next_at = await self.queue.next_doubt_at(askable.keys())
        return None if next_at is None else max(0.0, (next_at - self.clock.now_ms()) / 1000)

    async def _settle(self, channel: Reconcilable, doubt: InDoubtLike, now: int) -> int:
        """Confirm or queue again one unknown send; 1 if it was queued again."""
        message = doubt.message
        try:
            candidates = await channel.sent_since(message, doubt.claimed_at)
        except Exception as exc:
            await self.queue.recheck_later(message.id, now + self.recheck_ms, str(exc))
            logger.warning(
                "cannot ask the provider about a send in doubt; asking again later",
                extra={"channel": message.channel, "id": message.id, "error": str(exc)},
            )
            return 0
        # A record the outbox already holds is another message's: each confirms one.
        known = await self.queue.known_provider_ids(candidates)
        provider_id = next((c for c in candidates if c not in known), None)
        if provider_id is not None:
            await self.queue.confirm_sent(message.id, provider_id, now)
            logger.info(
                "send in doubt confirmed: the provider has it",
                extra={"channel": message.channel, "id": message.id, "provider_id": provider_id},
            )
            return 0
        await self.queue.resend(message.id, now)
        logger.warning(
            "send in doubt never reached the provider; sending it again",
            extra={"channel": message.channel, "id": message.id},
        )
        return 1
