"""SQL for the outbox: notifications written with the change that caused them, sent later."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from alerts.channel import OutboxMessage
from hub.alarm_store import AlarmTx
from hub.db import Database


class OutboxTx:
    """Outbox writes inside the current write transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.conn = db.conn

    def enqueue(
        self,
        *,
        alarm_id: str | None,
        channel: str,
        recipient: str,
        payload: str,
        idempotency_key: str,
        now: int,
        not_before: int | None = None,
    ) -> int | None:
        """Queue one message, due at `not_before` (default now); its id, or None when a
        message with this key was queued before."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO outbox (alarm_id, channel, recipient, payload,"
            " idempotency_key, status, attempts, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (
                alarm_id,
                channel,
                recipient,
                payload,
                idempotency_key,
                now if not_before is None else not_before,
                now,
            ),
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    def has_queued(self, channel: str, recipient: str, alarm_id: str | None) -> bool:
        """Whether a message to this recipient on this channel about this alarm (or about
        none, for None) is still waiting to go."""
        return (
            self.conn.execute(
                "SELECT 1 FROM outbox WHERE channel = ? AND recipient = ? AND status = 'queued'"
                " AND alarm_id IS ? LIMIT 1",
                (channel, recipient, alarm_id),
            ).fetchone()
            is not None
        )

    def exists(self, idempotency_key: str) -> bool:
        """Whether a message with this key was ever queued."""
        return (
            self.conn.execute(
                "SELECT 1 FROM outbox WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            is not None
        )


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        row["id"],
        row["alarm_id"],
        row["channel"],
        row["recipient"],
        row["payload"],
        row["idempotency_key"],
        row["attempts"],
        row["alarm_state"],
    )


def _note_on_timeline(
    d: sqlite_utils.Database, row: Any, now: int, entry: str, actor: str, detail: dict
) -> None:
    """Write what became of an outbox message (`row`: its alarm_id, channel and recipient)
    on its alarm's timeline; nothing for a message about no alarm."""
    if not row["alarm_id"]:
        return
    alarms = AlarmTx(d)
    alarm = alarms.get_alarm(row["alarm_id"])
    alarms.append_timeline(
        row["alarm_id"], now, entry, alarm.state if alarm else "", actor=actor,
        channel=row["channel"], detail={"recipient": row["recipient"], **detail},
    )  # fmt: skip


# A status only moves forward; the provider's delivery word only to a higher rank.
_DELIVERY_RANK = {
    "queued": 0,
    "accepted": 0,
    "initiated": 1,
    "sending": 1,
    "ringing": 2,
    "sent": 2,
    "in-progress": 3,
    "answered": 3,
    "delivered": 4,
    "read": 4,
    "completed": 4,
    "undelivered": 4,
    "failed": 4,
    "busy": 4,
    "no-answer": 4,
    "canceled": 4,
}
DELIVERY_FAILURES = frozenset({"undelivered", "failed", "busy", "no-answer", "canceled"})


# A queued message older than o to the same recipient about the same alarm (or both about
# none): o waits its turn behind it.
_OLDER_IN_LINE = (
    "SELECT 1 FROM outbox e WHERE e.channel = o.channel AND e.recipient = o.recipient"
    " AND e.alarm_id IS o.alarm_id AND e.status = 'queued' AND e.id < o.id"
)


@dataclass(frozen=True, slots=True)
class InDoubt:
    """A send whose outcome is unknown: the message, and when it was claimed for sending."""

    message: OutboxMessage
    claimed_at: int


