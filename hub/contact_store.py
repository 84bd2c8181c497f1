"""SQL for how responders answer: SMS reply codes, acknowledge-link tokens, push subscriptions."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlite_utils

from hub.db import Database

_OPEN = "a.state NOT IN ('resolved', 'cancelled')"
_FEW_CODES = 32  # a phone's open alarms read in one go before the index is asked


def _first_free(codes: Iterable[Sequence[int]], free: int) -> int:
    """The lowest number from `free` up that none of these codes (rows, ascending) takes."""
    for (code,) in codes:
        if code > free:
            break
        free = max(free, code + 1)
    return free


@dataclass(frozen=True, slots=True)
class AnswerTarget:
    """The alarm a reply code or token points at, and as whom the responder was told."""

    alarm_id: str
    phone: str
    role: str
    name: str
    alarm_state: str


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    id: str
    phone: str
    endpoint: str
    p256dh: str
    auth: str


class ContactTx:
    """Reply codes, tokens and subscriptions inside the current write transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.conn = db.conn

    def reply_code(self, phone: str, alarm_id: str, role: str, name: str, now: int) -> int:
        """The phone's code for this alarm: the lowest number none of its open alarms uses."""
        row = self.conn.execute(
            "SELECT code FROM reply_codes WHERE phone = ? AND alarm_id = ?", (phone, alarm_id)
        ).fetchone()
        if row:
            return int(row[0])
        code = self._lowest_free_code(phone)
        self.conn.execute(
            "INSERT INTO reply_codes (phone, alarm_id, code, role, name, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (phone, alarm_id, code, role, name, now),
        )
        return code

    def _lowest_free_code(self, phone: str) -> int:
        # Only the codes of open alarms (kept so by a trigger): a phone's history grows
        # with every alarm of its zone, its open alarms do not. INDEXED BY: unguided, the
        # planner took the primary key and read the whole history again.
        of_phone = "FROM reply_codes INDEXED BY reply_codes_open WHERE phone = ? AND alarm_open = 1"
        lowest = self.conn.execute(
            f"SELECT code {of_phone} ORDER BY code LIMIT {_FEW_CODES}", (phone,)
        ).fetchall()
        free = _first_free(lowest, 1)
        if len(lowest) < _FEW_CODES or free <= lowest[-1][0]:
            return free  # a phone has a few alarms open: one short read
        # A storm: hundreds open, the lowest all taken. The index alone says whether
        # 1..highest are (the count reads its entries, not the rows); asked apart, the
        # highest is one step down the index.
        highest = self.conn.execute(f"SELECT max(code) {of_phone}", (phone,)).fetchone()[0]
        if self.conn.execute(f"SELECT count(*) {of_phone}", (phone,)).fetchone()[0] == highest:
            return int(highest) + 1
        above = f"SELECT code {of_phone} AND code >= ? ORDER BY code"
        return _first_free(self.conn.execute(above, (phone, free)), free)

    def ack_token(self, alarm_id: str, phone: str, role: str, name: str, now: int) -> str:
        """A new unguessable token that acknowledges this alarm as this responder."""
        token = secrets.token_urlsafe(24)
        self.conn.execute(
            "INSERT INTO ack_tokens (token, alarm_id, phone, role, name, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token, alarm_id, phone, role, name, now),
        )
        return token

    def subscription_ids(self, phone: str) -> list[str]:
        """The push subscriptions of the responder with this phone."""
        rows = self.conn.execute(
            "SELECT id FROM push_subscriptions WHERE phone = ? ORDER BY created_at", (phone,)
        )
        return [r[0] for r in rows]


def _target(row: object) -> AnswerTarget | None:
    if row is None:
        return None
    return AnswerTarget(row[0], row[1], row[2], row[3], row[4])  # type: ignore[index]


class ContactStore:
    """Async lookups and changes for the webhooks and the push channel."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_code(self, phone: str, code: int) -> AnswerTarget | None:
        """The alarm a phone's reply code names: an open one first, else the latest."""
        return await self.db.read(
            lambda d: _target(
                d.conn.execute(
                    "SELECT r.alarm_id, r.phone, r.role, r.name, a.state FROM reply_codes r"
                    " JOIN alarms a ON a.id = r.alarm_id WHERE r.phone = ? AND r.code = ?"
                    f" ORDER BY {_OPEN} DESC, r.created_at DESC LIMIT 1",
                    (phone, code),
                ).fetchone()
            )
        )

    async def latest(self, phone: str) -> AnswerTarget | None:
        """The open alarm last sent to this phone, for a bare `ack`."""
        return await self.db.read(
            lambda d: _target(
                d.conn.execute(
                    "SELECT r.alarm_id, r.phone, r.role, r.name, a.state FROM reply_codes r"
                    f" JOIN alarms a ON a.id = r.alarm_id WHERE r.phone = ? AND {_OPEN}"
                    " ORDER BY r.created_at DESC LIMIT 1",
                    (phone,),
                ).fetchone()
            )
        )

    async def by_phone_and_alarm(self, phone: str, alarm_id: str) -> AnswerTarget | None:
        """As whom this phone was told about this alarm, if it was."""
        return await self.db.read(
            lambda d: _target(
                d.conn.execute(
                    "SELECT r.alarm_id, r.phone, r.role, r.name, a.state FROM reply_codes r"
                    " JOIN alarms a ON a.id = r.alarm_id WHERE r.phone = ? AND r.alarm_id = ?",
                    (phone, alarm_id),
                ).fetchone()
            )
        )

    async def by_token(self, token: str) -> AnswerTarget | None:
        return await self.db.read(
            lambda d: _target(
                d.conn.execute(
                    "SELECT t.alarm_id, t.phone, t.role, t.name, a.state FROM ack_tokens t"
                    " JOIN alarms a ON a.id = t.alarm_id WHERE t.token = ?",
                    (token,),
                ).fetchone()
            )
        )

    async def add_subscription(
        self, phone: str, endpoint: str, p256dh: str, auth: str, now: int
    ) -> str:
        """Keep a browser's subscription for the responder with this phone; returns its id."""
        new_id = "ps-" + secrets.token_hex(8)

        def w(d: sqlite_utils.Database) -> str:
            d.conn.execute(
                "INSERT INTO push_subscriptions (id, phone, endpoint, p256dh, auth, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET"
                " phone = excluded.phone, p256dh = excluded.p256dh, auth = excluded.auth",
                (new_id, phone, endpoint, p256dh, auth, now),
            )
            return d.conn.execute(
                "SELECT id FROM push_subscriptions WHERE endpoint = ?", (endpoint,)
            ).fetchone()[0]

        return await self.db.write(w)

    async def subscription(self, subscription_id: str) -> StoredSubscription | None:
        row = await self.db.read(
            lambda d: d.conn.execute(
                "SELECT id, phone, endpoint, p256dh, auth FROM push_subscriptions WHERE id = ?",
                (subscription_id,),
            ).fetchone()
        )
        return StoredSubscription(*row) if row else None

    async def forget_subscription(self, subscription_id: str) -> None:
        """The browser dropped it (404/410): never send to it again."""
        await self.db.write(
            lambda d: d.conn.execute(
                "DELETE FROM push_subscriptions WHERE id = ?", (subscription_id,)
            )
        )

    async def forget_endpoint(self, phone: str, endpoint: str) -> None:
        """The user turned pushes off in that browser."""
        await self.db.write(
            lambda d: d.conn.execute(
                "DELETE FROM push_subscriptions WHERE phone = ? AND endpoint = ?",
                (phone, endpoint),
            )
        )
