"""SQL for the outbox: notifications written with the change that caused them, sent later."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable, text

from alerts.channel import OutboxMessage
from hub.alarms.alarm_store import AlarmTx
from hub.storage.db import Conn, Database
from hub.storage.sql_text import query

_ENQUEUE = query(
    "INSERT INTO outbox (alarm_id, channel, recipient, payload, idempotency_key, status,"
    " attempts, next_attempt_at, created_at) VALUES (:alarm_id, :channel, :recipient,"
    " :payload, :idempotency_key, 'queued', 0, :next_attempt_at, :now)"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "id",
)
# `alarm_id IS :alarm_id` is SQLite's alone: a message about no alarm is asked apart.
_QUEUED_ABOUT = query(
    "SELECT 1 AS found FROM outbox WHERE channel = :channel AND recipient = :recipient"
    " AND status = 'queued' AND alarm_id = :alarm_id LIMIT 1",
    "found",
)
_QUEUED_ABOUT_NONE = query(
    "SELECT 1 AS found FROM outbox WHERE channel = :channel AND recipient = :recipient"
    " AND status = 'queued' AND alarm_id IS NULL LIMIT 1",
    "found",
)
_EXISTS = query("SELECT 1 AS found FROM outbox WHERE idempotency_key = :key", "found")


class OutboxTx:
    """Outbox writes inside the current write transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

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
        return self.conn.execute(
            _ENQUEUE,
            {
                "alarm_id": alarm_id,
                "channel": channel,
                "recipient": recipient,
                "payload": payload,
                "idempotency_key": idempotency_key,
                "next_attempt_at": now if not_before is None else not_before,
                "now": now,
            },
        ).scalar()

    def has_queued(self, channel: str, recipient: str, alarm_id: str | None) -> bool:
        """Whether a message to this recipient on this channel about this alarm (or about
        none, for None) is still waiting to go."""
        query = _QUEUED_ABOUT_NONE if alarm_id is None else _QUEUED_ABOUT
        params = {"channel": channel, "recipient": recipient, "alarm_id": alarm_id}
        return self.conn.execute(query, params).first() is not None

    def exists(self, idempotency_key: str) -> bool:
        """Whether a message with this key was ever queued."""
        return self.conn.execute(_EXISTS, {"key": idempotency_key}).first() is not None


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


