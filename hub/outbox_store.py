"""SQL for the outbox: notifications written with the change that caused them, sent later."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlite_utils

from alerts.channel import OutboxMessage
from hub.db import Database


class OutboxTx:
    """Outbox writes inside the current write transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.conn = db.conn

    def enqueue(
        self, *, alarm_id: str | None, channel: str, recipient: str, payload: str,
        idempotency_key: str, now: int,
    ) -> bool:
        """Queue one message; False when a message with this key was queued before."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO outbox (alarm_id, channel, recipient, payload,"
            " idempotency_key, status, attempts, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
            (alarm_id, channel, recipient, payload, idempotency_key, now, now),
        )
        return cur.rowcount == 1


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        row["id"], row["alarm_id"], row["channel"], row["recipient"], row["payload"],
        row["idempotency_key"], row["attempts"],
    )


class OutboxStore:
    """The sender's view of the outbox. Statuses only move forward: queued → sent/failed."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def due(
        self, now: int, channels: Collection[str], limit: int = 200
    ) -> list[OutboxMessage]:
        """Queued messages of these channels due now, oldest first, one per recipient.

        Only the oldest queued message of a recipient is offered, so a unit's buzzers never
        get "cancelled" before "raised" when the first send has to be retried. Messages of
        channels not offered here stay queued until a sender that has them runs.
        """
        marks = ", ".join("?" * len(channels))

        def q(d: sqlite_utils.Database) -> list[OutboxMessage]:
            rows = d.conn.execute(
                "SELECT o.* FROM outbox o WHERE o.status = 'queued' AND o.next_attempt_at <= ?"
                f" AND o.channel IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.channel = o.channel"
                "   AND e.recipient = o.recipient AND e.status = 'queued' AND e.id < o.id)"
                " ORDER BY o.id LIMIT ?",
                (now, *channels, limit),
            ).fetchall()
            return [_message(r) for r in rows]

        return await self.db.read(q) if channels else []

    async def next_due_at(self, channels: Collection[str]) -> int | None:
        """When the earliest queued message of these channels falls due; None if none is."""
        marks = ", ".join("?" * len(channels))
        return await self.db.read(
            lambda d: d.conn.execute(
                "SELECT min(next_attempt_at) FROM outbox WHERE status = 'queued'"
                f" AND channel IN ({marks})",
                tuple(channels),
            ).fetchone()[0]
        )

    async def for_alarm(self, alarm_id: str) -> list[dict[str, Any]]:
        """Every notification of an alarm: who, how, and how far it got."""

        def q(d: sqlite_utils.Database) -> list[dict[str, Any]]:
            rows = d.conn.execute(
                "SELECT id, channel, recipient, payload, status, attempts, created_at, sent_at,"
                " last_error FROM outbox WHERE alarm_id = ? ORDER BY id",
                (alarm_id,),
            ).fetchall()
            return [dict(r) for r in rows]

        return await self.db.read(q)

    async def mark_sent(self, message_id: int, now: int) -> None:
        def w(d: sqlite_utils.Database) -> None:
            d.conn.execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1,"
                " last_error = NULL WHERE id = ? AND status = 'queued'",
                (now, message_id),
            )

        await self.db.write(w)

    async def mark_retry(self, message_id: int, next_attempt_at: int, error: str) -> None:
        def w(d: sqlite_utils.Database) -> None:
            d.conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ? AND status = 'queued'",
                (next_attempt_at, error[:500], message_id),
            )

        await self.db.write(w)

    async def mark_failed(self, message_id: int, error: str) -> None:
        def w(d: sqlite_utils.Database) -> None:
            d.conn.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?"
                " WHERE id = ? AND status = 'queued'",
                (error[:500], message_id),
            )

        await self.db.write(w)

    async def counts(self) -> dict[str, int]:
        """Messages per status."""

        def q(d: sqlite_utils.Database) -> dict[str, int]:
            rows = d.conn.execute("SELECT status, count(*) FROM outbox GROUP BY status")
            return {r[0]: r[1] for r in rows}

        return await self.db.read(q)
