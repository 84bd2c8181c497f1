"""One write transaction as the alarm rules see it, and the words they speak in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from alerts.channel import OutboxMessage
from devices.protocol import Reason
from hub.alarms.alarm_store import Alarm, AlarmTx
from hub.alarms.contact_store import ContactTx
from hub.alarms.outbox_store import OutboxTx
from hub.alarms.policy import PolicySet
from hub.alarms.trouble_store import TroubleTx
from hub.registry.model import Registry
from hub.storage.db import Conn


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """The tunable parts of the lifecycle."""

    cancel_window_ms: int = 120_000
    max_wrong_pins: int = 5
    # Signed events: how far a panel's `ts` may be from the hub's time, as alarm
    # receivers allow (SIA DC-09: −40 s / +20 s).
    ts_behind_ms: int = 40_000
    ts_ahead_ms: int = 20_000


@dataclass(frozen=True, slots=True)
class AlarmChange:
    """What changed about an alarm in a transaction, for whoever watches live."""

    alarm_id: str
    unit_id: str
    kind: str
    state: str
    change: str  # raised, state, step, note


# How long a message handed to the fast path waits before the outbox sender sends it
# instead: only after a crash between commit and send, or a send that never started.
FAST_PATH_GRACE_MS = 5_000

# What a writer calls once its transaction committed: (outbox rows queued, what changed,
# messages for the fast path).
AfterCommit = Callable[[int, tuple[AlarmChange, ...], tuple[OutboxMessage, ...]], None]


@dataclass(slots=True)
class AlarmContext:
    """What the rules consult: who lives where, the ladders, the tunables.

    Shared by every part of the hub; an imported registry replaces `registry` in place.
    """

    registry: Registry
    policies: PolicySet
    rules: LifecycleRules = LifecycleRules()
    public_url: str = "http://127.0.0.1:8080"  # how phones and browsers reach the hub
    language: str = "en"  # whom the registry gives none is written to in this one
    timezone: str = "Asia/Shanghai"  # the times in messages


@dataclass
class Work:
    """One write transaction as the lifecycle sees it."""

    alarms: AlarmTx
    outbox: OutboxTx
    contacts: ContactTx
    troubles: TroubleTx
    context: AlarmContext
    now: int
    queued: int = 0  # outbox rows added: the sender has work
    changes: list[AlarmChange] = field(default_factory=list)
    # Messages to send the moment this transaction commits (see queue_message).
    fast_sends: list[OutboxMessage] = field(default_factory=list)

    @classmethod
    def begin(cls, conn: Conn, context: AlarmContext, now: int) -> Work:
        """The lifecycle's view of the write transaction `conn` is in."""
        return cls(AlarmTx(conn), OutboxTx(conn), ContactTx(conn), TroubleTx(conn), context, now)

    @property
    def registry(self) -> Registry:
        return self.context.registry

    def queue_message(
        self, *, alarm_id: str | None, alarm_state: str | None, channel: str, recipient: str,
        payload: str, key: str,
    ) -> None:  # fmt: skip
        """Queue one message, unless one with this key was queued before.

        The row is the promise. When no older message to the recipient about the same
        alarm waits on the same channel, it is also handed to the fast path (`fast_sends`),
        sent as soon as the transaction commits rather than when the outbox sender next
        looks; behind a waiting one it goes the slow way, so the recipient hears them in
        order.
        """
        fast = not self.outbox.has_queued(channel, recipient, alarm_id)
        message_id = self.outbox.enqueue(
            alarm_id=alarm_id,
            channel=channel,
            recipient=recipient,
            payload=payload,
            idempotency_key=key,
            now=self.now,
            not_before=self.now + FAST_PATH_GRACE_MS if fast else None,
        )
        if message_id is None:
            return
        self.queued += 1
        if fast:
            self.fast_sends.append(
                OutboxMessage(
                    message_id, alarm_id, channel, recipient, payload, key, 0, alarm_state
                )
            )

    def changed(self, alarm: Alarm, change: str) -> None:
        """Note a change of the alarm (in its state as given) for live watchers."""
        self.changes.append(AlarmChange(alarm.id, alarm.unit_id, alarm.kind, alarm.state, change))

    def reload(self, alarm: Alarm) -> Alarm:
        """The alarm as this transaction now sees it."""
        fresh = self.alarms.get_alarm(alarm.id)
        assert fresh is not None
        return fresh


@dataclass(frozen=True, slots=True)
class Responder:
    """Who acts on an alarm: `actor` for the timeline, `role` as the policy names it."""

    actor: str  # household:u-0001/h-02, phone:+1555…, user:alice
    role: str  # neighbors, key_households, patrol, police, command, household, system


class Refused(Exception):
    """The rules refuse the action; what was recorded before the refusal (a wrong PIN) stays."""

    def __init__(self, reason: Reason, detail: str, alarm_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.alarm_id = alarm_id

    @property
    def error(self) -> str:
        return f"{self.reason.value}: {self.detail}"