def _note_on_timeline(conn: Conn, row: Any, now: int, entry: str, actor: str, detail: dict) -> None:
    """Write what became of an outbox message (`row`: its alarm_id, channel and recipient)
    on its alarm's timeline; nothing for a message about no alarm."""
    if not row["alarm_id"]:
        return
    alarms = AlarmTx(conn)
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
    " AND (e.alarm_id = o.alarm_id OR (e.alarm_id IS NULL AND o.alarm_id IS NULL))"
    " AND e.status = 'queued' AND e.id < o.id"
)
_MESSAGE = ("id", "alarm_id", "channel", "recipient", "payload", "idempotency_key", "attempts")
_MESSAGE_COLUMNS = ", ".join(f"o.{c}" for c in _MESSAGE) + ", a.state AS alarm_state"
_DUE = query(
    f"SELECT {_MESSAGE_COLUMNS} FROM outbox o LEFT JOIN alarms a ON a.id = o.alarm_id"
    " WHERE o.status = 'queued' AND o.next_attempt_at <= :now AND o.channel IN :channels"
    f" AND NOT EXISTS ({_OLDER_IN_LINE}) ORDER BY o.id LIMIT :limit",
    *_MESSAGE,
    "alarm_state",
    lists=["channels"],
)
# Only the head of each recipient's line counts: a message waiting behind an older one
# that is retrying later is not due, and must not wake the sender in a spin.
_NEXT_DUE_AT = query(
    "SELECT min(o.next_attempt_at) AS due_at FROM outbox o WHERE o.status = 'queued'"
    f" AND o.channel IN :channels AND NOT EXISTS ({_OLDER_IN_LINE})",
    "due_at",
    lists=["channels"],
)
_NOTIFICATION = (
    "id", "channel", "recipient", "payload", "status", "attempts", "created_at", "sent_at",
    "provider_id", "delivery", "delivery_at", "limited_at", "last_error",
)  # fmt: skip
_FOR_ALARM = query(
    f"SELECT {', '.join(_NOTIFICATION)} FROM outbox WHERE alarm_id = :alarm_id ORDER BY id",
    *_NOTIFICATION,
)
_RECENT_SENDS = query(
    "SELECT sent_at FROM outbox WHERE channel = :channel AND recipient = :recipient"
    " AND sent_at >= :since AND status IN ('sending', 'sent', 'unknown') ORDER BY sent_at",
    "sent_at",
)
_CLAIM = text(
    "UPDATE outbox SET status = 'sending', sent_at = :now WHERE id = :id AND status = 'queued'"
)
_MARK_SENT = text(
    "UPDATE outbox SET status = 'sent', sent_at = coalesce(sent_at, :now),"
    " attempts = attempts + 1, provider_id = :provider_id, last_error = NULL"
    " WHERE id = :id AND status IN ('queued', 'sending')"
)
_MARK_RETRY = text(
    "UPDATE outbox SET status = 'queued', sent_at = NULL, attempts = attempts + 1,"
    " next_attempt_at = :next_attempt_at, last_error = :error"
    " WHERE id = :id AND status IN ('queued', 'sending')"
)
_MARK_FAILED = text(
    "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = :error"
    " WHERE id = :id AND status IN ('queued', 'sending')"
)
_MARK_UNKNOWN = text(
    "UPDATE outbox SET status = 'unknown', attempts = attempts + 1, last_error = :error,"
    " next_attempt_at = :look_at WHERE id = :id AND status IN ('queued', 'sending')"
)
_MARK_DROPPED = text(
    "UPDATE outbox SET status = 'dropped', last_error = :error WHERE id = :id AND status = 'queued'"
)
_QUEUED_FOR_HOLD = query(
    "SELECT alarm_id, channel, recipient, limited_at FROM outbox"
    " WHERE id = :id AND status = 'queued'",
    "alarm_id",
    "channel",
    "recipient",
    "limited_at",
)
_HOLD = text(
    "UPDATE outbox SET next_attempt_at = :until, limited_at = coalesce(limited_at, :now),"
    " last_error = :reason WHERE id = :id"
)
_RECOVER_INTERRUPTED = text(
    "UPDATE outbox SET status = 'unknown', next_attempt_at = :look_at,"
    " last_error = 'the hub stopped while sending; the provider will be asked'"
    " WHERE status = 'sending'"
)
_IN_DOUBT = query(
    f"SELECT {_MESSAGE_COLUMNS}, coalesce(o.sent_at, o.created_at) AS claimed"
    " FROM outbox o LEFT JOIN alarms a ON a.id = o.alarm_id"
    " WHERE o.status = 'unknown' AND o.channel IN :channels"
    " AND o.next_attempt_at <= :now ORDER BY o.id LIMIT :limit",
    *_MESSAGE,
    "alarm_state",
    "claimed",
    lists=["channels"],
)
_NEXT_DOUBT_AT = query(
    "SELECT min(next_attempt_at) AS due_at FROM outbox"
    " WHERE status = 'unknown' AND channel IN :channels",
    "due_at",
    lists=["channels"],
)
_KNOWN_PROVIDER_IDS = query(
    "SELECT provider_id FROM outbox WHERE provider_id IN :provider_ids",
    "provider_id",
    lists=["provider_ids"],
)
_CONFIRM_SENT = text(
    "UPDATE outbox SET status = 'sent', provider_id = :provider_id, last_error = NULL"
    " WHERE id = :id AND status = 'unknown'"
)
_RESEND = text(
    "UPDATE outbox SET status = 'queued', sent_at = NULL, next_attempt_at = :now,"
    " last_error = 'the provider never received it; sent again'"
    " WHERE id = :id AND status = 'unknown'"
)
_RECHECK_LATER = text(
    "UPDATE outbox SET next_attempt_at = :at, last_error = :error"
    " WHERE id = :id AND status = 'unknown'"
)
_ABOUT = query(
    "SELECT alarm_id, channel, recipient FROM outbox WHERE id = :id",
    "alarm_id",
    "channel",
    "recipient",
)
_BY_PROVIDER_ID = query(
    "SELECT id, alarm_id, channel, recipient, delivery FROM outbox"
    " WHERE provider_id = :provider_id",
    "id",
    "alarm_id",
    "channel",
    "recipient",
    "delivery",
)
_RECORD_DELIVERY = text(
    "UPDATE outbox SET delivery = :status, delivery_at = :now,"
    " last_error = coalesce(:error, last_error) WHERE id = :id"
)
_COUNTS = query("SELECT status, count(*) AS n FROM outbox GROUP BY status", "status", "n")


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
        params = {"now": now, "channels": list(channels), "limit": limit}

        def q(conn: Conn) -> list[OutboxMessage]:
            return [_message(r) for r in conn.execute(_DUE, params).mappings()]

        return await self.db.read(q) if channels else []

    async def next_due_at(self, channels: Collection[str]) -> int | None:
        """When the earliest queued message of these channels that `due` could offer falls
        due (the oldest to its recipient about its alarm); None if none is queued."""
        if not channels:
            return None
        params = {"channels": list(channels)}
        return await self.db.read(lambda conn: conn.execute(_NEXT_DUE_AT, params).scalar())

    async def for_alarm(self, alarm_id: str) -> list[dict[str, Any]]:
        """Every notification of an alarm: who, how, and how far it got."""

        def q(conn: Conn) -> list[dict[str, Any]]:
            rows = conn.execute(_FOR_ALARM, {"alarm_id": alarm_id}).mappings()
            return [dict(r) for r in rows]

        return await self.db.read(q)

    async def recent_sends(self, channel: str, recipient: str, since: int) -> list[int]:
        """When messages of a channel went to a recipient since `since`, oldest first."""
        params = {"channel": channel, "recipient": recipient, "since": since}
        return await self.db.read(lambda conn: list(conn.execute(_RECENT_SENDS, params).scalars()))

    async def claim(self, message_id: int, now: int) -> bool:
        """Mark a message as going out, durably, before the send; False if it is not queued.

        A hub that dies during the send finds it `sending` and marks it unknown, never
        sends it again.
        """
        # Urgent: the send, and someone waiting for the alert, wait on this commit.
        return await self._update(_CLAIM, {"id": message_id, "now": now}, urgent=True)

    async def mark_sent(
        self, message_id: int, now: int, provider_id: str | None = None, *, lazy: bool = True
    ) -> None:
        """Record a send; lazily (see `Database.write`) unless a message waits on it."""
        await self._update(
            _MARK_SENT, {"id": message_id, "now": now, "provider_id": provider_id}, lazy=lazy
        )

    async def mark_retry(self, message_id: int, next_attempt_at: int, error: str) -> None:
        await self._update(
            _MARK_RETRY,
            {"id": message_id, "next_attempt_at": next_attempt_at, "error": error[:500]},
            lazy=True,
        )

    async def mark_failed(self, message_id: int, error: str) -> None:
        await self._update(_MARK_FAILED, {"id": message_id, "error": error[:500]}, lazy=True)

    async def mark_unknown(self, message_id: int, error: str, look_at: int) -> None:
        """The send may or may not have gone out: the provider is asked from `look_at` on."""
        await self._update(
            _MARK_UNKNOWN,
            {"id": message_id, "error": error[:500], "look_at": look_at},
            lazy=True,
        )

    async def mark_dropped(self, message_id: int, reason: str) -> None:
        await self._update(_MARK_DROPPED, {"id": message_id, "error": reason}, lazy=True)

    async def hold(self, message_id: int, until: int, reason: str, now: int) -> None:
        """A rate limit holds the message back until `until`; the first hold goes on the
        alarm's timeline."""

        def w(conn: Conn) -> None:
            row = conn.execute(_QUEUED_FOR_HOLD, {"id": message_id}).mappings().first()
            if row is None:
                return
            conn.execute(_HOLD, {"until": until, "now": now, "reason": reason, "id": message_id})
            if row["limited_at"] is None:
                _note_on_timeline(
                    conn, row, now, "notification_held", "system:rate-limit",
                    {"reason": reason, "until": until},
                )  # fmt: skip

        await self.db.write(w)

    async def recover_interrupted(self, look_at: int) -> int:
        """After a crash: messages caught `sending` may have gone out; mark them unknown,
        for the provider to be asked about from `look_at` on."""
        return await self.db.write(
            lambda conn: conn.execute(_RECOVER_INTERRUPTED, {"look_at": look_at}).rowcount
        )

    async def in_doubt(
        self, channels: Collection[str], now: int, limit: int = 100
    ) -> list[InDoubt]:
        """Unknown sends of these channels due for a look at the provider, oldest first."""
        if not channels:
            return []
        params = {"channels": list(channels), "now": now, "limit": limit}

        def q(conn: Conn) -> list[InDoubt]:
            rows = conn.execute(_IN_DOUBT, params).mappings()
            return [InDoubt(_message(r), r["claimed"]) for r in rows]

        return await self.db.read(q)

    async def next_doubt_at(self, channels: Collection[str]) -> int | None:
        """When the next unknown send of these channels is due for a look; None if none."""
        if not channels:
            return None
        params = {"channels": list(channels)}
        return await self.db.read(lambda conn: conn.execute(_NEXT_DOUBT_AT, params).scalar())

    async def known_provider_ids(self, provider_ids: Collection[str]) -> set[str]:
        """Which of these provider ids the outbox already records for a message."""
        if not provider_ids:
            return set()
        params = {"provider_ids": list(provider_ids)}
        return await self.db.read(
            lambda conn: set(conn.execute(_KNOWN_PROVIDER_IDS, params).scalars())
        )

    async def confirm_sent(self, message_id: int, provider_id: str, now: int) -> bool:
        """The provider has an unknown send: it went out. Noted on the alarm's timeline."""
        return await self._settle_doubt(
            message_id, now, _CONFIRM_SENT, {"provider_id": provider_id},
            "notification_confirmed", {"provider_id": provider_id},
        )  # fmt: skip

    async def resend(self, message_id: int, now: int) -> bool:
        """The provider never got an unknown send: queue it again, due now. Noted on the
        alarm's timeline."""
        return await self._settle_doubt(
            message_id, now, _RESEND, {"now": now},
            "notification_resent", {"reason": "the provider never received it"},
        )  # fmt: skip

    async def recheck_later(self, message_id: int, at: int, error: str) -> None:
        """The provider could not be asked about an unknown send: ask again at `at`."""
        await self._update(_RECHECK_LATER, {"id": message_id, "at": at, "error": error[:500]})

    async def _settle_doubt(
        self,
        message_id: int,
        now: int,
        update: Executable,
        params: dict[str, Any],
        entry: str,
        detail: dict,
    ) -> bool:
        def w(conn: Conn) -> bool:
            if conn.execute(update, {**params, "id": message_id}).rowcount != 1:
                return False
            row = conn.execute(_ABOUT, {"id": message_id}).mappings().one()
            _note_on_timeline(conn, row, now, entry, "system:provider", detail)
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

        def w(conn: Conn) -> tuple[str | None, str, str] | None:
            row = conn.execute(_BY_PROVIDER_ID, {"provider_id": provider_id}).mappings().first()
            if row is None or _DELIVERY_RANK.get(row["delivery"] or "", -1) >= rank:
                return None
            conn.execute(
                _RECORD_DELIVERY,
                {
                    "status": status,
                    "now": now,
                    "error": f"provider error {error_code}" if error_code else None,
                    "id": row["id"],
                },
            )
            if status in DELIVERY_FAILURES:
                _note_on_timeline(
                    conn, row, now, "notification_failed", "system:provider",
                    {"status": status, "error_code": error_code},
                )  # fmt: skip
            return row["alarm_id"], row["channel"], row["recipient"]

        return await self.db.write(w, lazy=True)

    async def _update(
        self,
        update: Executable,
        params: dict[str, Any],
        *,
        urgent: bool = False,
        lazy: bool = False,
    ) -> bool:
        return await self.db.write(
            lambda conn: conn.execute(update, params).rowcount == 1, urgent=urgent, lazy=lazy
        )

    async def counts(self) -> dict[str, int]:
        """Messages per status."""
        return await self.db.read(lambda conn: {r[0]: r[1] for r in conn.execute(_COUNTS)})
