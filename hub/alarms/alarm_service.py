"""Acting on alarms from outside the panels: SMS replies, push actions and the web call this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alerts.channel import OutboxMessage
from hub.alarms import escalation, lifecycle
from hub.alarms.alarm_store import Alarm
from hub.alarms.work import AfterCommit, AlarmChange, AlarmContext, Refused, Responder, Work
from hub.clock import Clock
from hub.storage.db import Conn, Database


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The alarm after the action, or why the action was refused."""

    alarm: Alarm | None
    error: str | None = None
    changes: tuple[AlarmChange, ...] = ()
    fast_sends: tuple[OutboxMessage, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


Action = Callable[[Work, Alarm], Alarm]


class AlarmService:
    """acknowledge / on_scene / resolve, each one write transaction with its notifications."""

    def __init__(
        self,
        db: Database,
        context: AlarmContext,
        clock: Clock,
        on_change: AfterCommit,
    ) -> None:
        self.db = db
        self.context = context
        self.clock = clock
        self.on_change = on_change  # after commit: wake the sender, tell watchers

    async def acknowledge(self, alarm_id: str, responder: Responder, channel: str) -> ActionResult:
        """A responder takes the alarm ("I'm coming")."""
        return await self._act(
            alarm_id, lambda w, a: lifecycle.acknowledge(w, a, responder, channel)
        )

    async def on_scene(self, alarm_id: str, responder: Responder, channel: str) -> ActionResult:
        """A responder has arrived."""
        return await self._act(
            alarm_id, lambda w, a: lifecycle.mark_on_scene(w, a, responder, channel)
        )

    async def resolve(
        self,
        alarm_id: str,
        responder: Responder,
        channel: str,
        note: str,
        outcome: str = "handled",
    ) -> ActionResult:
        """The alarm is over; `note` says how, `outcome` is handled or false_alarm."""
        return await self._act(
            alarm_id, lambda w, a: lifecycle.resolve(w, a, responder, channel, note, outcome)
        )

    async def escalate_now(self, alarm_id: str, responder: Responder, channel: str) -> ActionResult:
        """Fire the alarm's next escalation step now."""
        return await self._act(
            alarm_id, lambda w, a: escalation.escalate_now(w, a, responder, channel)
        )

    async def _act(self, alarm_id: str, action: Action) -> ActionResult:
        now = self.clock.now_ms()

        def work(conn: Conn) -> tuple[ActionResult, int]:
            w = Work.begin(conn, self.context, now)
            try:
                alarm = action(w, lifecycle.get_alarm(w, alarm_id))
            except Refused as refusal:
                return ActionResult(None, refusal.error), w.queued
            return ActionResult(
                alarm, changes=tuple(w.changes), fast_sends=tuple(w.fast_sends)
            ), w.queued

        result, queued = await self.db.write(work)
        if result.ok:
            self.on_change(queued, result.changes, result.fast_sends)
        return result
