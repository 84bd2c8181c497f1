"""SQL for how responders answer: SMS reply codes, acknowledge-link tokens, push subscriptions."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text

from hub.storage.db import Conn, Database
from hub.storage.sql_text import query

_OPEN = "a.state NOT IN ('resolved', 'cancelled')"
_FEW_CODES = 32  # a phone's open alarms read in one go before the index is asked

_CODE_OF = query(
    "SELECT code FROM reply_codes WHERE phone = :phone AND alarm_id = :alarm_id", "code"
)
_INSERT_CODE = text(
    "INSERT INTO reply_codes (phone, alarm_id, code, role, name, created_at)"
    " VALUES (:phone, :alarm_id, :code, :role, :name, :now)"
)
# Only the codes of open alarms (kept so by a trigger): a phone's history grows with
# every alarm of its zone, its open alarms do not. Each of these is read from the
# partial index reply_codes_open alone.
_OF_PHONE = "FROM reply_codes WHERE phone = :phone AND alarm_open = 1"
_LOWEST_CODES = query(f"SELECT code {_OF_PHONE} ORDER BY code LIMIT {_FEW_CODES}", "code")
_HIGHEST_CODE = query(f"SELECT max(code) AS code {_OF_PHONE}", "code")
_CODES_IN_USE = query(f"SELECT count(*) AS n {_OF_PHONE}", "n")
_CODES_FROM = query(f"SELECT code {_OF_PHONE} AND code >= :free ORDER BY code", "code")
_INSERT_TOKEN = text(
    "INSERT INTO ack_tokens (token, alarm_id, phone, role, name, created_at)"
    " VALUES (:token, :alarm_id, :phone, :role, :name, :now)"
)
_SUBSCRIPTION_IDS = query(
    "SELECT id FROM push_subscriptions WHERE phone = :phone ORDER BY created_at, id", "id"
)
# Alarm ids sort by creation time: of two codes given in one millisecond, the newer alarm's.
_TARGET = "SELECT r.alarm_id, r.phone, r.role, r.name, a.state FROM reply_codes r"
_TARGET_COLUMNS = ("alarm_id", "phone", "role", "name", "state")
_BY_CODE = query(
    f"{_TARGET} JOIN alarms a ON a.id = r.alarm_id WHERE r.phone = :phone AND r.code = :code"
    f" ORDER BY CASE WHEN {_OPEN} THEN 0 ELSE 1 END, r.created_at DESC, r.alarm_id DESC"
    " LIMIT 1",
    *_TARGET_COLUMNS,
)
_LATEST = query(
    f"{_TARGET} JOIN alarms a ON a.id = r.alarm_id WHERE r.phone = :phone AND {_OPEN}"
    " ORDER BY r.created_at DESC, r.alarm_id DESC LIMIT 1",
    *_TARGET_COLUMNS,
)
_BY_PHONE_AND_ALARM = query(
    f"{_TARGET} JOIN alarms a ON a.id = r.alarm_id"
    " WHERE r.phone = :phone AND r.alarm_id = :alarm_id",
    *_TARGET_COLUMNS,
)
_BY_TOKEN = query(
    "SELECT t.alarm_id, t.phone, t.role, t.name, a.state FROM ack_tokens t"
    " JOIN alarms a ON a.id = t.alarm_id WHERE t.token = :token",
    *_TARGET_COLUMNS,
)
_ADD_SUBSCRIPTION = query(
    "INSERT INTO push_subscriptions (id, phone, endpoint, p256dh, auth, created_at)"
    " VALUES (:id, :phone, :endpoint, :p256dh, :auth, :now) ON CONFLICT (endpoint) DO UPDATE"
    " SET phone = excluded.phone, p256dh = excluded.p256dh, auth = excluded.auth"
    " RETURNING id",
    "id",
)
_SUBSCRIPTION = query(
    "SELECT id, phone, endpoint, p256dh, auth FROM push_subscriptions WHERE id = :id",
    "id",
    "phone",
    "endpoint",
    "p256dh",
    "auth",
)
_FORGET_SUBSCRIPTION = text("DELETE FROM push_subscriptions WHERE id = :id")
_FORGET_ENDPOINT = text(
    "DELETE FROM push_subscriptions WHERE phone = :phone AND endpoint = :endpoint"
)


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

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def reply_code(self, phone: str, alarm_id: str, role: str, name: str, now: int) -> int:
        """The phone's code for this alarm: the lowest number none of its open alarms uses."""
        code = self.conn.execute(_CODE_OF, {"phone": phone, "alarm_id": alarm_id}).scalar()
        if code is not None:
            return int(code)
        code = self._lowest_free_code(phone)
        self.conn.execute(
            _INSERT_CODE,
            {
                "phone": phone,
                "alarm_id": alarm_id,
                "code": code,
                "role": role,
                "name": name,
                "now": now,
            },
        )
        return code

    def _lowest_free_code(self, phone: str) -> int:
        of_phone = {"phone": phone}
        lowest = self.conn.execute(_LOWEST_CODES, of_phone).all()
        free = _first_free(lowest, 1)
        if len(lowest) < _FEW_CODES or free <= lowest[-1][0]:
            return free  # a phone has a few alarms open: one short read
        # A storm: hundreds open, the lowest all taken. The index alone says whether
        # 1..highest are (the count reads its entries, not the rows); asked apart, the
        # highest is one step down the index.
        highest = self.conn.execute(_HIGHEST_CODE, of_phone).scalar_one()
        if self.conn.execute(_CODES_IN_USE, of_phone).scalar_one() == highest:
            return int(highest) + 1
        return _first_free(self.conn.execute(_CODES_FROM, {**of_phone, "free": free}), free)

    def ack_token(self, alarm_id: str, phone: str, role: str, name: str, now: int) -> str:
        """A new unguessable token that acknowledges this alarm as this responder."""
        token = secrets.token_urlsafe(24)
        self.conn.execute(
            _INSERT_TOKEN,
            {
                "token": token,
                "alarm_id": alarm_id,
                "phone": phone,
                "role": role,
                "name": name,
                "now": now,
            },
        )
        return token

    def subscription_ids(self, phone: str) -> list[str]:
        """The push subscriptions of the responder with this phone."""
        return list(self.conn.execute(_SUBSCRIPTION_IDS, {"phone": phone}).scalars())


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
        params = {"phone": phone, "code": code}
        return await self.db.read(lambda conn: _target(conn.execute(_BY_CODE, params).first()))

    async def latest(self, phone: str) -> AnswerTarget | None:
        """The open alarm last sent to this phone, for a bare `ack`."""
        params = {"phone": phone}
        return await self.db.read(lambda conn: _target(conn.execute(_LATEST, params).first()))

    async def by_phone_and_alarm(self, phone: str, alarm_id: str) -> AnswerTarget | None:
        """As whom this phone was told about this alarm, if it was."""
        params = {"phone": phone, "alarm_id": alarm_id}
        return await self.db.read(
            lambda conn: _target(conn.execute(_BY_PHONE_AND_ALARM, params).first())
        )

    async def by_token(self, token: str) -> AnswerTarget | None:
        params = {"token": token}
        return await self.db.read(lambda conn: _target(conn.execute(_BY_TOKEN, params).first()))

    async def add_subscription(
        self, phone: str, endpoint: str, p256dh: str, auth: str, now: int
    ) -> str:
        """Keep a browser's subscription for the responder with this phone; returns its id."""
        params = {
            "id": "ps-" + secrets.token_hex(8),
            "phone": phone,
            "endpoint": endpoint,
            "p256dh": p256dh,
            "auth": auth,
            "now": now,
        }
        # RETURNING gives the id the endpoint had, when it was subscribed before.
        return await self.db.write(
            lambda conn: conn.execute(_ADD_SUBSCRIPTION, params).scalar_one()
        )

    async def subscription(self, subscription_id: str) -> StoredSubscription | None:
        row = await self.db.read(
            lambda conn: conn.execute(_SUBSCRIPTION, {"id": subscription_id}).first()
        )
        return StoredSubscription(*row) if row else None

    async def forget_subscription(self, subscription_id: str) -> None:
        """The browser dropped it (404/410): never send to it again."""
        await self.db.write(
            lambda conn: conn.execute(_FORGET_SUBSCRIPTION, {"id": subscription_id})
        )

    async def forget_endpoint(self, phone: str, endpoint: str) -> None:
        """The user turned pushes off in that browser."""
        await self.db.write(
            lambda conn: conn.execute(_FORGET_ENDPOINT, {"phone": phone, "endpoint": endpoint})
        )
