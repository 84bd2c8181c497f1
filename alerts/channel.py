"""What every notification channel is: send one message; RetryableError means "try again"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One queued notification, as the sender hands it to a channel."""

    id: int
    alarm_id: str | None
    channel: str
    recipient: str
    payload: str
    idempotency_key: str
    attempts: int
    alarm_state: str | None = None  # the alarm's state when the message was picked up

    @property
    def alarm_over(self) -> bool:
        """The alarm was resolved or cancelled before this message went out."""
        return self.alarm_state in ("resolved", "cancelled")


class RetryableError(Exception):
    """The send did not happen and may succeed later (broker down, provider 5xx)."""


class PermanentError(Exception):
    """The send can never succeed as written (bad number, unknown recipient)."""


class OutcomeUnknown(Exception):
    """The request went out but no answer came back (a timeout after sending).

    The message may have been delivered: it must not be sent again.
    """


class Channel(Protocol):
    """A way to reach people: the panel unit alert, SMS, voice, push."""

    name: str
    # True when sending twice does no harm (a unit alert is a state, not a message):
    # such sends are simply retried after a crash instead of being marked unknown.
    idempotent: bool
    # True when a send is a request to a provider (Twilio, a push service), counted
    # against the sender's limit of requests in flight; a unit alert goes out on the
    # hub's own broker connection and must never wait behind a queue of SMS.
    remote: bool

    async def send(self, message: OutboxMessage) -> str | None:
        """Deliver one message; return the provider's id when there is one.

        Raise RetryableError when it should be attempted again, PermanentError when never,
        OutcomeUnknown when it may or may not have gone out.
        """
        ...