class OutboxStore:
    """The sender's view of the outbox: queued → sending → sent, or failed / unknown / dropped.

    No update ever moves a message backwards: each names the statuses it may leave. The
    one way back is from unknown, once the provider has been asked: to sent when it has
    the message, to queued when it never got it.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(
        self, now: int, channels: Collection[str], limit: int = 200
    ) -> list[OutboxMessage]:
        """Queued messages of these channels due now, oldest first, one per recipient and alarm.

        Only the oldest queued message to a recipient about an alarm is offered, so a
        unit's buzzers never get "cancelled" before "raised" when the first send has to be
        retried. Another alarm's messages do not wait behind it: a patrol's phone told of
        ten alarms at once gets ten SMS at once, and one being retried holds back no other
        alarm. Messages of channels not offered here stay queued until a sender that has
        them runs.
        """
        marks = ", ".join("?" * len(channels))

        def q(d: sqlite_utils.Database) -> list[OutboxMessage]:
            rows = d.conn.execute(
                "SELECT o.*, a.state AS alarm_state FROM outbox o"
                " LEFT JOIN alarms a ON a.id = o.alarm_id"
                " WHERE o.status = 'queued' AND o.next_attempt_at <= ?"
                f" AND o.channel IN ({marks})"
                f" AND NOT EXISTS ({_OLDER_IN_LINE})"
                " ORDER BY o.id LIMIT ?",
                (now, *channels, limit),
            ).fetchall()
            return [_message(r) for r in rows]

        return await self.db.read(q) if channels else []

    async def next_due_at(self, channels: Collection[str]) -> int | None:
        """When the earliest queued message of these channels that `due` could offer falls
        due (the oldest to its recipient about its alarm); None if none is queued."""
        marks = ", ".join("?" * len(channels))
        # Only the head of each recipient's line counts: a message waiting behind an older
        # one that is retrying later is not due, and must not wake the sender in a spin.
        return await self.db.read(
            lambda d: d.conn.execute(
                "SELECT min(o.next_attempt_at) FROM outbox o WHERE o.status = 'queued'"
                f" AND o.channel IN ({marks})"
                f" AND NOT EXISTS ({_OLDER_IN_LINE})",
                tuple(channels),
            ).fetchone()[0]
        )

    async def for_alarm(self, alarm_id: str) -> list[dict[str, Any]]:
        """Every notification of an alarm: who, how, and how far it got."""

        def q(d: sqlite_utils.Database) -> list[dict[str, Any]]:
            rows = d.conn.execute(
                "SELECT id, channel, recipient, payload, status, attempts, created_at, sent_at,"
                " provider_id, delivery, delivery_at, limited_at, last_error"
                " FROM outbox WHERE alarm_id = ? ORDER BY id",
                (alarm_id,),
            ).fetchall()
            return [dict(r) for r in rows]

        return await self.db.read(q)

    async def recent_sends(self, channel: str, recipient: str, since: int) -> list[int]:
        """When messages of a channel went to a recipient since `since`, oldest first."""
        return await self.db.read(
            lambda d: [
                r[0]
                for r in d.conn.execute(
                    "SELECT sent_at FROM outbox WHERE channel = ? AND recipient = ?"
                    " AND sent_at >= ? AND status IN ('sending', 'sent', 'unknown')"
                    " ORDER BY sent_at",
                    (channel, recipient, since),
                )
            ]
        )

    async def claim(self, message_id: int, now: int) -> bool:
        """Mark a message as going out, durably, before the send; False if it is not queued.

        A hub that dies during the send finds it `sending` and marks it unknown, never
        sends it again.
        """
        # Urgent: the send, and someone waiting for the alert, wait on this commit.
        return await self._update(
            "UPDATE outbox SET status = 'sending', sent_at = ? WHERE id = ? AND status = 'queued'",
            now,
            message_id,
            urgent=True,
        )

    async def mark_sent(
        self, message_id: int, now: int, provider_id: str | None = None, *, lazy: bool = True
    ) -> None:
        """Record a send; lazily (see `Database.write`) unless a message waits on it."""
        await self._update(
            "UPDATE outbox SET status = 'sent', sent_at = coalesce(sent_at, ?),"
            " attempts = attempts + 1, provider_id = ?, last_error = NULL"
            " WHERE id = ? AND status IN ('queued', 'sending')",
            now,
            provider_id,
            message_id,
            lazy=lazy,
        )

    async def mark_retry(self, message_id: int, next_attempt_at: int, error: str) -> None:
        await self._update(
            "UPDATE outbox SET status = 'queued', sent_at = NULL, attempts = attempts + 1,"
            " next_attempt_at = ?, last_error = ? WHERE id = ? AND status IN ('queued', 'sending')",
            next_attempt_at,
            error[:500],
            message_id,
            lazy=True,
        )

    async def mark_failed(self, message_id: int, error: str) -> None:
        await self._update(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?"
            " WHERE id = ? AND status IN ('queued', 'sending')",
            error[:500],
            message_id,
            lazy=True,
        )

    async def mark_unknown(self, message_id: int, error: str, look_at: int) -> None:
        """The send may or may not have gone out: the provider is asked from `look_at` on."""
        await self._update(
            "UPDATE outbox SET status = 'unknown', attempts = attempts + 1, last_error = ?,"
            " next_attempt_at = ? WHERE id = ? AND status IN ('queued', 'sending')",
            error[:500],
            look_at,
            message_id,
            lazy=True,
        )

    async def mark_dropped(self, message_id: int, reason: str) -> None:
        await self._update(
            "UPDATE outbox SET status = 'dropped', last_error = ?"
            " WHERE id = ? AND status = 'queued'",
            reason,
            message_id,
            lazy=True,
        )

    async def hold(self, message_id: int, until: int, reason: str, now: int) -> None:
        """A rate limit holds the message back until `until`; the first hold goes on the
        alarm's timeline."""

        def w(d: sqlite_utils.Database) -> None:
            row = d.conn.execute(
                "SELECT alarm_id, channel, recipient, limited_at FROM outbox"
                " WHERE id = ? AND status = 'queued'",
                (message_id,),
            ).fetchone()
            if row is None:
                return
            d.conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, limited_at = coalesce(limited_at, ?),"
                " last_error = ? WHERE id = ?",
                (until, now, reason, message_id),
            )
            if row["limited_at"] is None:
                _note_on_timeline(
                    d, row, now, "notification_held", "system:rate-limit",
                    {"reason": reason, "until": until},
                )  # fmt: skip

        await self.db.write(w)

    async def recover_interrupted(self, look_at: int) -> int:
        """After a crash: messages caught `sending` may have gone out; mark them unknown,
        for the provider to be asked about from `look_at` on."""

        def w(d: sqlite_utils.Database) -> int:
            return d.conn.execute(
                "UPDATE outbox SET status = 'unknown', next_attempt_at = ?,"
                " last_error = 'the hub stopped while sending; the provider will be asked'"
                " WHERE status = 'sending'",
                (look_at,),
            ).rowcount

        return await self.db.write(w)

    async def in_doubt(
        self, channels: Collection[str], now: int, limit: int = 100
    ) -> list[InDoubt]:
        """Unknown sends of these channels due for a look at the provider, oldest first."""
        if not channels:
            return []
        marks = ", ".join("?" * len(channels))

        def q(d: sqlite_utils.Database) -> list[InDoubt]:
            rows = d.conn.execute(
                "SELECT o.*, a.state AS alarm_state, coalesce(o.sent_at, o.created_at) AS claimed"
                " FROM outbox o LEFT JOIN alarms a ON a.id = o.alarm_id"
                f" WHERE o.status = 'unknown' AND o.channel IN ({marks})"
                " AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
                (*channels, now, limit),
            ).fetchall()
            return [InDoubt(_message(r), r["claimed"]) for r in rows]

        return await self.db.read(q)

    async def next_doubt_at(self, channels: Collection[str]) -> int | None:
        """When the next unknown send of these channels is due for a look; None if none."""
        if not channels:
            return None
        marks = ", ".join("?" * len(channels))
        return await self.db.read(
            lambda d: d.conn.execute(
                "SELECT min(next_attempt_at) FROM outbox"
                f" WHERE status = 'unknown' AND channel IN ({marks})",
                tuple(channels),
            ).fetchone()[0]
        )

    async def known_provider_ids(self, provider_ids: Collection[str]) -> set[str]:
        """Which of these provider ids the outbox already records for a message."""
        if not provider_ids:
            return set()
        marks = ", ".join("?" * len(provider_ids))
        return await self.db.read(
            lambda d: {
                r[0]
                for r in d.conn.execute(
                    f"SELECT provider_id FROM outbox WHERE provider_id IN ({marks})",
                    tuple(provider_ids),
                )
            }
        )

    async def confirm_sent(self, message_id: int, provider_id: str, now: int) -> bool:
        """The provider has an unknown send: it went out. Noted on the alarm's timeline."""
        return await self._settle_doubt(
            message_id, now, "UPDATE outbox SET status = 'sent', provider_id = ?,"
            " last_error = NULL WHERE id = ? AND status = 'unknown'", (provider_id,),
            "notification_confirmed", {"provider_id": provider_id},
        )  # fmt: skip

    async def resend(self, message_id: int, now: int) -> bool:
        """The provider never got an unknown send: queue it again, due now. Noted on the
        alarm's timeline."""
        return await self._settle_doubt(
            message_id, now, "UPDATE outbox SET status = 'queued', sent_at = NULL,"
            " next_attempt_at = ?, last_error = 'the provider never received it; sent again'"
            " WHERE id = ? AND status = 'unknown'", (now,),
            "notification_resent", {"reason": "the provider never received it"},
        )  # fmt: skip

    async def recheck_later(self, message_id: int, at: int, error: str) -> None:
        """The provider could not be asked about an unknown send: ask again at `at`."""
        await self._update(
            "UPDATE outbox SET next_attempt_at = ?, last_error = ?"
            " WHERE id = ? AND status = 'unknown'",
            at,
            error[:500],
            message_id,
        )

    async def _settle_doubt(
        self, message_id: int, now: int, sql: str, params: tuple, entry: str, detail: dict
    ) -> bool:
        def w(d: sqlite_utils.Database) -> bool:
            if d.conn.execute(sql, (*params, message_id)).rowcount != 1:
                return False
            row = d.conn.execute(
                "SELECT alarm_id, channel, recipient FROM outbox WHERE id = ?", (message_id,)
            ).fetchone()
            _note_on_timeline(d, row, now, entry, "system:provider", detail)
            return True

        return await self.db.write(w)

    async def record_delivery(
        self, provider_id: str, status: str, now: int, error_code: str | None = None
    ) -> tuple[str | None, str, str] | None:
        """The provider's word on a message; ignored when it would move backwards.

        Returns (alarm id, channel, recipient) when the word was taken, else None.
        """
        rank = _DELIVERY_RANK.get(status)
        if rank is None:
            return None

        def w(d: sqlite_utils.Database) -> tuple[str | None, str, str] | None:
            row = d.conn.execute(
                "SELECT id, alarm_id, channel, recipient, delivery FROM outbox"
                " WHERE provider_id = ?",
                (provider_id,),
            ).fetchone()
            if row is None or _DELIVERY_RANK.get(row["delivery"] or "", -1) >= rank:
                return None
            d.conn.execute(
                "UPDATE outbox SET delivery = ?, delivery_at = ?,"
                " last_error = coalesce(?, last_error) WHERE id = ?",
                (status, now, f"provider error {error_code}" if error_code else None, row["id"]),
            )
            if status in DELIVERY_FAILURES:
                _note_on_timeline(
                    d, row, now, "notification_failed", "system:provider",
                    {"status": status, "error_code": error_code},
                )  # fmt: skip
            return row["alarm_id"], row["channel"], row["recipient"]

        return await self.db.write(w, lazy=True)

    async def _update(
        self, sql: str, *params: Any, urgent: bool = False, lazy: bool = False
    ) -> bool:
        return await self.db.write(
            lambda d: d.conn.execute(sql, params).rowcount == 1, urgent=urgent, lazy=lazy
        )

    async def counts(self) -> dict[str, int]:
        """Messages per status."""

        def q(d: sqlite_utils.Database) -> dict[str, int]:
            rows = d.conn.execute("SELECT status, count(*) FROM outbox GROUP BY status")
            return {r[0]: r[1] for r in rows}

        return await self.db.read(q)
